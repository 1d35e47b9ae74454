"""What one Telegram turn sends and fetches: the streamed messages (drafts in private chats, else one message
edited), the formatted final text with its buttons, files and pictures, and the downloads of what users send;
with the Bot API's limits and error wordings they need. Every call goes through the adapter's rate limiter.
"""

from __future__ import annotations

import contextlib
import datetime as dtm
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from telegram import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Message,
    MessageEntity,
    ReplyParameters,
    User,
)
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from adapters.common.markdown import TelegramFormat, cut_utf16, utf16_len
from adapters.common.renderer import MessageGone
from bot.errors import AttachmentUnavailable, AudioNotSupported, FileTooLarge, StickerNotSupported
from bot.l10n import i18n
from bot.types import Attachment, FileReply, SinkContext, Status

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter

log = logging.getLogger(__name__)

T = TypeVar("T")
#: The cloud Bot API's getFile limit.
BOT_API_DOWNLOAD_LIMIT = 20 * 1024 * 1024
CAPTION_LIMIT = 1024  # UTF-16 code units, as Telegram counts
MESSAGE_LIMIT = 4096
#: An attachment's ref for what the bot cannot read (voice, audio, stickers): refused before any download.
UNSUPPORTED = "unsupported:"
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


def seconds(value: int | float | dtm.timedelta) -> float:
    """A duration PTB gives as seconds or (``PTB_TIMEDELTA``) a timedelta, in seconds."""
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def retry_after(exc: BaseException) -> float | None:
    """How long Telegram asked us to wait (a 429), or None for any other error."""
    if isinstance(exc, RetryAfter):
        return max(1.0, seconds(exc.retry_after))
    return None


def retry_after_or_network(exc: BaseException) -> float | None:
    """For calls that are safe to repeat (edits, drafts, chat actions, deletes): a network error too."""
    if isinstance(exc, RetryAfter):
        return max(1.0, seconds(exc.retry_after))
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
        if attachment.ref.startswith(UNSUPPORTED):
            kind = attachment.ref.removeprefix(UNSUPPORTED)
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

