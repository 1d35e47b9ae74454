"""The handoff desk: moving a conversation between the assistant and people.

A user asks for a person (``/human``, a button, "I want to talk to someone"), or an operator takes a
conversation over; from then on the bot keeps the user's messages (``held``) and passes them on, but does
not answer, until the user sends ``/bot`` or an operator gives the conversation back. The mode changes
at intake, so a message sent right after the request already goes to the person. Every change is told to
the user as a :class:`~bot.types.HandoffUpdate` and to people through the notifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine

from cachetools import LRUCache

from bot.conversation.commands import with_prefix
from bot.conversation.turn import Turn
from bot.handoff.notifiers import Notifiers
from bot.l10n import i18n
from bot.media.attachments import AttachmentResolver
from bot.ops.logs import conversation_var
from bot.ops.metrics import Metrics
from bot.scheduling.scheduler import Scheduler
from bot.seams import Channel
from bot.store import Conversation, Store, StoredMessage
from bot.types import ConversationKey, HandoffEvent, HandoffUpdate, Notice, ReplyEvent, strip_controls

log = logging.getLogger(__name__)

#: Messages of the conversation sent along with a handoff, so the person sees what came before.
HANDOFF_TRANSCRIPT = 20

#: Sends an event to a conversation outside any turn (an operator's message); returns the stored message id.
Deliver = Callable[[ConversationKey, ReplyEvent], Awaitable[int]]


def say(channel: Channel, key: str, lang: str) -> str:
    """A handoff text as true on ``channel``: commands with its prefix (``!bot`` on Slack), and no offer of
    ``/bot`` where the platform does not let the user take the conversation back."""
    if not channel.user_returns and key in ("handoff_started", "handoff_already"):
        key = f"{key}_no_return"
    return with_prefix(i18n.text(key, lang), channel.command_prefixes[0])


class HandoffDesk:
    """See the module docstring."""

    def __init__(self, store: Store, notifiers: Notifiers, metrics: Metrics, resolver: AttachmentResolver,
                 scheduler: Scheduler, deliver: Deliver, default_language: str,
                 settle: Callable[[int, str], None] = lambda message_id, state: None) -> None:
        self.store = store
        self.notifiers = notifiers
        self.metrics = metrics
        self.resolver = resolver
        self.scheduler = scheduler
        self.deliver = deliver
        self.settle = settle  # tells whoever waits on a message that it reached its final state
        self.default_language = default_language
        # message id -> did /human or /bot change the mode? (settled ones are popped; bounded for the rest)
        self._changed: LRUCache[int, bool] = LRUCache(maxsize=10_000)
        self._background: set[asyncio.Task[None]] = set()
        self._waiting: OrderedDict[ConversationKey, None] = OrderedDict()

    # -- at intake ------------------------------------------------------------------------

    async def switch_at_intake(self, msg_id: int, conv: Conversation, want: str) -> None:
        """``/human``, ``/bot`` or a plain request: the mode changes now, not when the lane reaches the
        message, so what the user sends next already goes to the person (or back to the bot)."""
        self._changed[msg_id] = conv.mode != want
        if conv.mode != want:
            await self.store.update_conversation(conv.key, mode=want,
                                                 handoff_at=time.time() if want == "human" else None)

    def hold(self, msg: StoredMessage, channel: Channel, lang: str, on_done: Callable[[], None]) -> None:
        """A message that arrived while a person has the conversation: kept, passed on, not answered."""
        self.metrics.held_messages.inc()

        async def keep() -> None:
            conversation_var.set(str(msg.key))
            try:
                names = await self.resolver.keep(msg, channel)
                text = "\n".join([msg.text, *(f"[{n}]" for n in names)]).strip()
                await self.notifiers.notify(HandoffEvent("message", str(msg.key), msg.key.platform, lang, text=text,
                                                         user=msg.sender_name or msg.sender_id))
                if not channel.reaches_people and msg.key in self._waiting:
                    await self.deliver(msg.key, Notice(i18n.text("handoff_passed_on", lang)))
            except Exception:
                log.exception("passing message %d on to the person failed", msg.id)
            finally:
                on_done()

        self.spawn(keep())

    def _wait(self, key: ConversationKey, waiting: bool) -> None:
        """Conversations whose user asked for a person nobody has answered yet: their messages get a receipt
        (once a person writes, takes over or the platform moves it, the user knows someone is there)."""
        if waiting:
            self._waiting[key] = None
            while len(self._waiting) > 10_000:
                self._waiting.popitem(last=False)
        else:
            self._waiting.pop(key, None)

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def background(self) -> set[asyncio.Task[None]]:
        return self._background

    def forget(self, msg_id: int) -> None:
        self._changed.pop(msg_id, None)

    # -- in a turn ------------------------------------------------------------------------

    def available(self, channel: Channel) -> bool:
        """Whether a handoff on ``channel`` reaches a person (a notifier that does, or the platform's own)."""
        return channel.reaches_people or self.notifiers.reaches_people

    async def request(self, turn: Turn, reason: str = "user") -> None:
        """A person is needed — the user asked, or the persona's policy says so: tell the user, pass the
        conversation on. ``reason``: ``user``, ``policy: <keyword>``. When nobody can be reached, the user
        hears that, and the assistant keeps the conversation."""
        msg = turn.msg
        if not self.available(turn.channel):
            self._changed.pop(msg.id, None)
            await turn.reply(HandoffUpdate("unavailable", "bot", self._say(turn, "handoff_unavailable"),
                                           reason=reason.split(":")[0]))
            return
        if self._changed.pop(msg.id, True):
            await self.resolver.keep(msg, turn.channel)
            await self._pass_on(turn, reason)
            self._wait(msg.key, True)
            text = self._say(turn, "handoff_policy" if reason.startswith("policy") else "handoff_started")
            update = HandoffUpdate("requested", "human", text, reason=reason.split(":")[0])
        else:
            update = HandoffUpdate("already", "human", self._say(turn, "handoff_already"))
        await turn.reply(update)

    async def _pass_on(self, turn: Turn, reason: str) -> None:
        msg, lang = turn.msg, turn.lang
        rows = await self.store.transcript(msg.key, limit=HANDOFF_TRANSCRIPT)
        transcript = [{"role": r.role, "text": r.text, "author": r.sender_name} for r in rows
                      if r.kind != "command" and (r.id != msg.id or reason == "model")]
        await self.notifiers.notify(HandoffEvent(
            "requested", str(msg.key), msg.key.platform, lang, text=msg.text, user=msg.sender_name or msg.sender_id,
            transcript=transcript, reason=reason))
        self.metrics.adapter(msg.key.platform).handoffs.inc()

    async def model_gave_up(self, turn: Turn) -> None:
        """The model ended its (already delivered) answer saying a person is needed: the conversation goes to
        a person, and the user is told after the answer."""
        conv = await self.store.conversation(turn.msg.key)
        if conv.mode == "human" or not self.available(turn.channel):
            return
        await self.store.update_conversation(conv.key, mode="human", handoff_at=time.time())
        self._wait(conv.key, True)
        await self._pass_on(turn, "model")
        with contextlib.suppress(Exception):
            await turn.say(HandoffUpdate("requested", "human", self._say(turn, "handoff_model"), reason="model"))

    @staticmethod
    def _say(turn: Turn, key: str) -> str:
        return say(turn.channel, key, turn.lang)

    async def to_people(self, key: ConversationKey, lang: str, *, reason: str) -> bool:
        """The bot cannot go on with this conversation (its replies cannot be posted): people take it, the
        way a request for a person does. False when people have it already."""
        conv = await self.store.conversation(key)
        if conv.mode == "human":
            return False
        await self.store.update_conversation(key, mode="human", handoff_at=time.time())
        for queued in await self.scheduler.cancel(key):
            await self.store.set_state(queued.id, "held")
            self.settle(queued.id, "held")
        self._wait(key, True)
        rows = await self.store.transcript(key, limit=HANDOFF_TRANSCRIPT)
        await self.notifiers.notify(HandoffEvent(
            "requested", str(key), key.platform, lang, transcript=[
                {"role": r.role, "text": r.text, "author": r.sender_name} for r in rows if r.kind != "command"],
            reason=reason))
        self.metrics.adapter(key.platform).handoffs.inc()
        return True

    async def back_to_bot(self, turn: Turn) -> None:
        """``/bot``: the user wants the assistant again."""
        msg, lang = turn.msg, turn.lang
        self._wait(msg.key, False)
        if self._changed.pop(msg.id, True):
            await self.notifiers.notify(HandoffEvent("returned", str(msg.key), msg.key.platform, lang, by="user",
                                                     user=msg.sender_name or msg.sender_id))
            update = HandoffUpdate("returned", "bot", self._say(turn, "handoff_ended"))
        else:
            update = HandoffUpdate("not_active", "bot", self._say(turn, "handoff_not_active"))
        await turn.reply(update)

    # -- operators ------------------------------------------------------------------------

    def _language(self, conv: Conversation) -> str:
        return conv.language or conv.last_language or self.default_language

    async def hand_back(self, key: ConversationKey, *, by: str = "operator") -> bool:
        """An operator gives the conversation back to the bot; the user is told. False if it was not handed off."""
        conv = await self.store.conversation(key)
        self._wait(key, False)
        if conv.mode != "human":
            return False
        await self.store.update_conversation(key, mode="bot", handoff_at=None)
        lang = self._language(conv)
        await self.notifiers.notify(HandoffEvent("returned", str(key), key.platform, lang, by=by))
        await self.deliver(key, HandoffUpdate("returned", "bot", i18n.text("handoff_ended", lang), by=by))
        return True

    async def set_mode(self, key: ConversationKey, mode: str, *, by: str) -> bool:
        """The platform moved the conversation itself (a helpdesk agent opened it, or set it back to the
        bot): the mode follows, nothing is said to the user. False if it was in that mode already."""
        conv = await self.store.conversation(key)
        self._wait(key, False)
        if conv.mode == mode:
            return False
        if mode == "human":
            for queued in await self.scheduler.cancel(key):
                await self.store.set_state(queued.id, "held")
                self.settle(queued.id, "held")
        await self.store.update_conversation(key, mode=mode, handoff_at=time.time() if mode == "human" else None)
        await self.notifiers.notify(HandoffEvent("taken" if mode == "human" else "returned", str(key), key.platform,
                                                 self._language(conv), by=by))
        return True

    async def take_over(self, key: ConversationKey, *, by: str) -> bool:
        """An operator takes a conversation the bot is handling: the answer in progress stops, queued
        messages are kept for the person, the user is told who joined. False if a person had it already."""
        conv = await self.store.conversation(key)
        self._wait(key, False)
        if conv.mode == "human":
            return False
        now = time.time()
        await self.store.update_conversation(key, mode="human", handoff_at=now, operator=by, operator_at=now)
        for queued in await self.scheduler.cancel(key):
            await self.store.set_state(queued.id, "held")
            self.settle(queued.id, "held")
        lang = self._language(conv)
        await self.notifiers.notify(HandoffEvent("taken", str(key), key.platform, lang, by=by))
        self.metrics.adapter(key.platform).handoffs.inc()
        await self.deliver(key, HandoffUpdate("taken", "human", i18n.text("handoff_taken", lang, name=by), by=by,
                                              reason="operator"))
        return True

    async def operator_reply(self, key: ConversationKey, text: str, *, author: str) -> int:
        """A person's answer: stored and sent to the user as theirs."""
        text = strip_controls(text).strip()
        if not text:
            raise ValueError("an operator reply needs text")
        self._wait(key, False)
        author = strip_controls(author).strip()
        # the inbox shows the conversation as this person's from now on (until the next handoff)
        await self.store.update_conversation(key, operator=author, operator_at=time.time())
        return await self.deliver(key, Notice(text, kind="info", author=author))
