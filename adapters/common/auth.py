"""Authentication of adapters' routes, as FastAPI dependencies: a bearer token, a shared secret in a
header or query, an HMAC signature over the raw body. Secrets come from environment variables named by
the config; comparisons are constant-time; a route whose secret is not set answers 404 ("off")."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from adapters.common.http import read_body
from bot.handoff.notifiers import sign

log = logging.getLogger(__name__)


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
        if not (header.startswith("Bearer ") and same(header[7:], token)):
            raise HTTPException(401, f"bad or missing {self.what} token")

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
        if not given or not same(given, secret):
            raise HTTPException(self.status_code, "bad or missing webhook secret")


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
        try:
            age = abs((now if now is not None else time.time()) - float(timestamp))
        except ValueError:
            return False
        return age <= self.max_age and same(sign(secret.encode(), timestamp, body), signature)

    async def __call__(self, request: Request) -> bytes:
        body = await read_body(request, max_bytes=self.max_bytes)
        secret = _secret(self.env)
        if not secret:
            if self.optional:
                return body
            raise HTTPException(404, f"this endpoint is disabled: set {self.env}")
        signature = request.headers.get(self.signature_header, "")
        timestamp = request.headers.get(self.timestamp_header, "")
        if not signature or not timestamp or not self.verify(secret, timestamp, body, signature):
            raise HTTPException(401, "missing, wrong or stale signature")
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
            log.info("%s: a repeat of a signed request already accepted: answered, not run again", request.url.path)
            return JSONResponse({"replayed": True, "detail": "this request was accepted before: nothing done"})
        accepted = False
        try:
            response = await handle(body)
            accepted = 200 <= response.status_code < 300
            return response
        finally:
            self.memory.settle(keys, accepted=accepted)
