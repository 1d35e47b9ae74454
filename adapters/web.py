"""The web chat adapter: a page served by ``internvl-bot serve``, and a widget other sites embed.

A browser session is one conversation (``web:<session id>``), identified by a signed cookie. The page
posts messages with their files (``multipart/form-data``; the browser shows upload progress) and
receives every reply event of its conversation over Server-Sent Events (``GET /api/events``): the
answer streams in as plain text and, once complete, is replaced by Markdown the server rendered
with raw HTML disabled, so neither a user nor the model can inject markup or script. History comes
from the store after a reload. No build step: the page is plain HTML, CSS and JavaScript.

Security: an optional access token (an environment variable names it), cookies signed with a key
from the environment or generated once into ``data_dir``, ``SameSite`` cookies plus a custom header
on every POST (cross-site forms cannot set it), and a Content-Security-Policy without inline script.
Embedded where third-party cookies are blocked, the page sends its signed session in a header; the two
GETs that cannot carry headers (the event stream, a download) use a short-lived, single-purpose ticket
(``POST /api/tickets``), never the session itself in a URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from adapters.common.base import PlatformAdapter
from adapters.common.bus import Bus
from adapters.common.http import (
    BadRequest,
    StoredFiles,
    UploadTooLarge,
    event_stream,
    parse_json_object,
    preferred_language,
    read_body,
    read_form,
    save_upload,
)
from adapters.common.markdown import HtmlFormat
from adapters.common.transcript import transcript_json
from bot.config import AdapterSection, Settings
from bot.conversation.manager import ConversationManager
from bot.errors import ShuttingDown, StartupError
from bot.l10n import i18n
from bot.media.images import sniff
from bot.ops.checks import CheckResult
from bot.ops.logs import conversation_var, register_secret
from bot.runtime import Runtime
from bot.seams import Channel
from bot.types import (
    NO_ROUTE,
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    PlatformIds,
    ReplyEvent,
    Sender,
    SinkContext,
    Status,
    TextChunk,
)

log = logging.getLogger(__name__)

PLATFORM = "web"
COOKIE = "internvl_bot_session"
CSRF_HEADER = "X-InternVL-Bot"
SESSION_HEADER = "X-InternVL-Bot-Session"
STATIC = Path(__file__).parent / "web_static"
HEARTBEAT_SECONDS = 15.0
UPLOAD_MAX_AGE = 7 * 86400
#: How long a ticket for the event stream (seconds) and for a download is good for.
EVENTS_TICKET_SECONDS = 60
FILE_TICKET_SECONDS = 600
_UPLOAD_REF = re.compile(r"[0-9a-f]{32}\Z")
BUS_CHANNEL = "internvl_bot_web"
FILE_BUCKET = "webfile:"  # the store's stash: one bucket per file a session can download
FILES_KEPT = 20
FILES_MAX_AGE = 86400.0  # a download link older than a day is not offered again (ask for a new export)
_FILE_ID = re.compile(r"[0-9a-f]{32}\Z")

#: Labels of the page itself; their texts are the ``ui_<name>`` entries of the catalogs (bot/l10n/locales).
UI_KEYS = ("send", "attach", "placeholder", "human", "reset", "persona", "language", "waiting", "back", "auto",
           "uploading", "you", "bot", "reconnecting", "demo", "title", "delete", "delete_confirm", "too_many",
           "too_big", "feedback_up", "feedback_down", "feedback_thanks")


def ui_texts(lang: str) -> dict[str, str]:
    """The page's labels in ``lang`` (English where a catalog lacks one)."""
    # placeholders the page fills in itself stay placeholders
    return {key: i18n.text(f"ui_{key}", lang, name="{name}", size="{size}", limit="{limit}") for key in UI_KEYS}


class WebSettings(AdapterSection):
    """The web chat served by ``internvl-bot serve`` (also embeddable as a widget)."""

    enabled: bool = True
    title: str = "InternVL assistant"
    access_token_env: str = Field(
        "INTERNVL_BOT_WEB_ACCESS_TOKEN",
        description="environment variable holding an access token; when it is set, the page asks for it",
    )
    session_secret_env: str = Field(
        "INTERNVL_BOT_WEB_SESSION_SECRET",
        description="environment variable holding the cookie-signing key; unset = a key generated in data_dir",
    )
    session_days: int = Field(30, ge=1, description="how long a browser keeps its conversation")
    embed_origins: list[str] = Field(
        default_factory=list, description="sites allowed to embed the widget (https://help.example.com)"
    )
    max_files_per_message: int = Field(10, ge=1, le=64)


_html = HtmlFormat()


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (shown as text) and unsafe link schemes refused."""
    return _html.render(text).text


def session_secret(settings: Settings, conf: WebSettings) -> bytes:
    """The cookie-signing key: from the environment, else generated once into ``data_dir`` (mode 0600)."""
    value = os.environ.get(conf.session_secret_env, "")
    if value:
        register_secret(value)
        return value.encode()
    if settings.store.backend == "postgres":
        # a key per replica would make each replica refuse the others' cookies: every reload a new conversation
        raise StartupError(f"store.backend is postgres (replicas): set {conf.session_secret_env} to the same secret "
                           "on every replica (for example: openssl rand -hex 32)")
    path = settings.data_path / "web-session.key"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


MAX_IDLE_SESSIONS = 10_000  # sessions held here for a partial answer with no page open

@dataclass(eq=False)
class _Session:
    """The open pages (SSE streams) of one browser session on this replica, and the answer streaming now."""

    streams: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    partial: str = ""
    touched: float = field(default_factory=time.monotonic)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self.streams:
            if queue.qsize() < 10_000:  # a stalled page is not allowed to grow memory; it replays on reconnect
                queue.put_nowait(event)


class WebSink:
    """Renders one turn's reply events to every open page of the session, on whichever replica holds it."""

    def __init__(self, adapter: WebAdapter, sid: str, reply_to: int | None = None) -> None:
        self.adapter = adapter
        self.sid = sid
        self.reply_to = reply_to  # the question's id: the page shows the reply right after it
        # one process: events only go into the pages' queues, so the core calls emit inline; between
        # replicas each event is a NOTIFY, and the core's buffer coalesces text at the database's pace
        self.immediate = not adapter.bus.shared
        self._started = False


    async def emit(self, event: ReplyEvent) -> PlatformIds:
        out: dict[str, Any]
        if isinstance(event, Status):
            out = {"type": "status", "kind": event.kind, "text": event.text}
        elif isinstance(event, TextChunk):
            # The answer's first text replaces what the pages show: when a replica died mid-answer and another
            # answers the same question again, its partial answer gives way to the new one, not prefixes it.
            out = {"type": "chunk" if self._started else "partial", "text": event.text}
            self._started = True
        elif isinstance(event, AnswerDone) and event.silent:
            out = {"type": "stopped"}
        elif isinstance(event, AnswerDone):
            out = {"type": "done", "text": event.text, "html": render_markdown(event.text),
                   "interrupted": event.interrupted, "outcome": event.outcome}
        elif isinstance(event, HandoffUpdate):
            out = {"type": "notice", "kind": "info", "author": "", "text": event.text,
                   "html": render_markdown(event.text), "handoff": event.state, "mode": event.mode}
        elif isinstance(event, Notice):
            out = {"type": "notice", "kind": event.kind, "author": event.author, "text": event.text,
                   "html": render_markdown(event.text)}
        elif isinstance(event, FileReply):
            fid = await self.adapter.keep_file(self.sid, event)
            out = {"type": "file", "name": event.filename, "mime": event.mime, "caption": event.caption, "id": fid,
                   "url": f"{self.adapter.prefix}/api/files/{fid}"}
        else:
            return None
        await self.adapter.bus.publish({"sid": self.sid, "event": {**out, "reply_to": self.reply_to}})
        return None


class _Refused(Exception):
    """A request answered early with ``response`` (a polite refusal in the user's language)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class WebAdapter(PlatformAdapter[WebSettings]):
    """The web chat. ``router()`` gives the routes to mount on the server's app."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: WebSettings | None = None, *,
                 prefix: str = "") -> None:
        super().__init__(manager, settings, conf or getattr(settings.adapters, "web", None) or WebSettings())
        self.prefix = prefix
        self.uploads = settings.data_path / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fetcher = StoredFiles(manager.store)
        secret = session_secret(settings, self.conf)
        self._signer = URLSafeTimedSerializer(secret, salt="internvl-bot web session")
        self._tickets = URLSafeTimedSerializer(secret, salt="internvl-bot web ticket")
        self._sessions: dict[str, _Session] = {}
        self.bus = Bus(manager.store, BUS_CHANNEL, self._apply)
        self.accepting = True  # browsers come to the server: it takes messages as soon as it is built
        self.demo = False
        self.channel = Channel(PLATFORM, self.fetcher, self._sink_for, self.conf.persona or None,
                               policy=self.conf.policy(settings.limits))
        manager.register(self.channel)
        self._sweep_uploads()

    # -- sessions ---------------------------------------------------------------------------

    @property
    def access_token(self) -> str:
        return os.environ.get(self.conf.access_token_env, "")

    def session(self, sid: str) -> _Session:
        session = self._sessions.get(sid)
        if session is None:
            session = self._sessions[sid] = _Session()
        return session

    def _apply(self, message: dict[str, Any]) -> None:
        """An event for a session's pages, from this replica or another (see adapters/common/bus.py)."""
        sid, event = message.get("sid"), message.get("event")
        if not isinstance(sid, str) or not isinstance(event, dict):
            return
        kind = event.get("type")
        session = self._sessions.get(sid)
        if session is None:
            if kind not in ("chunk", "partial"):
                return  # no page of this session is open here, and nothing to replay to one that opens
            session = self._sessions[sid] = _Session()
        if kind == "chunk":
            session.partial += str(event.get("text", ""))
        elif kind == "partial":
            session.partial = str(event.get("text", ""))
        elif kind in ("done", "stopped"):
            session.partial = ""
        session.touched = time.monotonic()
        session.publish(event)
        if not session.streams and not session.partial:
            self._sessions.pop(sid, None)
        elif len(self._sessions) > MAX_IDLE_SESSIONS:
            self._drop_idle_sessions()

    def _drop_idle_sessions(self) -> None:
        """Sessions kept only for a partial answer no page is watching (an answer that never finished, its
        replica gone): the oldest go first, down to half the bound. Open pages are never dropped."""
        idle = sorted((s.touched, sid) for sid, s in self._sessions.items() if not s.streams)
        for _, sid in idle[:max(0, len(self._sessions) - MAX_IDLE_SESSIONS // 2)]:
            self._sessions.pop(sid, None)

    async def keep_file(self, sid: str, reply: FileReply) -> str:
        """Keep a file the bot sends (an export) for the session's download link, in the store — any replica
        serves the link — only the newest ``FILES_KEPT`` of a session, for ``FILES_MAX_AGE`` at most."""
        fid = uuid.uuid4().hex
        store = self.manager.store
        payload = json.dumps({"name": reply.filename, "mime": reply.mime,
                              "data": base64.b64encode(reply.data).decode("ascii")})
        await store.stash(f"{FILE_BUCKET}{sid}:{fid}", "file", payload)
        await store.drop_stale_stash(FILE_BUCKET, time.time() - FILES_MAX_AGE)  # every session's old ones
        kept = list(await store.stashed(f"{FILE_BUCKET}{sid}:"))
        for bucket in kept[:-FILES_KEPT]:
            await store.drop_stash(bucket)
        return fid

    async def _drop_files(self, sid: str) -> None:
        for bucket in await self.manager.store.stashed(f"{FILE_BUCKET}{sid}:"):
            await self.manager.store.drop_stash(bucket)

    def _sink_for(self, context: SinkContext) -> WebSink:
        return WebSink(self, context.key.chat, context.message_id)

    def _read_cookie(self, request: Request) -> dict[str, Any] | None:
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

    def _ticket_session(self, request: Request, purpose: str) -> dict[str, Any] | None:
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

    def _set_cookie(self, response: Response, request: Request, data: dict[str, Any]) -> None:
        embedded = bool(self.conf.embed_origins)
        secure = embedded or request.url.scheme == "https"
        response.set_cookie(COOKIE, self._signer.dumps(data), max_age=self.conf.session_days * 86400, httponly=True,
                            secure=secure, samesite="none" if embedded else "lax", path="/")

    def _authorized(self, request: Request, cookie: dict[str, Any] | None) -> bool:
        token = self.access_token
        if not token:
            return True
        if cookie and cookie.get("auth") and hmac.compare_digest(str(cookie.get("tok", "")), _fingerprint(token)):
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())

    def _title(self, lang: str) -> str:
        """The page's title: the configured one, or the default in the page's language."""
        default = WebSettings.model_fields["title"].default
        return i18n.text("ui_title", lang) if self.conf.title == default else self.conf.title

    def _language(self, request: Request) -> str:
        default = self.settings.conversation.default_language
        return preferred_language(request.headers.get("accept-language", ""), i18n.UI_LANGUAGES,
                                  default if default in i18n.UI_LANGUAGES else "en")

    def _session_or_error(self, request: Request, ticket_for: str | None = None) \
            -> tuple[str, None] | tuple[None, JSONResponse]:
        cookie = self._read_cookie(request)
        if cookie is None and ticket_for is not None:
            cookie = self._ticket_session(request, ticket_for)
        if not self._authorized(request, cookie):
            return None, JSONResponse({"error": "access token required"}, status_code=401)
        if cookie is None:
            return None, JSONResponse({"error": "no session: reload the page"}, status_code=401)
        return cookie["sid"], None

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Browsers come to the server; with replicas, events from the others start arriving."""
        await self.bus.start()

    async def close(self) -> None:
        self.close_streams()
        await super().close()

    def close_streams(self) -> None:
        """Shutdown, last step: end every SSE stream (browsers reconnect to the next process)."""
        for session in self._sessions.values():
            session.publish({"type": "bye"})
            for queue in session.streams:
                queue.put_nowait(None)

    def _sweep_uploads(self) -> None:
        cutoff = time.time() - UPLOAD_MAX_AGE
        for path in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    # -- routes ---------------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """Nothing outside to ask: where the page is served and where the cookies' key comes from (being built
        already found it, or refused a per-replica key)."""
        server = self.settings.server
        url = server.public_url.rstrip("/") if server.public_url else f"http://{server.host}:{server.port}"
        env = self.conf.session_secret_env
        key = f"${env}" if os.environ.get(env) else str(self.settings.data_path / "web-session.key")
        return [CheckResult(True, PLATFORM, f"the chat page at {url}{self.prefix}/; sessions signed with the key "
                                            f"from {key}")]

    def announced(self, router: APIRouter) -> list[str]:
        return ["/"]

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        r.add_api_route("/widget.js", self.widget, methods=["GET"], include_in_schema=False)
        r.add_api_route("/favicon.ico", lambda: Response(status_code=204), methods=["GET"], include_in_schema=False)
        r.add_api_route("/static/{name}", self.static, methods=["GET"], include_in_schema=False)
        r.add_api_route("/api/session", self.session_info, methods=["GET"])
        r.add_api_route("/api/history", self.history, methods=["GET"])
        r.add_api_route("/api/messages", self.post_message, methods=["POST"])
        r.add_api_route("/api/tickets", self.ticket, methods=["POST"])
        r.add_api_route("/api/events", self.events, methods=["GET"])
        r.add_api_route("/api/files/{fid}", self.download, methods=["GET"])
        r.add_api_route("/api/conversation", self.delete_conversation, methods=["DELETE"])
        r.add_api_route("/api/feedback", self.feedback, methods=["POST"])
        r.add_api_route("/api/attachments/{sha256}", self.attachment, methods=["GET"])
        return r

    def _headers(self) -> dict[str, str]:
        ancestors = " ".join(["'self'", *self.conf.embed_origins])
        return {
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                f"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors {ancestors}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }

    async def page(self, request: Request) -> Response:
        cookie = self._read_cookie(request)
        token = request.query_params.get("token")
        if token is not None and self.access_token and hmac.compare_digest(token.encode(), self.access_token.encode()):
            # The token in the link becomes part of the signed cookie; the URL is cleaned of it.
            data = {"sid": cookie["sid"] if cookie else uuid.uuid4().hex, "auth": True,
                    "tok": _fingerprint(self.access_token)}
            response = Response(status_code=303, headers={"Location": f"{self.prefix}/"})
            self._set_cookie(response, request, data)
            return response
        lang = self._language(request)
        if not self._authorized(request, cookie):
            return HTMLResponse(_LOCKED.format(lang=lang, title=_escape(self.conf.title)), status_code=401,
                                headers=self._headers())
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("{{title}}", _escape(self._title(lang))).replace("{{lang}}", lang)
        html = html.replace("{{prefix}}", _escape(self.prefix))
        embedded = request.query_params.get("embed") == "1"
        data = cookie or {"sid": uuid.uuid4().hex}
        # In a frame on another site the cookie may never come back: the page keeps the signed session
        # in its (partitioned) localStorage and sends it in a header instead.
        html = html.replace("{{session}}", self._signer.dumps(data) if embedded else "")
        response = HTMLResponse(html, headers=self._headers())
        if cookie is None:
            self._set_cookie(response, request, data)
        return response

    async def widget(self, request: Request) -> Response:
        return FileResponse(STATIC / "widget.js", media_type="text/javascript",
                            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    async def static(self, name: str) -> Response:
        if name not in ("chat.js", "chat.css"):
            return Response(status_code=404)
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=media, headers={"Cache-Control": "no-cache"})

    async def session_info(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        key = ConversationKey(PLATFORM, sid)
        conv = await self.manager.store.conversation(key)
        lang = conv.language or conv.last_language or self._language(request)
        ui_lang = lang if lang in i18n.UI_LANGUAGES else self._language(request)
        personas = self.manager.personas
        current = self.manager.persona_for(conv, self.channel)
        return JSONResponse({
            "conversation": str(key),
            "mode": conv.mode,
            "persona": current.name,
            "personas": [{"name": p.name, "title": p.title_for(ui_lang)}
                         for p in sorted(personas.values(), key=lambda p: p.name)],
            # what a new conversation starts with: the persona's greeting and questions to start from
            "greeting": current.greeting_for(ui_lang),
            "suggestions": list(current.suggestions_for(ui_lang))[:4],
            "title": self._title(ui_lang),
            "language": conv.language or "auto",
            "languages": [{"code": c, "name": i18n.language_name(c, c, title=True)} for c in self.settings.conversation.languages],
            "ui": ui_texts(ui_lang),
            "max_file_bytes": self.settings.media.max_file_bytes,
            "max_files": self.conf.max_files_per_message,
            "demo": self.demo,
        })

    async def history(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        key = ConversationKey(PLATFORM, sid)
        conv = await self.manager.store.conversation(key)
        # since the last "New conversation" (the /reset itself stays, it says what happened)
        rows = [r for r in await self.manager.store.transcript(key, limit=200)
                if r.id >= conv.context_start - 1]
        return JSONResponse({"messages": transcript_json(rows), "partial": self.session(sid).partial})

    def _refuse(self, status: int, text: str, reason: str) -> JSONResponse:
        log.info("web message refused (%s): %s", status, reason)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": text}, status_code=status, headers=headers)

    async def post_message(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        browser = self._language(request)
        if request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": f"missing {CSRF_HEADER} header"}, status_code=403)
        # a refusal speaks the language the user writes in (the conversation's), the browser's only before
        # they wrote anything: Accept-Language pt-BR and English questions get English refusals
        conv = await self.manager.store.conversation(ConversationKey(PLATFORM, sid))
        lang = conv.language or conv.last_language or browser
        lang = lang if lang in i18n.UI_LANGUAGES else browser
        if not self.accepting:
            return self._refuse(503, i18n.text("busy_restarting", lang), "shutting down")
        conversation_var.set(f"{PLATFORM}:{sid}")
        try:
            text, button, attachments = await self._message_form(request, lang)
        except _Refused as refused:
            return refused.response
        request_id = request.headers.get("x-request-id") or ""
        message = IncomingMessage(
            key=ConversationKey(PLATFORM, sid), sender=Sender(sid, "web user"), text=text,
            attachments=tuple(attachments), locale=browser,
            # Request ids are the browser's: they only mean something within its own session.
            event_id=f"{sid}:{request_id[:100]}" if request_id else None,
            # the request id, when the page sent one: a retry that finds the message stored learns its id
            message_id=f"r:{request_id[:100]}" if request_id else uuid.uuid4().hex,
            route={"via": "button"} if button else NO_ROUTE,
        )
        try:
            receipt = await self.manager.submit(message)
        except ShuttingDown:
            return self._refuse(503, i18n.text("busy_restarting", lang), "shutting down")
        if receipt is None:  # a retry of a request already stored (its answer was lost on the way)
            stored = await self.manager.store.find_by_platform_id(PLATFORM, sid, message.message_id or "")
            return JSONResponse({"duplicate": True, "id": stored.id if stored else None}, status_code=200)
        return JSONResponse({"id": receipt.message_id}, status_code=202)

    async def _message_form(self, request: Request, lang: str) -> tuple[str, bool, list[Attachment]]:
        """The form's text, whether a page's button sent it, and its files (stored); :class:`_Refused` with
        the polite answer when the body is too big, malformed or has too many or too large files."""
        limit = self.settings.media.max_file_bytes
        most = self.conf.max_files_per_message
        max_body = limit * most + 1_000_000
        declared = request.headers.get("content-length") or ""
        length = int(declared) if declared.isdigit() else 0
        if length > max_body:
            raise _Refused(self._refuse(413, i18n.text("files_too_large_total", lang, size_mb=_mb(length),
                                                       limit_mb=_mb(max_body - 1_000_000)), f"body of {length} bytes"))
        try:
            # Counted here rather than by the parser, so the user hears how many they sent.
            form = await read_form(request, max_files=1000, max_fields=20,
                                   max_part_size=self.settings.conversation.max_message_chars * 4 + 1024)
        except MultiPartException as exc:
            if "exceeded maximum size" in exc.message:  # the text: far past the limit, not a broken upload
                limit_chars = self.settings.conversation.max_message_chars
                raise _Refused(self._refuse(413, i18n.text("message_too_long_limit", lang, limit=limit_chars),
                                            f"text over {limit_chars} characters")) from None
            key = "text_not_utf8" if "not valid" in exc.message else "upload_malformed"
            raise _Refused(self._refuse(400, i18n.text(key, lang), f"malformed form: {exc.message}")) from None
        except Exception as exc:
            raise _Refused(self._refuse(400, i18n.text("upload_malformed", lang), f"malformed form: {exc}")) from None
        try:
            text_part = form.get("text")
            if isinstance(text_part, UploadFile):
                raise _Refused(self._refuse(400, i18n.text("upload_malformed", lang), "'text' sent as a file"))
            text = str(text_part or "")
            uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
            if text_part is None and not uploads:  # the page always sends "text": the body was cut short
                raise _Refused(self._refuse(400, i18n.text("upload_malformed", lang), "no text field and no file"))
            if len(uploads) > most:
                raise _Refused(self._refuse(413, i18n.text("too_many_files", lang, count=len(uploads), limit=most),
                                            f"{len(uploads)} files"))
            attachments = [await self._store_upload(item, lang, limit) for item in uploads]
            # a page's button (New conversation, Talk to a person…) sends its command: no bubble for it
            return text, form.get("action") == "1" and text.startswith("/"), attachments
        finally:
            await form.close()

    async def _store_upload(self, item: UploadFile, lang: str, limit: int) -> Attachment:
        """One uploaded file, into the store before the message is: whichever replica answers reads it there."""
        try:
            saved = await save_upload(item, self.uploads, limit)
        except UploadTooLarge as big:
            raise _Refused(self._refuse(413, i18n.text("file_too_large", lang, name=big.name, size_mb=_mb(big.size),
                                                       limit_mb=_mb(limit)), f"{big.name}: {big.size} bytes")) from None
        try:
            data = await asyncio.to_thread(saved.path.read_bytes)
        finally:
            saved.path.unlink(missing_ok=True)
        sha = await self.manager.store.save_blob(data, saved.mime)
        return Attachment(ref=StoredFiles.ref(sha), filename=saved.filename, mime=saved.mime, size=saved.size)

    async def delete_conversation(self, request: Request) -> Response:
        """"Delete this conversation": its messages and files go for good; the page starts afresh."""
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        if request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": f"missing {CSRF_HEADER} header"}, status_code=403)
        report = await self.manager.forget(ConversationKey(PLATFORM, sid))
        await self._drop_files(sid)
        log.info("web conversation deleted: %d messages, %d files", report.messages, report.attachment_files)
        return JSONResponse({"deleted": report.messages})

    async def feedback(self, request: Request) -> Response:
        """👍/👎 on an answer: ``{"question": <id of the question it answers>, "rating": "up" | "down"}``. One
        rating per answer and session: a repeated press (a retry, a second tab) is not stored twice. A 👎 asks
        "what was wrong?" (a notice on the event stream); the session's next plain message is its comment."""
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        if request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": f"missing {CSRF_HEADER} header"}, status_code=403)
        body = parse_json_object(await read_body(request, max_bytes=4096), what="the feedback")
        question, rating = body.get("question"), body.get("rating")
        if not isinstance(question, int) or rating not in ("up", "down"):
            return JSONResponse({"error": "expected {question: <message id>, rating: up | down}"}, status_code=400)
        key = ConversationKey(PLATFORM, sid)
        answer = next((r for r in reversed(await self.manager.store.transcript(key, limit=400))
                       if r.role == "assistant" and r.kind == "chat" and r.reply_to == question), None)
        if answer is None:
            return JSONResponse({"error": "no such answer in this conversation"}, status_code=404)
        fid = await self.manager.feedback.record(answer, rating, user=sid, event_id=f"{sid}:{answer.id}")
        if rating == "down" and fid is not None:
            # asked once per 👎 (a repeated press is not stored again, so not asked again): the next message of
            # this session is the comment, not a question (bot.conversation.feedback)
            await self.manager.feedback.ask_comment(key, sid, fid)
            conv = await self.manager.store.conversation(key)
            lang = conv.language or conv.last_language or self._language(request)
            lang = lang if lang in i18n.UI_LANGUAGES else self._language(request)
            await self.manager.deliver_notice(key, Notice(i18n.text("feedback_ask_comment", lang)))
        return JSONResponse({"recorded": fid is not None})

    async def attachment(self, request: Request, sha256: str) -> Response:
        """A file the user sent in this session (thumbnails in the history), by a ticket for "attachments"."""
        sid, error = self._session_or_error(request, ticket_for="attachments")
        if error is not None:
            return error
        rows = await self.manager.store.transcript(ConversationKey(PLATFORM, sid), limit=200)
        if not any(a.sha256 == sha256 for r in rows for a in r.attachments):
            return JSONResponse({"error": "no such file in this conversation"}, status_code=404)
        try:
            data = await self.manager.store.attachment_data(sha256)
        except (FileNotFoundError, ValueError):
            return JSONResponse({"error": "no such file in this conversation"}, status_code=404)
        mime = sniff(data).mime
        shown = mime in ("image/jpeg", "image/png", "image/gif", "image/webp") or mime.startswith("video/")
        return Response(data, media_type=mime if shown else "application/octet-stream",
                        headers={"Content-Disposition": "inline" if shown else "attachment",
                                 "Cache-Control": "private, max-age=3600",
                                 "Content-Security-Policy": "default-src 'none'; sandbox"})

    async def ticket(self, request: Request) -> Response:
        """A short-lived, single-purpose credential for a URL the page cannot add headers to."""
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        if request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": f"missing {CSRF_HEADER} header"}, status_code=403)
        try:
            body = parse_json_object(await read_body(request, max_bytes=10_000))
        except BadRequest as exc:
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        purpose = body.get("purpose")
        session = {"sid": sid}
        cookie = self._read_cookie(request)
        if cookie is not None:
            session = {k: v for k, v in cookie.items() if k in ("sid", "auth", "tok")}
        if purpose == "events":
            return JSONResponse({"ticket": self._tickets.dumps({"for": "events", "session": session}),
                                 "expires_in": EVENTS_TICKET_SECONDS})
        if purpose == "attachments":
            return JSONResponse({"ticket": self._tickets.dumps({"for": "attachments", "session": session}),
                                 "expires_in": FILE_TICKET_SECONDS})
        fid = body.get("file")
        if purpose == "file" and isinstance(fid, str) and _FILE_ID.match(fid):
            return JSONResponse({"ticket": self._tickets.dumps({"for": f"file:{fid}", "session": session}),
                                 "expires_in": FILE_TICKET_SECONDS})
        return JSONResponse({"error": "purpose must be \"events\", \"attachments\", or \"file\" with a file id"},
                            status_code=400)

    async def events(self, request: Request) -> Response:
        sid, error = self._session_or_error(request, ticket_for="events")
        if error is not None:
            return error
        session = self.session(sid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        session.streams.add(queue)
        if session.partial:
            queue.put_nowait({"type": "partial", "text": session.partial})

        def left() -> None:
            session.streams.discard(queue)
            if not session.streams and not session.partial:
                self._sessions.pop(sid, None)  # nothing to keep for a browser that left

        return event_stream(queue, heartbeat=HEARTBEAT_SECONDS, on_close=left)

    async def download(self, request: Request, fid: str) -> Response:
        sid, error = self._session_or_error(request, ticket_for=f"file:{fid}")
        if error is not None:
            return error
        if not _FILE_ID.match(fid):
            return JSONResponse({"error": "no such file"}, status_code=404)
        bucket = f"{FILE_BUCKET}{sid}:{fid}"
        kept = (await self.manager.store.stashed(bucket)).get(bucket)
        if not kept:
            return JSONResponse({"error": "this file is no longer available: ask again with /export"}, status_code=404)
        reply = json.loads(kept[0][1])
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(reply["name"]).name) or "export"
        data = base64.b64decode(reply["data"])
        # a picture the bot drew (grounding boxes) opens in the page, full size; anything else downloads
        shown = reply["mime"] in ("image/jpeg", "image/png") and sniff(data).mime == reply["mime"]
        return Response(data, media_type=reply["mime"],
                        headers={"Content-Disposition": f'{"inline" if shown else "attachment"}; filename="{safe}"',
                                 **({"Content-Security-Policy": "default-src 'none'; sandbox"} if shown else {})})


def build(runtime: Runtime, conf: WebSettings) -> WebAdapter:
    """``serve``'s constructor (see adapters/registry.py): the page says when the model is the demo one."""
    web = WebAdapter.build(runtime, conf)
    assert runtime.engine is not None
    web.demo = runtime.engine.info.demo
    return web


def _fingerprint(token: str) -> str:
    """What the cookie keeps of the access token: changing the token logs everyone out."""
    return hmac.new(b"internvl-bot access", token.encode(), "sha256").hexdigest()[:16]


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f}"


_LOCKED = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>This chat needs an access token. Open the link you were given
(it ends in <code>?token=…</code>).</p></body></html>"""
