"""Authentication of adapters' routes, as FastAPI dependencies: a bearer token, a shared secret in a
header or query, an HMAC signature over the raw body. Secrets come from environment variables named by
the config; comparisons are constant-time; a route whose secret is not set answers 404 ("off").

Every refusal goes through :func:`refuse`: besides the 401, :class:`Rejections` (set on the app by ``serve``)
logs one warning a minute per route and reason — the remote address and which check failed, never what
was sent — and counts it on ``/metrics`` as ``internvl_bot_webhook_rejected_total{route,reason}``. After a
secret rotation that someone forgot on one side, that warning is how anyone notices."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from adapters.common.http import read_body
from bot.handoff.notifiers import sign
from bot.ops.logs import Throttle

log = logging.getLogger(__name__)


class Rejections:
    """Requests refused by a route's authentication: one warning a minute per route and reason, and the
    counter ``internvl_bot_webhook_rejected_total{route,reason}``. ``serve`` sets one on ``app.state``."""

    def __init__(self, counter: Counter | None = None, *, every: float = 60.0) -> None:
        self.counter = counter
        self.throttle = Throttle(every)

    def __call__(self, request: Request, reason: str) -> None:
        route = route_of(request)
        if self.counter is not None:
            self.counter.labels(route, reason).inc()
        held = self.throttle.allow((route, reason))
        if held is None:
            return
        remote = request.client.host if request.client else "?"
        more = f" ({held} more since the last warning)" if held else ""
        log.warning("%s: refused a request from %s: %s%s — %s", route, remote, reason, more,
                    _HINTS.get(reason.split()[0], "check what the platform is configured to send"))


_HINTS = {
    "wrong": "the secret differs on the two sides: after a rotation, set the new value in both places",
    "missing": "the platform sends none: set the secret in its settings too (or someone else is calling)",
    "stale": "the request is older than 5 minutes: check both clocks (NTP), or it is a replay",
    "malformed": "not the platform's format: someone else is calling, or a proxy rewrites headers",
}


def route_of(request: Request) -> str:
    """The route's path template (``/api/helpdesk/v1/conversations/{conversation_id}/mode``): one label per
    route, whatever ids the paths carry."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


def rejected(request: Request, reason: str) -> None:
    """Tell the app's :class:`Rejections` that ``request`` was refused. ``reason`` says which check failed
    (``missing signature``, ``wrong secret``...), never what was sent."""
    rejections = getattr(request.app.state, "rejections", None)  # an app of a test may have none
    if isinstance(rejections, Rejections):
        rejections(request, reason)


def refuse(request: Request, reason: str, status: int = 401, detail: str = "") -> HTTPException:
    """The exception a refused request raises, told to the app's :class:`Rejections` first."""
    rejected(request, reason)
    return HTTPException(status, detail or reason)


def _secret(env: str) -> str:
    return os.environ.get(env, "")


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


class BearerAuth:
    """``Authorization: Bearer <token>`` where the token is the value of the environment variable ``env``."""

    def __init__(self, env: str, *, what: str) -> None:
        self.env = env
        self.what = what

    @property
    def enabled(self) -> bool:
        return bool(_secret(self.env))

    def check(self, request: Request) -> None:
        token = _secret(self.env)
        if not token:
            raise HTTPException(404, f"{self.what} disabled: set {self.env}")
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise refuse(request, f"missing {self.what} token", detail=f"bad or missing {self.what} token")
        if not same(header[7:], token):
            raise refuse(request, f"wrong {self.what} token", detail=f"bad or missing {self.what} token")

    async def __call__(self, request: Request) -> None:
        self.check(request)


class SharedSecret:
    """A secret the platform sends back verbatim: in a header (Telegram's secret token) or in the query
    (django-helpdesk's webhook URL ``?token=``). ``bearer``: also as ``Authorization: Bearer <secret>``, which
    access logs do not record (they record query strings). ``optional``: accept everything when no secret is
    set."""

    def __init__(self, env: str, *, header: str | None = None, query: str | None = None, bearer: bool = False,
                 optional: bool = False, status_code: int = 401) -> None:
        self.env = env
        self.header = header
        self.query = query
        self.bearer = bearer
        self.optional = optional
        self.status_code = status_code

    async def __call__(self, request: Request) -> None:
        secret = _secret(self.env)
        if not secret:
            if self.optional:
                return
            raise HTTPException(404, f"this webhook is disabled: set {self.env}")
        authorization = request.headers.get("authorization", "") if self.bearer else ""
        given = (request.headers.get(self.header, "") if self.header else "") or \
            (authorization[7:] if authorization.startswith("Bearer ") else "") or \
            (request.query_params.get(self.query, "") if self.query else "")
        if not given:
            raise refuse(request, "missing secret", self.status_code, "bad or missing webhook secret")
        if not same(given, secret):
            raise refuse(request, "wrong secret", self.status_code, "bad or missing webhook secret")


class ReplayMemory:
    """Keys of signed requests (signatures, delivery ids) seen within their window, in this process: claimed
    while a request runs, kept once it was accepted, forgotten when it failed so a retry runs. At most
    ``max_entries``; past that the oldest go first (a warning: the window is then shorter than the signature's
    freshness)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, float] = OrderedDict()  # key -> when it may be forgotten
        self._warned = False

    def __len__(self) -> int:
        return len(self._entries)

    def claim(self, keys: tuple[str, ...], *, expires: float, now: float | None = None) -> bool:
        """False when one of ``keys`` is remembered (running or accepted); else remembers them all."""
        now = time.time() if now is None else now
        while self._entries and next(iter(self._entries.values())) <= now:
            self._entries.popitem(last=False)
        if any(self._entries.get(key, 0.0) > now for key in keys):
            return False
        for key in keys:
            self._entries[key] = expires
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            if not self._warned:
                self._warned = True
                log.warning("more than %d signed requests within their freshness window: the oldest are "
                            "forgotten before their signatures go stale", self.max_entries)
        return True

    def settle(self, keys: tuple[str, ...], *, accepted: bool) -> None:
        """Keep ``keys`` (the request was accepted) or forget them (it failed: a retry must run)."""
        if not accepted:
            for key in keys:
                self._entries.pop(key, None)


class SignedBody:
    """``{signature_header}: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`` with
    ``{timestamp_header}`` in unix seconds, fresh within ``max_age``: the scheme of the framework's own
    handoff webhook, the generic helpdesk API and Chatwoot's agent bots. Calling it returns the verified raw
    body; :meth:`once` also refuses replays.

    ``optional``: without a secret configured, accept (for platforms whose older versions do not sign).
    ``delivery_header``: the platform's id of a delivery, the same on its retries (``X-Chatwoot-Delivery``).
    """

    def __init__(self, env: str, *, signature_header: str, timestamp_header: str, max_age: float = 300,
                 optional: bool = False, max_bytes: int = 5_000_000, delivery_header: str | None = None,
                 memory: ReplayMemory | None = None) -> None:
        self.env = env
        self.signature_header = signature_header
        self.timestamp_header = timestamp_header
        self.max_age = max_age
        self.optional = optional
        self.max_bytes = max_bytes
        self.delivery_header = delivery_header
        self.memory = memory or ReplayMemory()

    def verify(self, secret: str, timestamp: str, body: bytes, signature: str, now: float | None = None) -> bool:
        return self.problem(secret, timestamp, body, signature, now) is None

    def problem(self, secret: str, timestamp: str, body: bytes, signature: str,
                now: float | None = None) -> str | None:
        """Why a request does not verify (``missing signature``, ``stale timestamp``...), or None."""
        if not signature or not timestamp:
            return "missing signature" if not signature else "missing timestamp"
        try:
            age = abs((now if now is not None else time.time()) - float(timestamp))
        except ValueError:
            return "malformed timestamp"
        if not age <= self.max_age:
            return "stale timestamp"
        return None if same(sign(secret.encode(), timestamp, body), signature) else "wrong signature"

    def refuse_unless_signed(self, request: Request, secret: str, signed: bytes) -> None:
        """Raise the 401 (told to the app's :class:`Rejections`) unless ``signed`` carries a valid signature."""
        problem = self.problem(secret, request.headers.get(self.timestamp_header, ""), signed,
                               request.headers.get(self.signature_header, ""))
        if problem is not None:
            raise refuse(request, problem, detail="missing, wrong or stale signature")

    async def __call__(self, request: Request) -> bytes:
        body = await read_body(request, max_bytes=self.max_bytes)
        secret = _secret(self.env)
        if not secret:
            if self.optional:
                return body
            raise HTTPException(404, f"this endpoint is disabled: set {self.env}")
        self.refuse_unless_signed(request, secret, body)
        return body

    def _forget_after(self, request: Request) -> float:
        """When a request's keys may be forgotten: its signature has gone stale by then."""
        now = time.time()
        try:
            signed_at = float(request.headers.get(self.timestamp_header, ""))
        except ValueError:
            signed_at = now
        if not now - self.max_age <= signed_at <= now + self.max_age:  # unsigned (a lab) or NaN: from now
            signed_at = now
        return max(now, signed_at) + self.max_age

    async def once(self, request: Request, handle: Callable[[bytes], Awaitable[Response]]) -> Response:
        """Verify, then ``handle`` the body unless this request was accepted before: the same signature (a
        captured request sent again while fresh) or the same delivery id. A repeat is answered 200 with
        nothing done (platforms such as Chatwoot take any other answer as the bot failing); a request that
        ended in an error or a non-2xx is forgotten, so the platform's retry runs."""
        body = await self(request)
        keys = tuple(f"{name}:{value}" for name, value in (
            ("signature", request.headers.get(self.signature_header, "")),
            ("delivery", request.headers.get(self.delivery_header, "") if self.delivery_header else "")) if value)
        if keys and not self.memory.claim(keys, expires=self._forget_after(request)):
            log.debug("%s: a repeat of a signed request already accepted: answered, not run again", request.url.path)
            return JSONResponse({"replayed": True, "detail": "this request was accepted before: nothing done"})
        accepted = False
        try:
            response = await handle(body)
            accepted = 200 <= response.status_code < 300
            return response
        finally:
            self.memory.settle(keys, accepted=accepted)
