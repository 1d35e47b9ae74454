"""Browser sessions of the web chat: the signed cookie (or, embedded, the same value in a header), short-lived
single-purpose tickets for the URLs a page cannot add headers to, the optional access token, and the pages
open on this replica with the answer streaming to them (events come from any replica over the bus)."""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from adapters.web import (
    COOKIE,
    EVENTS_TICKET_SECONDS,
    FILE_TICKET_SECONDS,
    SESSION_HEADER,
    WebSettings,
    session_secret,
)
from bot.config import Settings

MAX_IDLE_SESSIONS = 10_000  # sessions held here for a partial answer with no page open

@dataclass(eq=False)
class Session:
    """The open pages (SSE streams) of one browser session on this replica, and the answer streaming now."""

    streams: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    partial: str = ""
    touched: float = field(default_factory=time.monotonic)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self.streams:
            if queue.qsize() < 10_000:  # a stalled page is not allowed to grow memory; it replays on reconnect
                queue.put_nowait(event)


class Sessions:
    """The signing keys (the same on every replica) and the sessions with a page open here."""

    def __init__(self, settings: Settings, conf: WebSettings) -> None:
        self.conf = conf
        secret = session_secret(settings, conf)
        self._signer = URLSafeTimedSerializer(secret, salt="internvl-bot web session")
        self._tickets = URLSafeTimedSerializer(secret, salt="internvl-bot web ticket")
        self.live: dict[str, Session] = {}

    def signed(self, data: dict[str, Any]) -> str:
        """The session's signed value: the cookie's, or the header's of an embedded page."""
        return self._signer.dumps(data)

    def ticket(self, purpose: str, session: dict[str, Any]) -> str:
        """A ticket good for ``purpose`` only (``events``, ``attachments``, ``file:<id>``), briefly."""
        return self._tickets.dumps({"for": purpose, "session": session})

    def left(self, sid: str, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """A page's event stream ended: nothing is kept for a browser that left (unless an answer streams)."""
        session = self.live.get(sid)
        if session is None:
            return
        session.streams.discard(queue)
        if not session.streams and not session.partial:
            self.live.pop(sid, None)

    @property
    def access_token(self) -> str:
        return os.environ.get(self.conf.access_token_env, "")

    def get(self, sid: str) -> Session:
        session = self.live.get(sid)
        if session is None:
            session = self.live[sid] = Session()
        return session

    def apply(self, message: dict[str, Any]) -> None:
        """An event for a session's pages, from this replica or another (see adapters/common/bus.py)."""
        sid, event = message.get("sid"), message.get("event")
        if not isinstance(sid, str) or not isinstance(event, dict):
            return
        kind = event.get("type")
        session = self.live.get(sid)
        if session is None:
            if kind not in ("chunk", "partial"):
                return  # no page of this session is open here, and nothing to replay to one that opens
            session = self.live[sid] = Session()
        if kind == "chunk":
            session.partial += str(event.get("text", ""))
        elif kind == "partial":
            session.partial = str(event.get("text", ""))
        elif kind in ("done", "stopped"):
            session.partial = ""
        session.touched = time.monotonic()
        session.publish(event)
        if not session.streams and not session.partial:
            self.live.pop(sid, None)
        elif len(self.live) > MAX_IDLE_SESSIONS:
            self._drop_idle()

    def _drop_idle(self) -> None:
        """Sessions kept only for a partial answer no page is watching (an answer that never finished, its
        replica gone): the oldest go first, down to half the bound. Open pages are never dropped."""
        idle = sorted((s.touched, sid) for sid, s in self.live.items() if not s.streams)
        for _, sid in idle[:max(0, len(self.live) - MAX_IDLE_SESSIONS // 2)]:
            self.live.pop(sid, None)

    def read_cookie(self, request: Request) -> dict[str, Any] | None:
        """The signed session: the cookie, or, for the embedded widget (where browsers block third-party
        cookies), the same signed value in a header."""
        raw = request.cookies.get(COOKIE) or request.headers.get(SESSION_HEADER)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=self.conf.session_days * 86400)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("sid"), str) else None

    def ticket_session(self, request: Request, purpose: str) -> dict[str, Any] | None:
        """The session a ticket in the query stands for, if it is valid for ``purpose``."""
        raw = request.query_params.get("ticket")
        if not raw:
            return None
        max_age = EVENTS_TICKET_SECONDS if purpose == "events" else FILE_TICKET_SECONDS
        try:
            data = self._tickets.loads(raw, max_age=max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("for") != purpose or not isinstance(data.get("session"), dict):
            return None
        return data["session"]

    def set_cookie(self, response: Response, request: Request, data: dict[str, Any]) -> None:
        embedded = bool(self.conf.embed_origins)
        secure = embedded or request.url.scheme == "https"
        response.set_cookie(COOKIE, self._signer.dumps(data), max_age=self.conf.session_days * 86400, httponly=True,
                            secure=secure, samesite="none" if embedded else "lax", path="/")

    def authorized(self, request: Request, cookie: dict[str, Any] | None) -> bool:
        token = self.access_token
        if not token:
            return True
        if cookie and cookie.get("auth") and hmac.compare_digest(str(cookie.get("tok", "")), fingerprint(token)):
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())

    def sid_or_error(self, request: Request, ticket_for: str | None = None) \
            -> tuple[str, None] | tuple[None, JSONResponse]:
        cookie = self.read_cookie(request)
        if cookie is None and ticket_for is not None:
            cookie = self.ticket_session(request, ticket_for)
        if not self.authorized(request, cookie):
            return None, JSONResponse({"error": "access token required"}, status_code=401)
        if cookie is None:
            return None, JSONResponse({"error": "no session: reload the page"}, status_code=401)
        return cookie["sid"], None

    def close_streams(self) -> None:
        """Shutdown, last step: end every SSE stream (browsers reconnect to the next process)."""
        for session in self.live.values():
            session.publish({"type": "bye"})
            for queue in session.streams:
                queue.put_nowait(None)


def fingerprint(token: str) -> str:
    """What the cookie keeps of the access token: changing the token logs everyone out."""
    return hmac.new(b"internvl-bot access", token.encode(), "sha256").hexdigest()[:16]
