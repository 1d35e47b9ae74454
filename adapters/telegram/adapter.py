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
import logging
import os
import re
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from telegram import BotCommand, BotCommandScopeDefault, Message, Update
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.error import Conflict, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from adapters.common.auth import SharedSecret
from adapters.common.base import PlatformAdapter
from adapters.common.http import parse_json_object, read_body
from adapters.common.ratelimit import Rate, RateLimiter
from adapters.common.renderer import StreamingRenderer
from adapters.common.urlguard import is_loopback_host
from adapters.telegram import PLATFORM, SECRET_TOKEN, WEBHOOK_PATH, TelegramSettings
from adapters.telegram.albums import ALBUM_BUCKET, ALBUM_KEPT_S, Albums
from adapters.telegram.buttons import Buttons
from adapters.telegram.check import check as check_bot
from adapters.telegram.transport import (
    UNSUPPORTED,
    TelegramFetcher,
    TelegramTransport,
    display_name,
    retry_after,
    retry_after_or_network,
    seconds,
)
from bot.config import Settings
from bot.conversation.commands import COMMANDS
from bot.conversation.manager import ConversationManager
from bot.errors import ShuttingDown, StartupError
from bot.l10n import i18n
from bot.ops.checks import CheckResult
from bot.ops.logs import conversation_var
from bot.seams import Channel, Elector
from bot.store import is_store_error
from bot.types import Attachment, ConversationKey, IncomingMessage, Sender, SinkContext

log = logging.getLogger(__name__)

POLL_GRACE = 2  # seconds a long poll may take beyond its timeout before it counts as hanging (then: asked again)
POLL_MAX_BACKOFF = 4.0  # seconds between two getUpdates while they fail at once (5xx, refused)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "callback_query"]
POISON_TRIES = 5  # an update failing this often for another reason than the store is skipped


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
        self.buttons = Buttons(self)
        self.app.add_handler(CallbackQueryHandler(self.buttons.on_press))
        # The framework's commands (/help, /reset, …; /help@thisbot in groups, not another bot's), as PTB
        # recognises them; then every other new message (edits, channel posts and other update kinds are not for
        # the bot). Both hand the update to one intake: the core runs a command the same way on every platform,
        # and a command in a photo's caption (PTB reads commands in text only) is found there.
        self.app.add_handler(CommandHandler(list(COMMANDS), self._on_message, filters=filters.UpdateType.MESSAGE))
        self.app.add_handler(MessageHandler(filters.UpdateType.MESSAGE, self._on_message))
        self.app.add_error_handler(self._on_error)
        # Not PTB's AIORateLimiter: it retries every call the same way after a RetryAfter, and cannot tell a
        # repeatable call (an edit, a chat action) from one that may have arrived (a sendMessage that timed
        # out): those go to the outbox, never repeated here. Its per-chat buckets are the same as ours.
        self.limiter = RateLimiter(self._rates, overall=[(30, 1)])
        self.channel = Channel(PLATFORM, TelegramFetcher(self), self._sink_for, conf.persona or None,
                               retry_after=retry_after_or_network, policy=conf.policy(settings.limits),
                               endpoint=self.conf.base_url, endpoint_setting="adapters.telegram.base_url",
                               probe=self._probe)
        self.endpoint, self.endpoint_key = self.conf.base_url, "base_url"
        self.credential_fix = "copy the bot's token from @BotFather (/mybots → your bot → API Token)"
        manager.register(self.channel)
        self.me_id = 0
        self.username = ""
        self._poller: asyncio.Task[None] | None = None
        self.albums = Albums(self)
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

    async def _probe(self, key: ConversationKey) -> None:
        """The outbox's probe while Telegram is down: a "typing…" in the chat of a kept reply. A kept reply
        cannot be the probe here: a sendMessage that hangs may have arrived, and Telegram has nothing to look
        an earlier copy up with, so every hung probe would show twice."""
        thread = int(key.thread) if key.thread else None
        await self.limiter.call(f"act:{key.chat}", lambda: self.app.bot.send_chat_action(
            int(key.chat), ChatAction.TYPING, message_thread_id=thread), retry_after=retry_after)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.app.initialize()
        me = self.app.bot.bot
        self.me_id, self.username = me.id, (me.username or "").lower()
        await self.app.start()
        await self._set_commands()
        await super().start()
        await self.albums.resume()
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
        await self.albums.close()
        with contextlib.suppress(Exception):
            if self.app.running:
                await self.app.stop()
        with contextlib.suppress(Exception):
            await self.app.shutdown()
        await super().close()

    async def check(self) -> list[CheckResult]:
        """``getMe`` with the token; in webhook mode also ``getWebhookInfo`` (adapters/telegram/check.py)."""
        return await check_bot(self)

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
        await self.albums.resume()
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
                await asyncio.sleep(seconds(exc.retry_after))
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

    def addressed(self, message: Message) -> tuple[bool, str]:
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
            out.append(Attachment(UNSUPPORTED + "voice message", "voice", "audio/ogg", message.voice.file_size))
        if message.audio is not None:
            out.append(Attachment(UNSUPPORTED + "audio", message.audio.file_name or "audio", "audio/mpeg",
                                  message.audio.file_size))
        if message.sticker is not None:
            out.append(Attachment(UNSUPPORTED + "sticker", "sticker", "image/webp", message.sticker.file_size))
        return out

    def incoming(self, message: Message, text: str, attachments: Sequence[Attachment], event_id: str,
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
            await self.albums.add(message, update)
            return
        addressed, text = self.addressed(message)
        if not addressed:
            return
        attachments = self.attachments(message)
        if not text and not attachments:
            return  # a bare service message (a member joined, a pinned message)
        conversation_var.set(str(self.key(message)))
        await self.manager.submit(self.incoming(message, text, attachments, f"{message.chat.id}:{message.message_id}",
                                                 update))
