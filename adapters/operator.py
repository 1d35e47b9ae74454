"""The operator inbox: where a person answers the conversations handed to people, from every adapter.

Served by ``internvl-bot serve`` when the operator token is set (``server.operator_token_env``,
``INTERNVL_BOT_OPERATOR_TOKEN``): the page ``/operator`` (sign in with the token and a name), and the
operator API under ``/api/operator/`` (``Authorization: Bearer <token>``):

- ``GET /api/operator/conversations``: ``waiting`` for a person (oldest handoff first), ``in_progress`` (a
  person has answered or taken it since the handoff: ``operator`` says who) and ``active``, the ones the
  assistant is handling (newest first), from every adapter. Each names the user as the platform does
  (``name``; ``number``: a small number per platform, for web visitors who have no name), says since when the
  user waits for an answer (``waiting_since``: their newest message, when no person has answered it) and
  whether this process serves its platform (``served``: if not, the conversation is read-only here);
- ``GET /api/operator/conversations/{key}/messages``: a transcript, attachments with their SHA-256;
- ``POST /api/operator/conversations/{key}/reply`` ``{"text", "author"}``: delivered into the user's
  platform as the person's answer; ``…/take`` ``{"by"}``: take over from the assistant; ``…/return``
  ``{"by"}``: give back to the assistant (all three 409 for a platform this process does not serve);
- ``GET /api/operator/quality/items`` and ``…/quality/daily``: the Quality tab's answers rated 👎 and corrected
  drafts, and feedback per day (adapters/quality.py);
- ``POST /api/operator/tickets``: a short-lived ticket for what a browser cannot send headers with — the
  live updates ``GET /api/operator/events?ticket=`` (server-sent events) and images
  ``GET /api/operator/files/{sha256}?ticket=``.

The inbox is a handoff notifier that reaches people: with it, ``/human`` hands the conversation over (without
it, nor a webhook, nor a helpdesk, the user hears that nobody is available).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from adapters import quality
from adapters.common.auth import BearerAuth
from adapters.common.bus import Bus
from adapters.common.http import BadRequest, event_stream, preferred_language, read_json_object, text_field
from adapters.common.transcript import transcript_json
from bot.l10n import i18n
from bot.media.images import sniff
from bot.store import Conversation, ConversationSummary, checked_sha256
from bot.types import ConversationKey, HandoffEvent

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.conversation.manager import ConversationManager

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "web_static"
TICKET_SECONDS = 600
HEARTBEAT_SECONDS = 15.0
#: Labels of the page; their texts are the ``op_<name>`` entries of the catalogs (bot/l10n/locales).
UI_KEYS = ("title", "token", "name", "sign_in", "bad_token", "waiting", "active", "none_waiting", "pick", "reply",
           "send", "take", "give_back", "waited", "sign_out", "with_person", "with_bot", "not_delivered",
           "in_progress", "visitor", "read_only", "shortcuts", "inbox", "quality", "q_persona", "q_platform",
           "q_all", "q_since", "q_until", "q_apply", "q_none", "q_earlier", "q_comment", "q_sent_instead", "q_up",
           "q_down", "q_corrected", "q_handoff", "q_edited", "q_discarded", "q_chart")
#: Images shown inline in a transcript; anything else is offered as a download.
INLINE_IMAGES = {"image/jpeg", "image/png", "image/gif", "image/webp"}


def ui_texts(lang: str) -> dict[str, str]:
    # placeholders the page fills in stay placeholders
    return {key: i18n.text(f"op_{key}", lang, time="{time}", name="{name}", number="{number}",
                           platform="{platform}") for key in UI_KEYS}


def _key(text: str) -> ConversationKey:
    try:
        return ConversationKey.parse(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class OperatorInbox:
    """See the module docstring."""

    name = "operator"
    reaches_people = True

    def __init__(self, manager: ConversationManager, settings: Settings) -> None:
        self.manager = manager
        self.settings = settings
        self.token_env = settings.server.operator_token_env
        self.auth = BearerAuth(self.token_env, what="operator API")
        token = os.environ.get(self.token_env, "")
        # tickets are signed with a key derived from the token: a new token invalidates them
        self._tickets = URLSafeTimedSerializer(hashlib.sha256(b"operator tickets\0" + token.encode()).digest(),
                                               salt="internvl-bot operator ticket")
        self._streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.bus = Bus(manager.store, "internvl_bot_operator", self._deliver)

    # -- the notifier -----------------------------------------------------------------------

    async def notify(self, event: HandoffEvent) -> None:
        """To every open inbox page. Never raises into the conversation: a page that missed it (the database
        passing events between replicas is away) sees the conversation in the list when it reloads."""
        try:
            await self.bus.publish({"type": "handoff", "kind": event.kind, "conversation": event.conversation,
                                    "platform": event.platform, "by": event.by, "reason": event.reason})
        except Exception as exc:
            log.error("operator inbox: the live update about %s did not reach the open pages: %s (the pages show "
                      "it when they reload; check the database)", event.conversation, type(exc).__name__)

    def _deliver(self, event: dict[str, Any]) -> None:
        """To the inbox pages open on this replica (events from every replica come through the bus)."""
        for queue in list(self._streams):
            if queue.qsize() < 1000:  # a stalled page is not allowed to grow memory; it reloads on reconnect
                queue.put_nowait(event)

    async def close(self) -> None:
        for queue in list(self._streams):
            queue.put_nowait(None)

    # -- as a served adapter ----------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.start()

    def stop_intake(self) -> None:
        return None

    def router(self) -> APIRouter:
        bearer = [Depends(self.auth)]
        r = APIRouter()
        r.add_api_route("/operator", self.page, methods=["GET"], include_in_schema=False)
        r.add_api_route("/operator/static/{name}", self.static, methods=["GET"], include_in_schema=False)
        r.add_api_route("/api/operator/conversations", self.conversations, methods=["GET"], dependencies=bearer,
                        summary="Conversations waiting for a person, and those the assistant handles")
        r.add_api_route("/api/operator/conversations/{key}/messages", self.messages, methods=["GET"],
                        dependencies=bearer, summary="A conversation's transcript")
        r.add_api_route("/api/operator/conversations/{key}/reply", self.reply, methods=["POST"], dependencies=bearer,
                        summary="A person's answer, delivered into the user's platform")
        r.add_api_route("/api/operator/conversations/{key}/take", self.take, methods=["POST"], dependencies=bearer,
                        summary="Take over a conversation the assistant is handling")
        r.add_api_route("/api/operator/conversations/{key}/return", self.give_back, methods=["POST"],
                        dependencies=bearer, summary="Give a conversation back to the assistant")
        r.add_api_route("/api/operator/quality/items", self.quality_items, methods=["GET"], dependencies=bearer,
                        summary="Answers rated down and corrected drafts, newest first, with their question")
        r.add_api_route("/api/operator/quality/daily", self.quality_daily, methods=["GET"], dependencies=bearer,
                        summary="Feedback per day: thumbs up, thumbs down, corrected, handoff after an answer")
        r.add_api_route("/api/operator/tickets", self.ticket, methods=["POST"], dependencies=bearer,
                        summary="A short-lived ticket for the event stream and images")
        r.add_api_route("/api/operator/events", self.events, methods=["GET"], summary="Live updates (SSE)")
        r.add_api_route("/api/operator/files/{sha256}", self.file, methods=["GET"], summary="An attachment")
        return r

    # -- the page ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' "
                                        "data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                        "frame-ancestors 'none'"),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
        }

    def _language(self, request: Request) -> str:
        return preferred_language(request.headers.get("accept-language", ""), i18n.UI_LANGUAGES,
                                  self.settings.conversation.default_language)

    async def page(self, request: Request) -> Response:
        lang = self._language(request)
        texts = ui_texts(lang)
        html = (STATIC / "operator.html").read_text(encoding="utf-8")
        html = html.replace("{{lang}}", lang).replace("{{title}}", _escape(texts["title"]))
        html = html.replace("{{ui}}", _escape(json.dumps(texts, ensure_ascii=False)))
        return HTMLResponse(html, headers=self._headers())

    async def static(self, name: str) -> Response:
        if name not in ("operator.js", "operator.css"):
            return Response(status_code=404)
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=media, headers={"Cache-Control": "no-cache"})

    # -- the API ----------------------------------------------------------------------------

    def _who(self, conv: Conversation) -> dict[str, Any]:
        """Who the conversation is with, and whether it can be answered from here."""
        has_it = conv.operator_has_it
        return {"key": str(conv.key), "platform": conv.key.platform, "mode": conv.mode, "name": conv.name,
                "number": conv.number, "operator": conv.operator if has_it else "",
                "operator_at": conv.operator_at if has_it else None, "handoff_at": conv.handoff_at,
                "served": conv.key.platform in self.manager.platforms}

    def _summary(self, s: ConversationSummary, now: float) -> dict[str, Any]:
        conv = s.conversation
        out = self._who(conv)
        # the user waits for a person from their newest message on, unless a person has written since
        since = s.last_at if conv.mode == "human" and (out["operator_at"] is None or s.last_at > out["operator_at"]) \
            else None
        out.update({"language": conv.language or conv.last_language or "", "waiting_since": since,
                    "waited_s": round(max(0.0, now - since), 1) if since is not None else None,
                    "last_at": s.last_at, "last_text": " ".join(s.last_text.split())[:140]})
        return out

    async def conversations(self) -> Response:
        now = time.time()
        store = self.manager.store
        human = [self._summary(s, now) for s in await store.list_conversations(mode="human", limit=200)]
        active = await store.list_conversations(mode="bot", limit=50)
        # a person's conversations together, the one whose user has waited longest first
        in_progress = sorted((c for c in human if c["operator"]),
                             key=lambda c: (c["operator"].casefold(), c["waiting_since"] or now))
        return JSONResponse({"now": now, "waiting": [c for c in human if not c["operator"]],
                             "in_progress": in_progress, "active": [self._summary(s, now) for s in active]})

    async def messages(self, key: str) -> Response:
        parsed = _key(key)
        conv = await self.manager.store.conversation(parsed)
        rows = await self.manager.store.transcript(parsed, limit=200)
        return JSONResponse({**self._who(conv), "conversation": str(parsed), "messages": transcript_json(rows)})

    def _read_only(self, key: ConversationKey) -> Response | None:
        """A conversation of a platform this process does not serve (its adapter is disabled) is read-only:
        an answer, a take-over or a give-back could not reach the user."""
        if key.platform in self.manager.platforms:
            return None
        return JSONResponse({"error": f"{key.platform} is not served by this server: the conversation is read-only"},
                            status_code=409)

    async def reply(self, key: str, request: Request) -> Response:
        parsed = _key(key)
        if (refused := self._read_only(parsed)) is not None:
            return refused
        body = await read_json_object(request)
        text, author = text_field(body, "text", max_chars=20_000), text_field(body, "author", max_chars=200)
        if not text.strip() or not author.strip():
            return JSONResponse({"error": "text and author are required"}, status_code=400)
        mid = await self.manager.operator_reply(parsed, text, author=author)
        await self.bus.publish({"type": "reply", "conversation": str(parsed), "by": author})
        return JSONResponse({"id": mid})

    async def take(self, key: str, request: Request) -> Response:
        parsed = _key(key)
        if (refused := self._read_only(parsed)) is not None:
            return refused
        body = await read_json_object(request)
        by = text_field(body, "by", max_chars=200)
        if not by.strip():
            return JSONResponse({"error": "by is required"}, status_code=400)
        return JSONResponse({"taken": await self.manager.take_over(parsed, by=by)})

    async def give_back(self, key: str, request: Request) -> Response:
        parsed = _key(key)
        if (refused := self._read_only(parsed)) is not None:
            return refused
        body = await read_json_object(request) if await request.body() else {}
        by = text_field(body, "by", required=False, max_chars=200) or "operator"
        return JSONResponse({"returned": await self.manager.hand_back(parsed, by=by)})

    async def quality_items(self, request: Request) -> Response:
        return await quality.items(self.manager.store, request)

    async def quality_daily(self, request: Request) -> Response:
        return await quality.daily(self.manager.store, request)

    async def ticket(self) -> Response:
        return JSONResponse({"ticket": self._tickets.dumps({"for": "inbox"}), "expires_in": TICKET_SECONDS})

    def _ticket_ok(self, request: Request) -> bool:
        raw = request.query_params.get("ticket") or ""
        if not raw or not os.environ.get(self.token_env):
            return False
        try:
            return self._tickets.loads(raw, max_age=TICKET_SECONDS).get("for") == "inbox"
        except (BadSignature, AttributeError):
            return False

    async def events(self, request: Request) -> Response:
        if not self._ticket_ok(request):
            return JSONResponse({"error": "a valid ticket is required (POST /api/operator/tickets)"}, status_code=401)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._streams.add(queue)

        return event_stream(queue, heartbeat=HEARTBEAT_SECONDS, on_close=lambda: self._streams.discard(queue))

    async def file(self, sha256: str, request: Request) -> Response:
        if not self._ticket_ok(request):
            return JSONResponse({"error": "a valid ticket is required (POST /api/operator/tickets)"}, status_code=401)
        try:
            checked_sha256(sha256)
            data = await self.manager.store.attachment_data(sha256)
        except ValueError:
            return JSONResponse({"error": "not a SHA-256"}, status_code=400)
        except FileNotFoundError:
            return JSONResponse({"error": "no such file"}, status_code=404)
        mime = sniff(data).mime
        inline = mime in INLINE_IMAGES
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
                   "Content-Security-Policy": "default-src 'none'; sandbox",
                   "Content-Disposition": "inline" if inline else f'attachment; filename="{sha256[:12]}"'}
        return Response(data, media_type=mime if inline else "application/octet-stream", headers=headers)


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#x27;"))


__all__ = ["OperatorInbox", "ui_texts"]
