"""The buttons under Telegram answers: Regenerate, New conversation, and 👍/👎 feedback."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import ContextTypes

from adapters.telegram.transport import FEEDBACK_DONE, action_buttons, display_name, retry_after_or_network
from bot.errors import NoSuchConversation
from bot.l10n import i18n
from bot.types import ConversationKey, IncomingMessage, Notice, Sender

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter

log = logging.getLogger(__name__)


class Buttons:
    """Presses of the inline buttons (PTB's ``CallbackQueryHandler`` calls :meth:`on_press`)."""

    def __init__(self, adapter: TelegramAdapter) -> None:
        self.adapter = adapter

    async def on_press(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.message is None or query.from_user is None:
            return
        message = query.message
        assert isinstance(message, Message)
        key = self.adapter.key(message)
        user = query.from_user
        # the toast speaks the conversation's language (the user's latest message's), not Telegram's
        # language_code: a user whose app is in Portuguese but who writes English reads English
        conv = await self.adapter.manager.store.conversation(key)
        lang = conv.language or conv.last_language or i18n.normalize_code(user.language_code) or "en"
        sender = Sender(str(user.id), display_name(user), is_bot=user.is_bot)
        answer_text: str | None = None
        try:
            if query.data == "regen":
                await self.adapter.manager.regenerate(key, str(message.message_id), sender=sender,
                                              event_id=f"cb:{query.id}", locale=user.language_code)
                answer_text = i18n.text("regenerating", lang)
            elif query.data == "reset":
                await self.adapter.manager.submit(IncomingMessage(
                    key, sender, "/reset", locale=user.language_code, event_id=f"cb:{query.id}",
                    is_direct=message.chat.type == ChatType.PRIVATE, route={"chat_type": str(message.chat.type)}))
            elif query.data in ("fb:up", "fb:down"):
                answer_text = await self._feedback(query.data[3:], key, message, sender, f"cb:{query.id}", lang)
        except NoSuchConversation:
            answer_text = i18n.text("regenerate_gone", lang)
        finally:  # the button stops spinning whatever happened; an error goes on to _on_error
            with contextlib.suppress(TelegramError):
                await self.adapter.limiter.call(f"cb:{message.chat.id}", lambda: query.answer(answer_text),
                                        retry_after=retry_after_or_network)

    async def _feedback(self, rating: str, key: ConversationKey, message: Message, sender: Sender, event_id: str,
                        lang: str) -> str:
        """👍/👎 under an answer: recorded once (a redelivered press has the same query id), the pair becomes a
        "thanks" button, and a 👎 asks once what was wrong (the user's next message is its comment). Returns
        the toast."""
        feedback = self.adapter.manager.feedback
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
        bot = self.adapter.app.bot
        with contextlib.suppress(BadRequest, Forbidden):  # the message was deleted meanwhile: nothing to change
            await self.adapter.limiter.call(str(message.chat.id), lambda: bot.edit_message_reply_markup(
                message.chat.id, message.message_id, reply_markup=InlineKeyboardMarkup(rows)),
                retry_after=retry_after_or_network)
        if rating == "down":
            await feedback.ask_comment(key, sender.id, fid)
            await self.adapter.manager.deliver_notice(key, Notice(i18n.text("feedback_ask_comment", lang)))
        return i18n.text("feedback_thanks", lang)

