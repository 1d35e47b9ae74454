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
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markdown_it import MarkdownIt
from starlette.datastructures import UploadFile

from bot import i18n
from bot.config import Settings
from bot.errors import AttachmentUnavailable, FileTooLarge
from bot.logs import conversation_var
from bot.manager import ConversationManager
from bot.store import StoredMessage
from bot.types import (
    AnswerDone,
    Attachment,
    Channel,
    ConversationKey,
    FileReply,
    IncomingMessage,
    Notice,
    ReplyEvent,
    Sender,
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
_UPLOAD_REF = re.compile(r"[0-9a-f]{32}\Z")

#: Labels of the page itself, per language (the conversation's texts come from bot.i18n).
UI: dict[str, dict[str, str]] = {
    "en": {"send": "Send", "attach": "Attach", "placeholder": "Ask a question, or drop a photo, video or PDF here",
           "human": "Talk to a human", "reset": "New conversation", "persona": "Persona", "language": "Language",
           "waiting": "Waiting for a person — they will answer here.", "back": "Back to the assistant",
           "auto": "automatic", "uploading": "Uploading…", "you": "You", "bot": "Assistant",
           "reconnecting": "Reconnecting…", "demo": "Demo model: answers are random noise."},
    "pt": {"send": "Enviar", "attach": "Anexar", "placeholder": "Faça uma pergunta ou solte aqui uma foto, vídeo ou PDF",
           "human": "Falar com uma pessoa", "reset": "Nova conversa", "persona": "Persona", "language": "Idioma",
           "waiting": "Aguardando uma pessoa — ela vai responder aqui.", "back": "Voltar ao assistente",
           "auto": "automático", "uploading": "Enviando…", "you": "Você", "bot": "Assistente",
           "reconnecting": "Reconectando…", "demo": "Modelo de demonstração: as respostas são ruído aleatório."},
    "es": {"send": "Enviar", "attach": "Adjuntar", "placeholder": "Haz una pregunta o suelta aquí una foto, vídeo o PDF",
           "human": "Hablar con una persona", "reset": "Nueva conversación", "persona": "Persona",
           "language": "Idioma", "waiting": "Esperando a una persona: te responderá aquí.",
           "back": "Volver al asistente", "auto": "automático", "uploading": "Subiendo…", "you": "Tú",
           "bot": "Asistente", "reconnecting": "Reconectando…",
           "demo": "Modelo de demostración: las respuestas son ruido aleatorio."},
    "fr": {"send": "Envoyer", "attach": "Joindre",
           "placeholder": "Posez une question, ou déposez ici une photo, une vidéo ou un PDF",
           "human": "Parler à une personne", "reset": "Nouvelle conversation", "persona": "Persona",
           "language": "Langue", "waiting": "En attente d'une personne — elle vous répondra ici.",
           "back": "Revenir à l'assistant", "auto": "automatique", "uploading": "Envoi…", "you": "Vous",
           "bot": "Assistant", "reconnecting": "Reconnexion…",
           "demo": "Modèle de démonstration : les réponses sont du bruit aléatoire."},
    "de": {"send": "Senden", "attach": "Anhängen",
           "placeholder": "Stellen Sie eine Frage oder ziehen Sie ein Foto, Video oder PDF hierher",
           "human": "Mit einem Menschen sprechen", "reset": "Neues Gespräch", "persona": "Persona",
           "language": "Sprache", "waiting": "Warten auf einen Menschen — die Antwort kommt hier.",
           "back": "Zurück zum Assistenten", "auto": "automatisch", "uploading": "Wird hochgeladen…", "you": "Sie",
           "bot": "Assistent", "reconnecting": "Verbindung wird wiederhergestellt…",
           "demo": "Demo-Modell: Die Antworten sind zufälliges Rauschen."},
    "zh": {"send": "发送", "attach": "附件", "placeholder": "输入问题，或将照片、视频、PDF 拖到这里", "human": "转人工",
           "reset": "新对话", "persona": "角色", "language": "语言", "waiting": "正在等待人工客服，他们会在这里回复。",
           "back": "回到智能助手", "auto": "自动", "uploading": "正在上传…", "you": "你", "bot": "助手",
           "reconnecting": "正在重新连接…", "demo": "演示模型：回答是随机噪声。"},
    "ru": {"send": "Отправить", "attach": "Прикрепить", "placeholder": "Задайте вопрос или перетащите сюда фото, видео или PDF",
           "human": "Связаться с человеком", "reset": "Новый разговор", "persona": "Персона", "language": "Язык",
           "waiting": "Ждём человека — ответ придёт сюда.", "back": "Вернуться к ассистенту", "auto": "автоматически",
           "uploading": "Загрузка…", "you": "Вы", "bot": "Ассистент", "reconnecting": "Переподключение…",
           "demo": "Демо-модель: ответы — случайный шум."},
    "ja": {"send": "送信", "attach": "添付", "placeholder": "質問を入力するか、写真・動画・PDF をここにドロップ",
           "human": "担当者と話す", "reset": "新しい会話", "persona": "ペルソナ", "language": "言語",
           "waiting": "担当者をお待ちください。ここで返信があります。", "back": "アシスタントに戻る", "auto": "自動",
           "uploading": "アップロード中…", "you": "あなた", "bot": "アシスタント", "reconnecting": "再接続中…",
           "demo": "デモモデル：回答はランダムなノイズです。"},
}

_markdown = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


def render_markdown(text: str) -> str:
    """Markdown to HTML with raw HTML disabled (shown as text) and unsafe link schemes refused."""
    return _markdown.render(text)


def session_secret(settings: Settings) -> bytes:
    """The cookie-signing key: from the environment, else generated once into ``data_dir`` (mode 0600)."""
    conf = settings.adapters.web
    value = os.environ.get(conf.session_secret_env, "")
    if value:
        return value.encode()
    path = settings.data_path / "web-session.key"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class UploadFetcher:
    """Reads the files browsers uploaded from ``<data_dir>/uploads`` (the manager then stores them by SHA-256)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, ref: str) -> Path:
        if not _UPLOAD_REF.match(ref):
            raise AttachmentUnavailable(f"bad upload reference {ref!r}")
        return self.folder / ref

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        path = self.path(attachment.ref)
        name = attachment.filename or "file"
        try:
            size = path.stat().st_size
            if size > limit:
                raise FileTooLarge(name=name, size=size, limit=limit)
            return await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None


@dataclass(eq=False)
class _Session:
    """The open pages (SSE streams) of one browser session, and the answer streaming right now."""

    streams: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    partial: str = ""
    files: dict[str, FileReply] = field(default_factory=dict)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self.streams:
            queue.put_nowait(event)


class WebSink:
    """Renders one turn's reply events to every open page of the session."""

    def __init__(self, adapter: WebAdapter, sid: str) -> None:
        self.adapter = adapter
        self.sid = sid

    async def emit(self, event: ReplyEvent) -> str | None:
        session = self.adapter.session(self.sid)
        if isinstance(event, Status):
            session.publish({"type": "status", "kind": event.kind, "text": event.text})
        elif isinstance(event, TextChunk):
            session.partial += event.text
            session.publish({"type": "chunk", "text": event.text})
        elif isinstance(event, AnswerDone):
            session.partial = ""
            session.publish({"type": "done", "text": event.text, "html": render_markdown(event.text),
                             "interrupted": event.interrupted})
        elif isinstance(event, Notice):
            session.publish({"type": "notice", "kind": event.kind, "author": event.author, "text": event.text,
                             "html": render_markdown(event.text)})
        elif isinstance(event, FileReply):
            fid = uuid.uuid4().hex
            session.files[fid] = event
            while len(session.files) > 20:
                session.files.pop(next(iter(session.files)))
            session.publish({"type": "file", "name": event.filename, "caption": event.caption,
                             "url": f"{self.adapter.prefix}/api/files/{fid}"})
        return None


class WebAdapter:
    """The web chat. ``router()`` gives the routes to mount on the server's app."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, *, prefix: str = "") -> None:
        self.manager = manager
        self.settings = settings
        self.conf = settings.adapters.web
        self.prefix = prefix
        self.uploads = settings.data_path / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.fetcher = UploadFetcher(self.uploads)
        self._signer = URLSafeTimedSerializer(session_secret(settings), salt="internvl-bot web session")
        self._sessions: dict[str, _Session] = {}
        self._accepting = True
        self.demo = False
        self.channel = Channel(PLATFORM, self.fetcher, self._sink_for, self.conf.persona or None)
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

    def _sink_for(self, key: ConversationKey, reply_to: str | None) -> WebSink:
        return WebSink(self, key.chat)

    def _read_cookie(self, request: Request) -> dict[str, Any] | None:
        """The signed session: the cookie, or, for the embedded widget (where browsers block third-party
        cookies), the same signed value in a header — or in the query of the two GETs a page cannot
        add headers to (the event stream and file downloads)."""
        raw = request.cookies.get(COOKIE) or request.headers.get(SESSION_HEADER)
        path = request.url.path
        if not raw and request.method == "GET" and (path.endswith("/api/events") or "/api/files/" in path):
            raw = request.query_params.get("session")
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=self.conf.session_days * 86400)
        except BadSignature:
            return None
        return data if isinstance(data, dict) and isinstance(data.get("sid"), str) else None

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

    def _language(self, request: Request) -> str:
        header = request.headers.get("accept-language", "")
        for part in header.split(","):
            code = i18n.normalize_code(part.split(";")[0])
            if code and code in UI:
                return code
        return self.settings.conversation.default_language if self.settings.conversation.default_language in UI else "en"

    def _session_or_error(self, request: Request) -> tuple[str, None] | tuple[None, JSONResponse]:
        cookie = self._read_cookie(request)
        if not self._authorized(request, cookie):
            return None, JSONResponse({"error": "access token required"}, status_code=401)
        if cookie is None:
            return None, JSONResponse({"error": "no session: reload the page"}, status_code=401)
        return cookie["sid"], None

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to start: browsers come to the server."""

    async def close(self) -> None:
        self.close_streams()

    def stop_intake(self) -> None:
        """Shutdown, step 1: new messages are refused with a polite 'restarting' answer."""
        self._accepting = False

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

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        r.add_api_route("/widget.js", self.widget, methods=["GET"], include_in_schema=False)
        r.add_api_route("/favicon.ico", lambda: Response(status_code=204), methods=["GET"], include_in_schema=False)
        r.add_api_route("/static/{name}", self.static, methods=["GET"], include_in_schema=False)
        r.add_api_route("/api/session", self.session_info, methods=["GET"])
        r.add_api_route("/api/history", self.history, methods=["GET"])
        r.add_api_route("/api/messages", self.post_message, methods=["POST"])
        r.add_api_route("/api/events", self.events, methods=["GET"])
        r.add_api_route("/api/files/{fid}", self.download, methods=["GET"])
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
        html = html.replace("{{title}}", _escape(self.conf.title)).replace("{{lang}}", lang)
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
        personas = self.manager.personas
        current = self.manager.persona_for(conv, self.channel)
        return JSONResponse({
            "conversation": str(key),
            "mode": conv.mode,
            "persona": current.name,
            "personas": [{"name": p.name, "title": p.title} for p in sorted(personas.values(), key=lambda p: p.name)],
            "language": conv.language or "auto",
            "languages": [{"code": c, "name": i18n.language_name(c)} for c in self.settings.conversation.languages],
            "ui": UI.get(lang if lang in UI else self._language(request), UI["en"]),
            "max_file_bytes": self.settings.media.max_file_bytes,
            "max_files": self.conf.max_files_per_message,
            "demo": self.demo,
        })

    async def history(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        rows = await self.manager.store.transcript(ConversationKey(PLATFORM, sid), limit=200)
        return JSONResponse({"messages": [_row(r) for r in rows], "partial": self.session(sid).partial})

    async def post_message(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        lang = self._language(request)
        if request.headers.get(CSRF_HEADER) != "1":
            return JSONResponse({"error": "missing X-InternVL-Bot header"}, status_code=403)
        if not self._accepting:
            return JSONResponse({"error": i18n.text("busy_restarting", lang)}, status_code=503,
                                headers={"Retry-After": "5"})
        conversation_var.set(f"{PLATFORM}:{sid}")
        limit = self.settings.media.max_file_bytes
        max_body = limit * self.conf.max_files_per_message + 1_000_000
        length = int(request.headers.get("content-length") or 0)
        if length > max_body:
            return JSONResponse({"error": i18n.text("file_too_large", lang, name="upload", size_mb=_mb(length),
                                                    limit_mb=_mb(limit))}, status_code=413)
        try:
            form = await request.form(max_files=self.conf.max_files_per_message, max_part_size=limit + 1)
        except Exception as exc:
            log.info("web upload refused: %s", exc)
            return JSONResponse({"error": i18n.text("file_too_large", lang, name="upload", size_mb="?",
                                                    limit_mb=_mb(limit))}, status_code=413)
        text = str(form.get("text") or "")
        attachments: list[Attachment] = []
        try:
            for item in form.getlist("files"):
                if not isinstance(item, UploadFile):
                    continue
                attachment = await self._save_upload(item, limit, lang)
                if isinstance(attachment, JSONResponse):
                    return attachment
                attachments.append(attachment)
        finally:
            await form.close()
        message = IncomingMessage(
            key=ConversationKey(PLATFORM, sid), sender=Sender(sid, "web user"), text=text,
            attachments=tuple(attachments), locale=lang, event_id=request.headers.get("x-request-id") or None,
            message_id=uuid.uuid4().hex,
        )
        try:
            ticket = await self.manager.submit(message)
        except RuntimeError:
            self._discard(attachments)
            return JSONResponse({"error": i18n.text("busy_restarting", lang)}, status_code=503,
                                headers={"Retry-After": "5"})
        if ticket is None:
            return JSONResponse({"duplicate": True}, status_code=200)
        if attachments:
            ticket.done.add_done_callback(lambda f: f.result() != "interrupted" and self._discard(attachments))
        return JSONResponse({"id": ticket.message_id}, status_code=202)

    async def _save_upload(self, item: UploadFile, limit: int, lang: str) -> Attachment | JSONResponse:
        name = Path(item.filename or "file").name[:200]
        ref = uuid.uuid4().hex
        path = self.uploads / ref
        size = 0
        with path.open("wb") as out:
            while chunk := await item.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    out.close()
                    path.unlink(missing_ok=True)
                    return JSONResponse({"error": i18n.text("file_too_large", lang, name=name, size_mb=_mb(size),
                                                            limit_mb=_mb(limit))}, status_code=413)
                out.write(chunk)
        return Attachment(ref=ref, filename=name, mime=item.content_type or "", size=size)

    def _discard(self, attachments: list[Attachment]) -> bool:
        for attachment in attachments:
            with contextlib.suppress(OSError, AttachmentUnavailable):
                self.fetcher.path(attachment.ref).unlink(missing_ok=True)
        return True

    async def events(self, request: Request) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        session = self.session(sid)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        session.streams.add(queue)
        if session.partial:
            queue.put_nowait({"type": "partial", "text": session.partial})

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                    except TimeoutError:
                        yield b": ping\n\n"
                        continue
                    if event is None:
                        return
                    yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
            finally:
                session.streams.discard(queue)
                if not session.streams and not session.partial and not session.files:
                    self._sessions.pop(sid, None)  # nothing to keep for a browser that left

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def download(self, request: Request, fid: str) -> Response:
        sid, error = self._session_or_error(request)
        if error is not None:
            return error
        reply = self.session(sid).files.get(fid)
        if reply is None:
            return JSONResponse({"error": "this file is no longer available: ask again with /export"}, status_code=404)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(reply.filename).name) or "export"
        return Response(reply.data, media_type=reply.mime,
                        headers={"Content-Disposition": f'attachment; filename="{safe}"'})


def _row(row: StoredMessage) -> dict[str, Any]:
    author = row.sender_name if row.role == "assistant" else ""
    return {
        "id": row.id, "role": row.role, "kind": row.kind, "state": row.state, "author": author, "text": row.text,
        "html": render_markdown(row.text) if row.role == "assistant" else "",
        "attachments": [a.filename or "file" for a in row.attachments], "at": row.created_at,
    }


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
