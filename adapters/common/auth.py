"""Authentication of adapters' routes, as FastAPI dependencies: a bearer token, a shared secret in a
header or query, an HMAC signature over the raw body. Secrets come from environment variables named by
the config; comparisons are constant-time; a route whose secret is not set answers 404 ("off")."""

from __future__ import annotations

import hmac
import os
import time

from fastapi import HTTPException, Request

from adapters.common.http import read_body
from bot.handoff import sign


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
    (django-helpdesk's webhook URL ``?token=``). ``optional``: accept everything when no secret is set."""

    def __init__(self, env: str, *, header: str | None = None, query: str | None = None,
                 optional: bool = False, status_code: int = 401) -> None:
        self.env = env
        self.header = header
        self.query = query
        self.optional = optional
        self.status_code = status_code

    async def __call__(self, request: Request) -> None:
        secret = _secret(self.env)
        if not secret:
            if self.optional:
                return
            raise HTTPException(404, f"this webhook is disabled: set {self.env}")
        given = (request.headers.get(self.header, "") if self.header else "") or \
            (request.query_params.get(self.query, "") if self.query else "")
        if not given or not same(given, secret):
            raise HTTPException(self.status_code, "bad or missing webhook secret")


class SignedBody:
    """``{signature_header}: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`` with
    ``{timestamp_header}`` in unix seconds, fresh within ``max_age``: the scheme of the framework's own
    handoff webhook, the generic helpdesk API and Chatwoot's agent bots. Returns the verified raw body.

    ``optional``: without a secret configured, accept (for platforms whose older versions do not sign).
    """

    def __init__(self, env: str, *, signature_header: str, timestamp_header: str, max_age: float = 300,
                 optional: bool = False, max_bytes: int = 5_000_000) -> None:
        self.env = env
        self.signature_header = signature_header
        self.timestamp_header = timestamp_header
        self.max_age = max_age
        self.optional = optional
        self.max_bytes = max_bytes

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
