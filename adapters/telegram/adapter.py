"""The Telegram adapter, on python-telegram-bot's ``Application`` (run on the service's own event loop).

Updates come by long polling (the default) or to ``POST /telegram/webhook``; either way each update is
stored before Telegram hears it was received: the polling loop confirms an update's offset only after
its message is stored, and the webhook answers 200 only then. A redelivered update (a timeout, a restart)
is the same message (the store remembers ``<chat>:<message id>``) and is answered once. Albums arrive as
separate updates: their parts are stashed in the store as they come and become ONE message once no part
came for ``album_debounce`` seconds (and after a restart, from what the stash holds).

Conversations are a chat, or a forum topic of a chat. Private chats answer everything; groups answer only
a mention (``@bot`` or a text mention), a reply to the bot, a command addressed to it, or a trigger word.
Answers stream: ``sendMessageDraft`` previews in private chats, else one message edited at most every
``edit_interval`` seconds (``group_edit_interval`` in groups), finished formatted (entities made by
telegramify-markdown, plain text if Telegram refuses them), split under 4,096 characters, with Regenerate
and New conversation buttons under the last message. Every call to Telegram goes through one rate limiter
(1 message a second per chat with a short burst, 20 a minute per group, 30 a second in all); a 429 is
waited out as Telegram asks and the call made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from telegram import (
    BotCommand,
    BotCommandScopeDefault,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
    User,
)
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from adapters.common.auth import SharedSecret
from adapters.common.base import PlatformAdapter
from adapters.common.http import parse_json_object, read_body
from adapters.common.markdown import TelegramFormat, cut_utf16, utf16_len
from adapters.common.ratelimit import Rate, RateLimiter
from adapters.common.renderer import MessageGone, StreamingRenderer
from adapters.common.urlguard import is_loopback_host
from adapters.telegram import SECRET_TOKEN, TelegramSettings
from bot.config import Settings
from bot.conversation.commands import COMMANDS
from bot.conversation.manager import ConversationManager
from bot.errors import (
    AttachmentUnavailable,
    AudioNotSupported,
    FileTooLarge,
    NoSuchConversation,
    ShuttingDown,
    StartupError,
    StickerNotSupported,
)
from bot.l10n import i18n
from bot.ops.checks import HTTP_TIMEOUT, CheckResult, platform_said, shown, unreachable
from bot.ops.logs import conversation_var
from bot.seams import Channel, Elector
from bot.store import is_store_error
from bot.types import (
    Attachment,
    ConversationKey,
    FileReply,
    IncomingMessage,
    Notice,
    Sender,
    SinkContext,
    Status,
)

log = logging.getLogger(__name__)

POLL_GRACE = 2  # seconds a long poll may take beyond its timeout before it counts as hanging (then: asked again)
POLL_MAX_BACKOFF = 4.0  # seconds between two getUpdates while they fail at once (5xx, refused)
T = TypeVar("T")

PLATFORM = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: The cloud Bot API's getFile limit.
BOT_API_DOWNLOAD_LIMIT = 20 * 1024 * 1024
CAPTION_LIMIT = 1024  # UTF-16 code units, as Telegram counts
MESSAGE_LIMIT = 4096
ALLOWED_UPDATES = ["message", "callback_query"]
ALBUM_BUCKET = "telegram:album:"
ALBUM_DONE = "done:"  # the pieces of an album bucket that record what was handed over
ALBUM_KEPT_S = 86_400.0  # an album bucket untouched this long is dropped (its late parts can no longer come)
POISON_TRIES = 5  # an update failing this often for another reason than the store is skipped
_UNSUPPORTED = "unsupported:"
#: The feedback buttons' texts (the same in every language) and callback data; ``fb:done`` is the "thanks"
#: state a pressed pair becomes.
THUMBS = (("👍", "fb:up"), ("👎", "fb:down"))
FEEDBACK_DONE = "fb:done"


def action_buttons(lang: str) -> list[InlineKeyboardButton]:
    return [InlineKeyboardButton(i18n.text("btn_regenerate", lang), callback_data="regen"),
            InlineKeyboardButton(i18n.text("btn_new_conversation", lang), callback_data="reset")]


def display_name(user: User) -> str:
    """How people see a Telegram user: first and last name, and the @username when there is one (names repeat,
    usernames do not)."""
    return f"{user.full_name} (@{user.username})" if user.username else user.full_name


def _seconds(value: int | float | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def retry_after(exc: BaseException) -> float | None:
    """How long Telegram asked us to wait (a 429), or None for any other error."""
    if isinstance(exc, RetryAfter):
        return max(1.0, _seconds(exc.retry_after))
    return None


def retry_after_or_network(exc: BaseException) -> float | None:
    """For calls that are safe to repeat (edits, drafts, chat actions, deletes): a network error too."""
    if isinstance(exc, RetryAfter):
        return max(1.0, _seconds(exc.retry_after))
    if isinstance(exc, NetworkError) and not isinstance(exc, BadRequest):
        return 1.0
    return None


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in str(exc).lower()


def _bad_formatting(exc: BadRequest) -> bool:
    """Telegram refused the formatting (PTB has no type of its own for these: BadRequest and the API's words),
    so the text goes again as plain text."""
    text = str(exc).lower()
    return any(words in text for words in ("can't parse entities", "entities too long", "entity_", "message is too long"))


def _gone(exc: BadRequest) -> bool:
    text = str(exc).lower()
    return "message to edit not found" in text or "message can't be edited" in text


class TelegramFetcher:
    """Downloads through the Bot API file endpoint, refusing from the update's metadata what is too big or not
    readable (voice, audio, stickers) before any download."""

    def __init__(self, adapter: TelegramAdapter) -> None:
        self.adapter = adapter

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        name = attachment.filename or "file"
        if attachment.ref.startswith(_UNSUPPORTED):
            kind = attachment.ref.removeprefix(_UNSUPPORTED)
            if kind == "sticker":
                raise StickerNotSupported("sticker", name=name, kind="sticker")
            raise AudioNotSupported(kind, name=name, kind=kind)
        cap = min(limit, BOT_API_DOWNLOAD_LIMIT)
        if attachment.size is not None and attachment.size > cap:
            raise FileTooLarge(name=name, size=attachment.size, limit=cap)
        bot = self.adapter.app.bot
        try:
            file = await bot.get_file(attachment.ref)
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise FileTooLarge(name=name, size=attachment.size or cap + 1, limit=cap) from None
            raise AttachmentUnavailable(str(exc), name=name) from None
        except TelegramError as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None
        if file.file_size is not None and file.file_size > cap:
            raise FileTooLarge(name=name, size=file.file_size, limit=cap)
        try:
            data = bytes(await file.download_as_bytearray())
        except TelegramError as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None
        if len(data) > cap:
            raise FileTooLarge(name=name, size=len(data), limit=cap)
        return data


class TelegramTransport:
    """The :class:`~adapters.common.renderer.MessageTransport` of one turn in one chat (or topic)."""

    limit = MESSAGE_LIMIT

    def __init__(self, adapter: TelegramAdapter, context: SinkContext) -> None:
        self.adapter = adapter
        self.context = context
        self.chat_id = int(context.key.chat)
        self.thread_id = int(context.key.thread) if context.key.thread else None
        chat_type = context.route.get("chat_type", "private" if self.chat_id > 0 else "supergroup")
        self.private = chat_type == ChatType.PRIVATE
        self.supports_preview = self.private and adapter.conf.drafts
        # In groups the first message of an answer replies to the question it answers.
        self.reply_to = int(context.reply_to) if context.reply_to and not self.private \
            and context.reply_to.isdigit() else None
        self.draft_id = secrets.randbelow(2**31 - 2) + 1
        self._format = TelegramFormat()
        self._key = str(self.chat_id)

    def measure(self, text: str) -> int:
        return utf16_len(text)

    def previews_affordable(self) -> bool:
        return True  # drafts in private chats; a group's edits wait in its own bucket, no one else's

    def _buttons(self) -> InlineKeyboardMarkup | None:
        if not self.adapter.conf.buttons:
            return None
        lang = self.context.language
        return InlineKeyboardMarkup([[InlineKeyboardButton(text, callback_data=data) for text, data in THUMBS],
                                     action_buttons(lang)])

    def _rendered(self, text: str, final: bool) -> tuple[str, list[MessageEntity] | None]:
        if not final:
            return text, None
        formatted = self._format.render(text)
        if not formatted.text.strip():
            return text, None
        entities = [MessageEntity(e["type"], e["offset"], e["length"], url=e.get("url"), language=e.get("language"),
                                  custom_emoji_id=e.get("custom_emoji_id")) for e in formatted.entities]
        return formatted.text, entities

    async def _call(self, fn: Callable[[], Awaitable[T]], *, repeatable: bool) -> T:
        return await self.adapter.limiter.call(self._key, fn, limited=retry_after,
                                               retry_after=retry_after_or_network if repeatable else retry_after)

    async def send(self, text: str, *, final: bool, closing: bool = False) -> str:
        bot = self.adapter.app.bot
        shown, entities = self._rendered(text, final)
        reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True) if self.reply_to else None
        markup = self._buttons() if closing else None

        async def post(body: str, ents: list[MessageEntity] | None) -> Message:
            return await bot.send_message(self.chat_id, body, entities=ents, message_thread_id=self.thread_id,
                                          reply_parameters=reply, reply_markup=markup,
                                          link_preview_options=LinkPreviewOptions(is_disabled=True))

        try:
            message = await self._call(lambda: post(shown, entities), repeatable=False)
        except BadRequest as exc:
            if entities is None or not _bad_formatting(exc):
                raise
            log.info("Telegram refused the formatting (%s): sending plain text", exc)
            message = await self._call(lambda: post(text, None), repeatable=False)
        self.reply_to = None
        return str(message.message_id)

    async def edit(self, message_id: str, text: str, *, final: bool, closing: bool = False) -> None:
        bot = self.adapter.app.bot
        shown, entities = self._rendered(text, final)
        markup = self._buttons() if closing else None

        async def change(body: str, ents: list[MessageEntity] | None) -> None:
            await bot.edit_message_text(body, chat_id=self.chat_id, message_id=int(message_id), entities=ents,
                                        reply_markup=markup, link_preview_options=LinkPreviewOptions(is_disabled=True))

        try:
            await self._call(lambda: change(shown, entities), repeatable=True)
        except BadRequest as exc:
            if _not_modified(exc):
                return
            if _gone(exc):
                raise MessageGone(message_id) from None
            if entities is None or not _bad_formatting(exc):
                raise
            log.info("Telegram refused the formatting (%s): plain text", exc)
            try:
                await self._call(lambda: change(text, None), repeatable=True)
            except BadRequest as again:
                if not _not_modified(again):
                    raise

    async def delete(self, message_id: str) -> None:
        bot = self.adapter.app.bot
        with contextlib.suppress(BadRequest, Forbidden):
            await self._call(lambda: bot.delete_message(self.chat_id, int(message_id)), repeatable=True)

    async def preview(self, text: str) -> None:
        bot = self.adapter.app.bot
        await self.adapter.limiter.call(f"draft:{self.chat_id}", lambda: bot.send_message_draft(
            self.chat_id, self.draft_id, text[:MESSAGE_LIMIT], message_thread_id=self.thread_id),
            retry_after=retry_after_or_network)

    async def status(self, status: Status) -> None:
        bot = self.adapter.app.bot
        # Chat actions are not messages: their own budget, so "typing…" never delays an answer.
        await self.adapter.limiter.call(f"act:{self.chat_id}", lambda: bot.send_chat_action(
            self.chat_id, ChatAction.TYPING, message_thread_id=self.thread_id), retry_after=retry_after_or_network)

    async def file(self, reply: FileReply) -> str:
        bot = self.adapter.app.bot
        question = self.context.reply_to
        if reply.mime in ("image/jpeg", "image/png") and question and question.isdigit():
            # a picture the bot drew on the user's photo (grounding boxes): a photo replying to the question
            to = ReplyParameters(int(question), allow_sending_without_reply=True)
            try:
                message = await self._call(lambda: bot.send_photo(
                    self.chat_id, InputFile(reply.data, filename=reply.filename),
                    caption=cut_utf16(reply.caption, CAPTION_LIMIT) or None, message_thread_id=self.thread_id,
                    reply_parameters=to), repeatable=False)
                return str(message.message_id)
            except BadRequest as exc:  # a size Telegram refuses for photos: the file itself, as a document
                log.info("Telegram refused the picture as a photo (%s): sent as a document", exc)
        message = await self._call(lambda: bot.send_document(
            self.chat_id, InputFile(reply.data, filename=reply.filename), caption=cut_utf16(reply.caption, CAPTION_LIMIT) or None,
            message_thread_id=self.thread_id), repeatable=False)
        return str(message.message_id)


class TelegramAdapter(PlatformAdapter[TelegramSettings]):
    """See the module docstring. Built by ``serve`` when ``adapters.telegram.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: TelegramSettings, *,
                 application: Application | None = None) -> None:
        super().__init__(manager, settings, conf)
        # PTB's documented opt-in: durations (RetryAfter.retry_after, ...) as datetime.timedelta, the type
        # PTB 23 will use; without it PTB warns on every 429. Read by PTB at each use, process-wide.
        os.environ.setdefault("PTB_TIMEDELTA", "true")
        token = self.secret(conf.token_env, "the bot token from @BotFather")
        self.webhook_secret = ""
        if conf.mode == "webhook":
            self.webhook_secret = self.secret(conf.webhook_secret_env, "Telegram's secret token", required=False)
            if not SECRET_TOKEN.match(self.webhook_secret):
                raise StartupError(f"adapters.telegram: webhook mode needs {conf.webhook_secret_env} set to 1-256 "
                                   "characters of A-Z, a-z, 0-9, _ and - (Telegram's secret token)")
            if not settings.server.public_url:
                raise StartupError("adapters.telegram: webhook mode needs server.public_url (the https URL Telegram "
                                   "reaches this service at)")
            public = urlsplit(settings.server.public_url)
            if public.scheme != "https" and not is_loopback_host(public.hostname or ""):
                # Telegram's setWebhook takes https URLs only (ports 443, 80, 88, 8443): a test server aside
                log.warning("adapters.telegram: server.public_url %s is not https: Telegram delivers webhooks to "
                            "https URLs only — put TLS in front of this service (a reverse proxy) and set "
                            "server.public_url to its https address", settings.server.public_url)
        self.app = application or self._application(token)
        # One group: the first handler that matches an update runs (buttons first, then everything else).
        self.app.add_handler(CallbackQueryHandler(self._on_callback))
        # new messages only: edits, channel posts and other update kinds are not for the bot
        self.app.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        self.app.add_error_handler(self._on_error)
        # Not PTB's AIORateLimiter: it retries every call the same way after a RetryAfter, and cannot tell a
        # repeatable call (an edit, a chat action) from one that may have arrived (a sendMessage that timed
        # out): those go to the outbox, never repeated here. Its per-chat buckets are the same as ours.
        self.limiter = RateLimiter(self._rates, overall=[(30, 1)])
        self.channel = Channel(PLATFORM, TelegramFetcher(self), self._sink_for, conf.persona or None,
                               retry_after=retry_after_or_network, policy=conf.policy(settings.limits),
                               endpoint=self.conf.base_url, endpoint_setting="adapters.telegram.base_url")
        self.endpoint, self.endpoint_key = self.conf.base_url, "base_url"
        self.credential_fix = "copy the bot's token from @BotFather (/mybots → your bot → API Token)"
        manager.register(self.channel)
        self.me_id = 0
        self.username = ""
        self._poller: asyncio.Task[None] | None = None
        self._albums: dict[str, asyncio.TimerHandle] = {}
        self._album_tasks: set[asyncio.Task[None]] = set()
        self._stored: dict[int, BaseException | None] = {}  # update id -> what handling it raised

    def _application(self, token: str) -> Application:
        builder: ApplicationBuilder = (Application.builder().token(token).base_url(self.conf.base_url)
                                       .base_file_url(self.conf.base_file_url).updater(None)
                                       .connect_timeout(5).read_timeout(10).write_timeout(30).pool_timeout(10)
                                       # Telegram answers a long poll within its timeout: a poll that hangs
                                       # past it (Telegram down) is given up soon, and the next one sees the
                                       # recovery. PTB adds the poll's own timeout to this one.
                                       .get_updates_read_timeout(POLL_GRACE))
        return builder.build()

    @staticmethod
    def _rates(key: str) -> Sequence[Rate]:
        # About one message a second per chat, with the short burst Telegram tolerates. Groups: 20 a minute,
        # counted over any 60 seconds; a bucket that lets 20 go at once would then stall for a minute, so
        # one every ~3 seconds instead.
        if key.startswith("-"):
            return [(1, 3.1)]
        return [(3, 3)]

    def _sink_for(self, context: SinkContext) -> StreamingRenderer:
        transport = TelegramTransport(self, context)
        interval = self.conf.edit_interval if transport.private else self.conf.group_edit_interval
        return StreamingRenderer(transport, context, min_interval=interval, keep_typing=300)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.app.initialize()
        me = self.app.bot.bot
        self.me_id, self.username = me.id, (me.username or "").lower()
        await self.app.start()
        await self._set_commands()
        await super().start()
        await self._flush_stashed_albums()
        if self.conf.mode == "webhook":
            url = self.settings.server.public_url.rstrip("/") + WEBHOOK_PATH
            await self.app.bot.set_webhook(url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES)
            log.info("Telegram webhook set to %s", url)
        else:
            await self.app.bot.delete_webhook(drop_pending_updates=False)
            store = self.manager.store
            if isinstance(store, Elector):
                # replicas: Telegram allows one long poll per bot, so one replica polls (an advisory lock in
                # PostgreSQL) and another takes over when it dies; updates it had not confirmed come again
                # and are recognised as stored
                self._poller = store.elect(f"internvl-bot telegram polling {self.me_id}", self._lead_polling)
            else:
                self._poller = asyncio.create_task(self._poll(), name="telegram polling")

    def ready_detail(self) -> str:
        return f"@{self.username}, {self.conf.mode} ({self.endpoint})"

    def refused_credentials(self, exc: BaseException) -> tuple[str, str] | None:
        if isinstance(exc, InvalidToken):  # getMe answered 401/404; its text carries the whole token
            return self.conf.token_env, "Unauthorized: the token was rejected"
        return None

    def stop_intake(self) -> None:
        super().stop_intake()
        if self._poller is not None:
            self._poller.cancel()  # a long poll in flight confirms nothing

    async def close(self) -> None:
        if self._poller is not None:
            await asyncio.gather(self._poller, return_exceptions=True)
        for handle in self._albums.values():
            handle.cancel()
        for task in list(self._album_tasks):
            task.cancel()
        await asyncio.gather(*self._album_tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            if self.app.running:
                await self.app.stop()
        with contextlib.suppress(Exception):
            await self.app.shutdown()
        await super().close()

    # -- serve --check -----------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """``getMe`` with the token; in webhook mode also ``getWebhookInfo``: Telegram delivers to
        ``server.public_url`` + ``/telegram/webhook``. Lines show the token as the variable that holds it."""
        http = self.http_client(timeout=HTTP_TIMEOUT)
        me, failed = await self._ask(http, "getMe")
        if failed is not None:
            return [failed]
        results = [CheckResult(True, PLATFORM, f"getMe at {self._where('getMe')}: the bot @{me.get('username')} "
                                               f"(id {me.get('id')}), {self.conf.mode} mode")]
        if self.conf.mode != "webhook":
            return results
        info, failed = await self._ask(http, "getWebhookInfo")
        if failed is not None:
            return [*results, failed]
        expected = self.settings.server.public_url.rstrip("/") + WEBHOOK_PATH
        url = str(info.get("url") or "")
        if url == expected:
            error = info.get("last_error_message")
            last = f"; Telegram's last delivery failed: {error!r}" if error else ""
            results.append(CheckResult(True, PLATFORM, f"getWebhookInfo: Telegram delivers to {expected} "
                                                        f"({info.get('pending_update_count', 0)} update(s) waiting{last})"))
        elif not url:
            results.append(CheckResult(False, PLATFORM, f"getWebhookInfo: no webhook set, Telegram must deliver to "
                                                        f"{expected} — start serve (it calls setWebhook at start)"))
        else:
            results.append(CheckResult(False, PLATFORM, f"getWebhookInfo: Telegram delivers to {shown(url)}, not "
                                                        f"{expected} — another deployment of this bot (serve sets "
                                                        "its own at start: stop the other, or give each a bot of "
                                                        "its own), or fix server.public_url"))
        return results

    def _where(self, method: str) -> str:
        return f"{shown(self.conf.base_url)}<{self.conf.token_env}>/{method}"

    async def _ask(self, http: httpx.AsyncClient, method: str) -> tuple[dict[str, Any], CheckResult | None]:
        """One Bot API call without parameters: its result, or the ✗ line saying what Telegram said."""
        try:
            response = await http.post(f"{self.conf.base_url}{self.app.bot.token}/{method}")
        except httpx.HTTPError as exc:
            return {}, CheckResult(False, PLATFORM, f"{method}: " + unreachable(
                self.conf.base_url, exc, "check adapters.telegram.base_url and the network"))
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("ok") is True and isinstance(body.get("result"), dict):
            return body["result"], None
        said = platform_said(response, "description")
        if isinstance(body, dict) and response.status_code == 401:
            fix = f"set {self.conf.token_env} to the bot token from @BotFather (Telegram does not know this one)"
        elif isinstance(body, dict) and response.status_code == 404:
            fix = (f"{self.conf.token_env} is not shaped like a bot token (123456:ABC…, from @BotFather), or "
                   "adapters.telegram.base_url is not the Bot API")
        else:
            fix = "check adapters.telegram.base_url (the Bot API, ending in /bot)"
        return {}, CheckResult(False, PLATFORM, f"{method} at {self._where(method)}: Telegram said {said} — {fix}")

    async def _set_commands(self) -> None:
        """The command menu, in every language the framework speaks (Telegram picks by the user's language)."""
        async def commands(lang: str) -> list[BotCommand]:
            return [BotCommand(name, i18n.text(f"cmd_{name}", lang)) for name in COMMANDS]

        try:
            await self.app.bot.set_my_commands(await commands("en"), scope=BotCommandScopeDefault())
            for lang in i18n.UI_LANGUAGES:
                if lang != "en":
                    await self.app.bot.set_my_commands(await commands(lang), scope=BotCommandScopeDefault(),
                                                       language_code=lang)
        except TelegramError as exc:
            log.warning("setting the command menu failed: %s", exc)

    # -- intake -----------------------------------------------------------------------------

    async def _lead_polling(self) -> None:
        """This replica polls now: first the albums a poller that stopped left half-collected."""
        await self.manager.store.drop_stale_stash(ALBUM_BUCKET, before=time.time() - ALBUM_KEPT_S)
        await self._flush_stashed_albums()
        await self._poll()

    async def _poll(self) -> None:
        """Long polling whose offset advances only past updates that are stored."""
        offset: int | None = None
        backoff = 1.0
        while self.accepting:
            try:
                updates = await self.app.bot.get_updates(offset=offset, timeout=self.conf.poll_timeout,
                                                         allowed_updates=ALLOWED_UPDATES)
                backoff = 1.0
            except asyncio.CancelledError:
                return
            except RetryAfter as exc:
                await asyncio.sleep(_seconds(exc.retry_after))
                continue
            except InvalidToken:
                log.error("Telegram refuses the bot token in %s: polling stopped", self.conf.token_env)
                return
            except TimedOut:
                # it has waited a whole poll already: ask again at once (nothing is hammered)
                log.warning("getUpdates timed out (Telegram did not answer within %d s): asking again",
                            self.conf.poll_timeout + POLL_GRACE)
                continue
            except (Conflict, NetworkError, TelegramError) as exc:
                log.warning("getUpdates failed (%s): retrying in %.0f s", exc, backoff)
                await asyncio.sleep(backoff)
                # short: while Telegram is down nothing comes in, and its recovery is seen within this
                backoff = min(backoff * 2, POLL_MAX_BACKOFF)
                continue
            for update in updates:
                if not await self._take(update):
                    return  # not confirmed: Telegram delivers it again to the next run
                offset = update.update_id + 1

    async def _take(self, update: Update) -> bool:
        """Store one polled update before its offset is confirmed; False when intake stops first.

        A store that fails (SQLite locked, PostgreSQL away) is retried with back-off for as long as it fails:
        confirming the offset would lose the message. Any other error is a bug in handling this one update:
        after a few tries it is logged and skipped, so one poisonous update cannot stop every chat.
        """
        delay, tries = 0.5, 0
        while self.accepting:
            try:
                await self._process(update)
                return True
            except (ShuttingDown, asyncio.CancelledError):
                return False
            except Exception as exc:
                tries += 1
                if not is_store_error(exc) and tries >= POISON_TRIES:
                    log.exception("update %d could not be handled %d times: skipped", update.update_id, tries)
                    return True
                log.warning("update %d not stored (%s: %s): retrying in %.1f s", update.update_id,
                            type(exc).__name__, exc, delay)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        return False

    async def _process(self, update: Update) -> None:
        """Through the Application's handlers; returns once the update's message is stored (or ignored)."""
        self._stored[update.update_id] = None
        try:
            await self.app.process_update(update)
            error = self._stored.get(update.update_id)
        finally:
            self._stored.pop(update.update_id, None)
        if error is not None:
            raise error

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self.handle_message(update)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """PTB's error handler: what a handler raised is kept for :meth:`_process` (polling does not move the
        offset past it, the webhook answers 500); PTB alone would only log it."""
        if isinstance(update, Update) and update.update_id in self._stored:
            self._stored[update.update_id] = context.error
        else:
            log.error("a Telegram update could not be handled: %s", context.error)

    async def webhook(self, request: Request) -> Response:
        """``POST /telegram/webhook``: verified by the secret header (the route's dependency), stored, 200."""
        if not self.accepting:
            return self.restarting()
        data = parse_json_object(await read_body(request, max_bytes=2_000_000), what="the update")
        try:
            update = Update.de_json(data, self.app.bot)
        except Exception as exc:
            return JSONResponse({"error": f"not a Telegram update ({type(exc).__name__})"}, status_code=400)
        if update is None:
            return JSONResponse({"error": "not a Telegram update"}, status_code=400)
        try:
            await self._process(update)
        except ShuttingDown:
            return self.restarting()
        except Exception:
            log.exception("update %d could not be handled", update.update_id)
            return JSONResponse({"error": "not handled"}, status_code=500)
        return Response(status_code=200)

    def router(self) -> APIRouter | None:
        if self.conf.mode != "webhook":
            return None
        r = APIRouter()
        r.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False,
                        dependencies=[Depends(SharedSecret(self.conf.webhook_secret_env, header=SECRET_HEADER,
                                                           status_code=401))])
        return r

    # -- messages ---------------------------------------------------------------------------

    def key(self, message: Message) -> ConversationKey:
        thread = message.message_thread_id if message.chat.is_forum and message.is_topic_message else None
        return ConversationKey(PLATFORM, str(message.chat.id), str(thread) if thread else "")

    def _addressed(self, message: Message) -> tuple[bool, str]:
        """Is a group message for the bot? And its text without the bot's mention."""
        text = message.text or message.caption or ""
        entities = message.entities or message.caption_entities or ()
        if message.chat.type == ChatType.PRIVATE:
            return True, text
        addressed = False
        cut: list[tuple[int, int]] = []
        for entity in entities:
            piece = message.parse_entity(entity) if message.text else message.parse_caption_entity(entity)
            if (entity.type == MessageEntityType.MENTION and piece.lower() == f"@{self.username}") or (entity.type == MessageEntityType.TEXT_MENTION and entity.user and entity.user.id == self.me_id):
                addressed = True
                cut.append((entity.offset, entity.length))
            elif entity.type == MessageEntityType.BOT_COMMAND and entity.offset == 0:
                name, _, target = piece.partition("@")
                if name.lstrip("/").lower() in COMMANDS and (not target or target.lower() == self.username):
                    addressed = True
        reply = message.reply_to_message
        if reply is not None and reply.from_user is not None and reply.from_user.id == self.me_id:
            addressed = True
        lowered = text.lower()
        if any(word.lower() in lowered for word in self.conf.trigger_words if word):
            addressed = True
        if cut:
            # Offsets are in UTF-16 units: cut in that encoding.
            raw = text.encode("utf-16-le")
            for offset, length in sorted(cut, reverse=True):
                raw = raw[: offset * 2] + raw[(offset + length) * 2:]
            text = re.sub(r"[ \t]{2,}", " ", raw.decode("utf-16-le"))
        return addressed, text.strip()

    @staticmethod
    def attachments(message: Message) -> list[Attachment]:
        """What the message carries, from its metadata (nothing is downloaded here)."""
        out: list[Attachment] = []
        if message.photo:
            largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
            out.append(Attachment(largest.file_id, f"photo-{message.message_id}.jpg", "image/jpeg", largest.file_size))
        document = message.document if message.animation is None else None
        if document is not None:
            out.append(Attachment(document.file_id, document.file_name or f"document-{message.message_id}",
                                  document.mime_type or "", document.file_size))
        for video, name in ((message.video, "video"), (message.video_note, "video-note"), (message.animation, "gif")):
            if video is not None:
                filename = getattr(video, "file_name", None) or f"{name}-{message.message_id}.mp4"
                out.append(Attachment(video.file_id, filename, getattr(video, "mime_type", None) or "video/mp4",
                                      video.file_size))
        if message.voice is not None:
            out.append(Attachment(_UNSUPPORTED + "voice message", "voice", "audio/ogg", message.voice.file_size))
        if message.audio is not None:
            out.append(Attachment(_UNSUPPORTED + "audio", message.audio.file_name or "audio", "audio/mpeg",
                                  message.audio.file_size))
        if message.sticker is not None:
            out.append(Attachment(_UNSUPPORTED + "sticker", "sticker", "image/webp", message.sticker.file_size))
        return out

    def _incoming(self, message: Message, text: str, attachments: Sequence[Attachment], event_id: str,
                  update: Update | None) -> IncomingMessage:
        user = message.from_user
        assert user is not None
        return IncomingMessage(
            key=self.key(message), sender=Sender(str(user.id), display_name(user), is_bot=user.is_bot), text=text,
            attachments=tuple(attachments), locale=user.language_code, event_id=event_id,
            message_id=str(message.message_id), is_direct=message.chat.type == ChatType.PRIVATE,
            route={"chat_type": str(message.chat.type)}, raw=update,
        )

    async def handle_message(self, update: Update) -> None:
        """One update: ignored, stashed (an album's part) or stored as a message. Returns once stored."""
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return  # edits, channel posts, service messages, other bots
        if message.media_group_id:
            bucket = f"{ALBUM_BUCKET}{message.chat.id}:{message.media_group_id}"
            await self.manager.store.stash(bucket, f"{message.message_id:012d}", json.dumps(update.to_dict()))
            self._schedule_album(bucket)
            return
        addressed, text = self._addressed(message)
        if not addressed:
            return
        attachments = self.attachments(message)
        if not text and not attachments:
            return  # a bare service message (a member joined, a pinned message)
        conversation_var.set(str(self.key(message)))
        await self.manager.submit(self._incoming(message, text, attachments, f"{message.chat.id}:{message.message_id}",
                                                 update))

    # -- albums -----------------------------------------------------------------------------

    def _schedule_album(self, bucket: str) -> None:
        handle = self._albums.pop(bucket, None)
        if handle is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._albums[bucket] = loop.call_later(self.conf.album_debounce, self._start_flush, bucket)

    def _start_flush(self, bucket: str) -> None:
        self._albums.pop(bucket, None)
        task = asyncio.create_task(self._flush_album(bucket))
        self._album_tasks.add(task)
        task.add_done_callback(self._album_tasks.discard)

    async def _flush_stashed_albums(self) -> None:
        """Albums a previous run stashed but did not finish: finished now (after the usual wait)."""
        for bucket in await self.manager.store.stashed(ALBUM_BUCKET):
            self._schedule_album(bucket)

    async def _flush_album(self, bucket: str) -> None:
        """The parts of one album: one message, its caption (from whichever part had it) and every file.

        A part that arrives after the album was handed over (Telegram spreads an album's updates over
        seconds; a redelivery comes later still) becomes a follow-up turn that says so. What was handed over
        is remembered in the bucket (``done:`` pieces, purged with the bucket after a day), so a redelivered
        part is not answered twice; only the pieces read here are dropped, never one stashed meanwhile.
        """
        store = self.manager.store
        parts = (await store.stashed(bucket)).get(bucket, [])
        done = [json.loads(payload) for item, payload in parts if item.startswith(ALBUM_DONE)]
        handled = {i for marker in done for i in marker["items"]}
        pending = sorted((item, payload) for item, payload in parts
                         if not item.startswith(ALBUM_DONE) and item not in handled)
        stale = [item for item, _ in parts if not item.startswith(ALBUM_DONE) and item in handled]
        if not pending:
            if stale:
                await store.drop_stash(bucket, stale)
            return
        updates = [Update.de_json(json.loads(payload), self.app.bot) for _, payload in pending]
        messages = [u.message for u in updates if u is not None and u.message is not None]
        marker: dict[str, Any] = {"items": [item for item, _ in pending]}
        if messages:
            marker["addressed"] = await self._submit_album(messages, updates[0], done)
            if marker["addressed"] is None:
                return  # shutting down: the stash stays, the next start finishes the album
        await store.stash(bucket, f"{ALBUM_DONE}{pending[0][0]}", json.dumps(marker))
        await store.drop_stash(bucket, [item for item, _ in pending] + stale)

    async def _submit_album(self, messages: list[Message], update: Update | None,
                            done: list[dict[str, Any]]) -> bool | None:
        """Store the album's parts as one message; whether it was for the bot (None: shutting down)."""
        captioned = next((m for m in messages if m.caption), messages[0])
        addressed, text = self._addressed(captioned)
        first = messages[0]
        event_id = f"album:{first.chat.id}:{first.media_group_id}"
        if done:  # late parts of an album already handed over: addressed as the album was
            addressed = addressed or any(marker.get("addressed") for marker in done)
            conv = await self.manager.store.conversation(self.key(first))  # the language the user writes in
            lang = conv.language or conv.last_language or i18n.normalize_code(
                first.from_user.language_code if first.from_user else None) or "en"
            text = " ".join(p for p in (i18n.text("album_late_part", lang), text) if p)
            event_id = f"{event_id}:{first.message_id}"
        if not addressed:
            return False
        attachments = [a for m in messages for a in self.attachments(m)]
        try:
            await self.manager.submit(self._incoming(captioned, text, attachments, event_id, update))
        except ShuttingDown:
            return None
        return True

    # -- buttons ----------------------------------------------------------------------------

    async def _on_callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.message is None or query.from_user is None:
            return
        message = query.message
        assert isinstance(message, Message)
        key = self.key(message)
        user = query.from_user
        # the toast speaks the conversation's language (the user's latest message's), not Telegram's
        # language_code: a user whose app is in Portuguese but who writes English reads English
        conv = await self.manager.store.conversation(key)
        lang = conv.language or conv.last_language or i18n.normalize_code(user.language_code) or "en"
        sender = Sender(str(user.id), display_name(user), is_bot=user.is_bot)
        answer_text: str | None = None
        try:
            if query.data == "regen":
                await self.manager.regenerate(key, str(message.message_id), sender=sender,
                                              event_id=f"cb:{query.id}", locale=user.language_code)
                answer_text = i18n.text("regenerating", lang)
            elif query.data == "reset":
                await self.manager.submit(IncomingMessage(
                    key, sender, "/reset", locale=user.language_code, event_id=f"cb:{query.id}",
                    is_direct=message.chat.type == ChatType.PRIVATE, route={"chat_type": str(message.chat.type)}))
            elif query.data in ("fb:up", "fb:down"):
                answer_text = await self._feedback(query.data[3:], key, message, sender, f"cb:{query.id}", lang)
        except NoSuchConversation:
            answer_text = i18n.text("regenerate_gone", lang)
        finally:  # the button stops spinning whatever happened; an error goes on to _on_error
            with contextlib.suppress(TelegramError):
                await self.limiter.call(f"cb:{message.chat.id}", lambda: query.answer(answer_text),
                                        retry_after=retry_after_or_network)


    async def _feedback(self, rating: str, key: ConversationKey, message: Message, sender: Sender, event_id: str,
                        lang: str) -> str:
        """👍/👎 under an answer: recorded once (a redelivered press has the same query id), the pair becomes a
        "thanks" button, and a 👎 asks once what was wrong (the user's next message is its comment). Returns
        the toast."""
        feedback = self.manager.feedback
        answer = await feedback.answer_for(key, str(message.message_id))
        if answer is None:
            return i18n.text("feedback_gone", lang)
        fid = await feedback.record(answer, "up" if rating == "up" else "down", user=sender.id, event_id=event_id)
        if fid is None:
            return i18n.text("feedback_thanks", lang)  # redelivered: recorded and answered the first time
        rows: list[list[InlineKeyboardButton]] = [
            [InlineKeyboardButton(i18n.text("btn_feedback_thanks", lang), callback_data=FEEDBACK_DONE)]]
        keeps_actions = any(b.callback_data == "regen" for row in (message.reply_markup.inline_keyboard
                                                                   if message.reply_markup else ()) for b in row)
        if keeps_actions:
            rows.append(action_buttons(lang))
        bot = self.app.bot
        with contextlib.suppress(BadRequest, Forbidden):  # the message was deleted meanwhile: nothing to change
            await self.limiter.call(str(message.chat.id), lambda: bot.edit_message_reply_markup(
                message.chat.id, message.message_id, reply_markup=InlineKeyboardMarkup(rows)),
                retry_after=retry_after_or_network)
        if rating == "down":
            await feedback.ask_comment(key, sender.id, fid)
            await self.manager.deliver_notice(key, Notice(i18n.text("feedback_ask_comment", lang)))
        return i18n.text("feedback_thanks", lang)
