"""The web chat adapter (see adapters/web/__init__.py): the page's routes, and the sink streaming each answer
to the open pages of its session."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from adapters.common.base import PlatformAdapter
from adapters.common.bus import Bus
from adapters.common.http import (
    BadRequest,
    StoredFiles,
    event_stream,
    parse_json_object,
    preferred_language,
    read_body,
)
from adapters.common.transcript import transcript_json
from adapters.web import (
    BUS_CHANNEL,
    CSRF_HEADER,
    EVENTS_TICKET_SECONDS,
    FILE_BUCKET,
    FILE_ID,
    FILE_TICKET_SECONDS,
    FILES_KEPT,
    FILES_MAX_AGE,
    HEARTBEAT_SECONDS,
    PLATFORM,
    STATIC,
    WebSettings,
    render_markdown,
    ui_texts,
)
from adapters.web.sessions import Sessions, fingerprint
from adapters.web.uploads import Refused, message_form, refuse, sweep_uploads
from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.errors import ShuttingDown
from bot.l10n import i18n
from bot.media.images import sniff
from bot.ops.checks import CheckResult
from bot.ops.logs import conversation_var
from bot.seams import Channel
from bot.types import (
    NO_ROUTE,
    AnswerDone,
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
        self.sessions = Sessions(settings, self.conf)
        self.bus = Bus(manager.store, BUS_CHANNEL, self.sessions.apply)
        self.accepting = True  # browsers come to the server: it takes messages as soon as it is built
        self.demo = False
        self.channel = Channel(PLATFORM, self.fetcher, self._sink_for, self.conf.persona or None,
                               policy=self.conf.policy(settings.limits))
        manager.register(self.channel)
        sweep_uploads(self.uploads)

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

    def _title(self, lang: str) -> str:
        """The page's title: the configured one, or the default in the page's language."""
        default = WebSettings.model_fields["title"].default
        return i18n.text("ui_title", lang) if self.conf.title == default else self.conf.title

    def _language(self, request: Request) -> str:
        default = self.settings.conversation.default_language
        return preferred_language(request.headers.get("accept-language", ""), i18n.UI_LANGUAGES,
                                  default if default in i18n.UI_LANGUAGES else "en")

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Browsers come to the server; with replicas, events from the others start arriving."""
        await self.bus.start()

    async def close(self) -> None:
        self.close_streams()
        await super().close()

    def close_streams(self) -> None:
        """Shutdown, last step: end every SSE stream (browsers reconnect to the next process)."""
        self.sessions.close_streams()

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
        cookie = self.sessions.read_cookie(request)
        token = request.query_params.get("token")
        if token is not None and self.sessions.access_token and hmac.compare_digest(token.encode(), self.sessions.access_token.encode()):
            # The token in the link becomes part of the signed cookie; the URL is cleaned of it.
            data = {"sid": cookie["sid"] if cookie else uuid.uuid4().hex, "auth": True,
                    "tok": fingerprint(self.sessions.access_token)}
            response = Response(status_code=303, headers={"Location": f"{self.prefix}/"})
            self.sessions.set_cookie(response, request, data)
            return response
        lang = self._language(request)
        if not self.sessions.authorized(request, cookie):
            return HTMLResponse(_LOCKED.format(lang=lang, title=_escape(self.conf.title)), status_code=401,
                                headers=self._headers())
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        html = html.replace("{{title}}", _escape(self._title(lang))).replace("{{lang}}", lang)
        html = html.replace("{{prefix}}", _escape(self.prefix))
        embedded = request.query_params.get("embed") == "1"
        data = cookie or {"sid": uuid.uuid4().hex}
        # In a frame on another site the cookie may never come back: the page keeps the signed session
        # in its (partitioned) localStorage and sends it in a header instead.
        html = html.replace("{{session}}", self.sessions.signed(data) if embedded else "")
        response = HTMLResponse(html, headers=self._headers())
        if cookie is None:
            self.sessions.set_cookie(response, request, data)
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
        sid, error = self.sessions.sid_or_error(request)
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
        sid, error = self.sessions.sid_or_error(request)
        if error is not None:
            return error
        key = ConversationKey(PLATFORM, sid)
        conv = await self.manager.store.conversation(key)
        # since the last "New conversation" (the /reset itself stays, it says what happened)
        rows = [r for r in await self.manager.store.transcript(key, limit=200)
                if r.id >= conv.context_start - 1]
        return JSONResponse({"messages": transcript_json(rows), "partial": self.sessions.get(sid).partial})

    async def post_message(self, request: Request) -> Response:
        sid, error = self.sessions.sid_or_error(request)
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
            return refuse(503, i18n.text("busy_restarting", lang), "shutting down")
        conversation_var.set(f"{PLATFORM}:{sid}")
        try:
            text, button, attachments = await message_form(self, request, lang)
        except Refused as refused:
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
            return refuse(503, i18n.text("busy_restarting", lang), "shutting down")
        if receipt is None:  # a retry of a request already stored (its answer was lost on the way)
            stored = await self.manager.store.find_by_platform_id(PLATFORM, sid, message.message_id or "")
            return JSONResponse({"duplicate": True, "id": stored.id if stored else None}, status_code=200)
        return JSONResponse({"id": receipt.message_id}, status_code=202)

    async def delete_conversation(self, request: Request) -> Response:
        """"Delete this conversation": its messages and files go for good; the page starts afresh."""
        sid, error = self.sessions.sid_or_error(request)
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
        sid, error = self.sessions.sid_or_error(request)
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
        sid, error = self.sessions.sid_or_error(request, ticket_for="attachments")
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
        sid, error = self.sessions.sid_or_error(request)
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
        cookie = self.sessions.read_cookie(request)
        if cookie is not None:
            session = {k: v for k, v in cookie.items() if k in ("sid", "auth", "tok")}
        if purpose == "events":
            return JSONResponse({"ticket": self.sessions.ticket("events", session),
                                 "expires_in": EVENTS_TICKET_SECONDS})
        if purpose == "attachments":
            return JSONResponse({"ticket": self.sessions.ticket("attachments", session),
                                 "expires_in": FILE_TICKET_SECONDS})
        fid = body.get("file")
        if purpose == "file" and isinstance(fid, str) and FILE_ID.match(fid):
            return JSONResponse({"ticket": self.sessions.ticket(f"file:{fid}", session),
                                 "expires_in": FILE_TICKET_SECONDS})
        return JSONResponse({"error": "purpose must be \"events\", \"attachments\", or \"file\" with a file id"},
                            status_code=400)

    async def events(self, request: Request) -> Response:
        sid, error = self.sessions.sid_or_error(request, ticket_for="events")
        if error is not None:
            return error
        session = self.sessions.get(sid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        session.streams.add(queue)
        if session.partial:
            queue.put_nowait({"type": "partial", "text": session.partial})

        return event_stream(queue, heartbeat=HEARTBEAT_SECONDS, on_close=lambda: self.sessions.left(sid, queue))

    async def download(self, request: Request, fid: str) -> Response:
        sid, error = self.sessions.sid_or_error(request, ticket_for=f"file:{fid}")
        if error is not None:
            return error
        if not FILE_ID.match(fid):
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


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


_LOCKED = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>This chat needs an access token. Open the link you were given
(it ends in <code>?token=…</code>).</p></body></html>"""
