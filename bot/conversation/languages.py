"""The answer language of a message: the language the user pinned, else the one of their text, the locale their
platform gives (looked up on the channel when the message came without one, waited for a second at most), and
the conversation's previous language — :func:`bot.l10n.language.choose_language` decides. The conversation
manager holds one (``manager.languages``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from bot.config import ConversationSettings
from bot.l10n.language import LanguageDetector, choose_language
from bot.seams import Channel
from bot.store import Conversation, Store, StoredMessage
from bot.types import was_cut

log = logging.getLogger(__name__)

LOCALE_WAIT = 1.0  # seconds a turn waits for the platform to say the sender's locale


class LanguageChooser:
    """See the module docstring. ``channels``: the manager's registered channels by platform (the same
    mapping: a channel registered later is looked up too)."""

    def __init__(self, conf: ConversationSettings, store: Store, detector: LanguageDetector,
                 channels: Mapping[str, Channel]) -> None:
        self.conf = conf
        self.store = store
        self.detector = detector
        self.channels = channels

    async def language_for(self, msg: StoredMessage) -> str:
        """The answer language of ``msg``, stored as its conversation's last language when it changed."""
        lang, conv = await self.choose(msg)
        if lang != conv.last_language:
            await self.store.update_conversation(msg.key, last_language=lang)
        return lang

    async def choose(self, msg: StoredMessage) -> tuple[str, Conversation]:
        """The answer language of ``msg`` and its conversation as read (nothing is stored)."""
        conv = await self.store.conversation(msg.key)
        text = "" if msg.kind == "command" else msg.text
        if was_cut(text):  # the marker is English: the language is the user's text's
            text = text.rsplit("\n[… cut:", 1)[0]
        lang = choose_language(
            self.detector, text, pinned=conv.language, locale_hint=await self._locale_of(msg),
            previous=conv.last_language,
            default=self.conf.default_language, short_text_chars=self.conf.short_text_chars,
        )
        return lang, conv

    async def _locale_of(self, msg: StoredMessage) -> str | None:
        """The locale the platform gave with the message, or the one its channel looks up now."""
        if msg.locale or not msg.sender_id:
            return msg.locale
        lookup = self.channels[msg.key.platform].locale_of if msg.key.platform in self.channels else None
        if lookup is None:
            return None
        task = asyncio.ensure_future(lookup(msg.sender_id))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an error after we stopped waiting
        try:
            # a hint only: a platform slow to say (rate-limited after an outage) does not hold the turn; the
            # lookup goes on and its answer is there for the user's next message
            return await asyncio.wait_for(asyncio.shield(task), LOCALE_WAIT)
        except TimeoutError:
            log.info("the locale of %s is not known yet: the text decides the language", msg.sender_id)
            return None
        except Exception as exc:  # the text and the conversation decide without it
            log.info("looking up the locale of %s failed: %s", msg.sender_id, exc)
            return None
