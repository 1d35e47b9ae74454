"""The conversation manager: every adapter's messages go through here. It wires the parts:

- intake (:meth:`ConversationManager.submit`): the chain of steps in :mod:`bot.conversation.intake` —
  bots and unlisted users dropped, the message and its platform event id stored in one transaction (a
  redelivery is answered once), held for a person, per-user and pending limits, the handoff mode switched,
  ``/reset``, and the message handed to the :class:`~bot.scheduling.scheduler.Scheduler`;
- the scheduler: one message at a time per conversation, in arrival order, conversations in parallel,
  places handed out fairly between users;
- processing (:meth:`_process`): the answer language, then a command (:mod:`bot.conversation.commands`), a handoff
  (:mod:`bot.handoff.desk`) or an answer: attachments (:mod:`bot.media.attachments`), the prompt that fits
  (:mod:`bot.conversation.prompting`), the engine's stream relayed to the adapter's sink (:mod:`bot.conversation.relay`) — the
  engine never waits for a platform, and every turn ends on the sink that streamed it;
- start-up: messages a previous run left unanswered are resumed first, with the platform messages that
  run had already created, before adapters take new ones.

The manager holds its collaborators: :class:`~bot.conversation.answering.Answerer` (a turn's answer),
:class:`~bot.conversation.grounding.Grounder` (boxes drawn, ``/find``),
:class:`~bot.conversation.languages.LanguageChooser`, :class:`~bot.conversation.courier.Courier` (replies
outside a turn), :class:`~bot.knowledge.reader.KnowledgeReader` and :class:`~bot.store.retention.Retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bot.config import ConfigError, Settings
from bot.conversation.answering import Answerer
from bot.conversation.commands import COMMANDS, Commands, parse_command
from bot.conversation.courier import Courier
from bot.conversation.failures import tell_failure
from bot.conversation.feedback import FeedbackDesk
from bot.conversation.grounding import Grounder
from bot.conversation.intake import STEPS, Arrival
from bot.conversation.languages import LanguageChooser
from bot.conversation.limits import UsageGuard
from bot.conversation.outbox import Outbox
from bot.conversation.prompting import PromptBuilder
from bot.conversation.relay import MeteredSink, Relay
from bot.conversation.turn import Turn
from bot.engines.base import Engine
from bot.errors import (
    BotError,
    InputError,
    NoSuchChannel,
    NoSuchConversation,
    ShuttingDown,
    describe,
)
from bot.handoff.desk import HandoffDesk, say
from bot.handoff.notifiers import LogNotifier, Notifiers
from bot.handoff.phrases import asks_for_human
from bot.knowledge.base import KnowledgeIndex
from bot.knowledge.reader import KnowledgeReader
from bot.l10n.language import LanguageDetector
from bot.l10n.personas import Persona, load_personas
from bot.media.attachments import AttachmentResolver
from bot.ops.logs import conversation_var
from bot.ops.metrics import Metrics
from bot.scheduling.scheduler import FairGate, LocalScheduler, Scheduler
from bot.seams import Channel, Elector, Notifier, SharedScheduling
from bot.store import (
    Conversation,
    FeedbackKind,
    ForgetReport,
    Store,
    StoredMessage,
)
from bot.store.retention import Retention
from bot.types import (
    ConversationKey,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    Sender,
    SinkContext,
)

log = logging.getLogger(__name__)


_frozen = False


def _freeze_start_up() -> None:
    """Once per process, at the first start: what start-up left alive (modules, the model, the language
    detector, settings) is moved out of the cycle collector's way. A full collection otherwise walks all of it
    while every conversation waits: about 100 ms with torch and transformers imported (250,000 objects)."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()  # start-up's garbage first: what is frozen is never collected
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Receipt:
    """Returned by :meth:`ConversationManager.submit`; ``done`` resolves to the message's final state."""

    message_id: int
    done: asyncio.Future[str]


class ConversationManager:
    """Routes messages from adapters to the engine and back. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: Engine,
        *,
        personas: dict[str, Persona] | None = None,
        detector: LanguageDetector | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        scheduler: Scheduler | None = None,
        knowledge: KnowledgeIndex | None = None,
    ) -> None:
        self.settings = settings
        self.conf = settings.conversation
        self.store = store
        #: the knowledge bases' search (None: a store that keeps none), and what reads them for a turn
        self.knowledge = knowledge
        self.reader = KnowledgeReader(knowledge, store, engine, settings) if knowledge is not None else None
        self.engine = engine
        self.personas = personas if personas is not None else load_personas(self.conf.personas_dir or None)
        if self.conf.default_persona not in self.personas:
            raise ConfigError(
                f"conversation.default_persona: no persona named {self.conf.default_persona!r} — "
                f"choose one of {', '.join(sorted(self.personas))}"
            )
        self._channels: dict[str, Channel] = {}
        self.languages = LanguageChooser(self.conf, store, detector or LanguageDetector(self.conf.languages),
                                         self._channels)
        self.metrics = metrics or Metrics()
        self.notifiers = notifier if isinstance(notifier, Notifiers) else Notifiers([notifier or LogNotifier()])
        self.scheduler: Scheduler = scheduler or LocalScheduler(self.conf.max_parallel_conversations)
        self.scheduler.bind(self._process)
        self.metrics.track_queue(lambda: self.scheduler.total)
        # The model's own places, handed out fairly between users (the engine's semaphore never queues).
        slots = engine.max_concurrency or settings.engine.max_concurrency
        self._engine_gate = FairGate(max(1, int(slots)))
        self.resolver = AttachmentResolver(settings, store, engine)
        self.prompts = PromptBuilder(store, engine, resolver=self.resolver)
        self.usage = UsageGuard(store)
        self.outbox = Outbox(store, self.channel, self.metrics, deadline=self.conf.delivery_deadline_seconds,
                             undeliverable=self._undeliverable)
        self.courier = Courier(store, self.outbox, self.metrics, self.channel, self.conf.default_language)
        self.desk = HandoffDesk(store, self.notifiers, self.metrics, self.resolver, self.scheduler,
                                self.courier.deliver, self.conf.default_language, settle=self.settle)
        self.commands = Commands(settings, store, self.personas, self.persona_for, self._on_reset)
        self.feedback = FeedbackDesk(store, self.metrics)
        self.grounder = Grounder(settings, store, engine, self.resolver, self.outbox, self._engine_gate)
        self.answerer = Answerer(settings, store, engine, resolver=self.resolver, prompts=self.prompts,
                                 usage=self.usage, reader=self.reader, outbox=self.outbox, grounder=self.grounder,
                                 desk=self.desk, gate=self._engine_gate, persona_for=self.persona_for)
        self._done: dict[int, asyncio.Future[str]] = {}
        self._arrived: dict[int, float] = {}
        self._accepting = True
        # replicas: a message taken in here may be answered elsewhere (checked once, here)
        self._shared = self.scheduler if isinstance(self.scheduler, SharedScheduling) else None
        if self._shared is not None:
            self._shared.on_settled = self._settled_elsewhere
            self._shared.serves = lambda: set(self._channels)
        self.retention = Retention(store, settings.store, self.prompts.forget)

    def add_notifier(self, notifier: Notifier) -> None:
        """Adapters add theirs at run time (a helpdesk opening the conversation to agents)."""
        self.notifiers.add(notifier)

    # -- life cycle -----------------------------------------------------------------------

    def register(self, channel: Channel) -> None:
        """Register an adapter's channel; its persona must exist."""
        if channel.persona and channel.persona not in self.personas:
            raise ConfigError(
                f"adapters.{channel.platform}.persona: no persona named {channel.persona!r} — "
                f"choose one of {', '.join(sorted(self.personas))}"
            )
        self._channels[channel.platform] = channel

    @property
    def platforms(self) -> frozenset[str]:
        """The platforms this process serves (an adapter registered its channel): only their conversations can
        be answered from here."""
        return frozenset(self._channels)

    def channel(self, platform: str) -> Channel:
        try:
            return self._channels[platform]
        except KeyError:
            raise NoSuchChannel(f"no channel registered for platform {platform!r}") from None

    async def start(self) -> int:
        """Resume messages a previous run left unanswered, oldest first; return how many were queued again.

        Call it before adapters start taking new messages, so old messages are not answered after newer
        ones; a message already queued or being processed is never queued twice.
        """
        self._accepting = True
        if not self.languages.detector.ready:
            # Built here, before the first message (a resumed one included), never inside a turn. In a thread,
            # though lingua holds the GIL while it builds: the loop still waits the second or two, before any
            # adapter takes messages.
            await asyncio.to_thread(self.languages.detector.warm)
        _freeze_start_up()
        await self.feedback.start()
        resumed = 0
        for msg in await self.store.pending():
            if msg.key.platform not in self._channels:
                log.warning("message %d of %s waits for its adapter (%s) to be enabled", msg.id, msg.key,
                            msg.key.platform)
                continue
            if self.scheduler.submit(msg):
                resumed += 1
        if resumed:
            log.info("resuming %d message(s) left unanswered by the previous run", resumed)
        await self.retention.start()
        # with replicas (a store that elects): one replica delivers
        self.outbox.start(self.store.elect if isinstance(self.store, Elector) else None)
        return resumed

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages; let answers in progress finish within ``grace`` seconds, then cancel them.

        Messages not finished here stay ``received``/``answering`` in the store: the next start answers them.
        """
        self._accepting = False
        self.retention.stop()
        await self.scheduler.stop(grace)
        await self.outbox.stop()
        background = list(self.desk.background)
        if background:
            _, late = await asyncio.wait(background, timeout=max(grace, 1.0))
            for task in late:
                task.cancel()

    @property
    def queue_depth(self) -> int:
        return self.scheduler.total

    async def idle(self) -> None:
        """Return once every queued message is processed (tests, scripts, the bench)."""
        await self.scheduler.wait_idle()

    # -- intake ---------------------------------------------------------------------------

    async def submit(self, message: IncomingMessage) -> Receipt | None:
        """Store ``message`` and queue it for an answer. None when it is not for the bot: a duplicate event
        (a platform's retry or redelivery), a message from a bot, or a sender the adapter's policy excludes.

        Returns once the message is stored (adapters acknowledge the platform after that); the answer is
        produced in the background and rendered by the channel's sink; ``Receipt.done`` resolves when the
        message reaches its final state. Raises :class:`ShuttingDown` while the service stops.
        """
        arrival = Arrival(message, self.channel(message.key.platform))
        if not self._accepting:
            raise ShuttingDown("the conversation manager is shutting down")
        for step in STEPS:
            if not await step(self, arrival):
                break
        if arrival.stored is None:
            return None  # not for the bot, or a duplicate
        return Receipt(arrival.stored.id, self._done[arrival.stored.id])

    def track(self, mid: int, arrived: float) -> None:
        """A stored message is followed until it settles (its receipt's future, how long it waited)."""
        if mid not in self._done:
            self._done[mid] = asyncio.get_running_loop().create_future()
        self._arrived[mid] = arrived

    def untrack_arrival(self, mid: int) -> None:
        self._arrived.pop(mid, None)

    def refuse(self, msg: StoredMessage, channel: Channel, exc: BotError) -> None:
        """Answer a message refused at intake (too many waiting, a usage limit) without queueing it."""

        async def refuse() -> None:
            conversation_var.set(str(msg.key))
            lang = await self.languages.language_for(msg)
            turn = self._turn(msg, channel, lang)
            try:
                await tell_failure(turn, exc)
            finally:
                await turn.relay.close()
                self.settle(msg.id, "failed")

        self.desk.spawn(refuse())

    async def depth(self, key: ConversationKey, mid: int) -> int:
        """Messages of ``key`` waiting or being answered, ``mid`` aside: with replicas, on all of them."""
        return await self._shared.waiting(key, mid) if self._shared is not None else self.scheduler.depth(key)

    def _settled_elsewhere(self, mid: int, state: str) -> None:
        self.desk.forget(mid)
        self.settle(mid, state)

    def settle(self, mid: int, state: str) -> None:
        self._arrived.pop(mid, None)
        future = self._done.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(state)

    async def _on_reset(self, turn: Turn) -> None:
        self.answerer.forget(turn.msg.key)
        await self._signal(turn.msg, "reset_after_answer")

    async def _signal(self, msg: StoredMessage, kind: FeedbackKind) -> None:
        """An implicit signal about the answer right before ``msg``; it never costs the user their turn."""
        try:
            await self.feedback.after_answer(msg, kind)
        except Exception as exc:
            log.warning("%s of message %d not recorded: %s", kind, msg.id, describe(exc))

    # -- processing -----------------------------------------------------------------------

    def _turn(self, msg: StoredMessage, channel: Channel, lang: str) -> Turn:
        async def record(ids: Sequence[str]) -> None:
            await self.store.set_drafts(msg.id, ids)

        context = SinkContext(key=msg.key, reply_to=msg.platform_message_id, message_id=msg.id,
                              previous=msg.drafts, record=record, route=msg.route, language=lang)
        sink = MeteredSink(channel.sink_for(context), self.metrics, msg.key.platform,
                           self._arrived.get(msg.id) or time.monotonic())
        return Turn(msg, channel, lang, Relay(sink), self.store, context=context)

    async def _process(self, msg: StoredMessage) -> None:
        conversation_var.set(str(msg.key))
        channel = self._channels[msg.key.platform]
        state = "failed"
        turn: Turn | None = None
        try:
            lang, conv = await self.languages.choose(msg)
            # the turn's first write: answering, and the language if it changed, in one transaction
            await self.store.start_answering(msg.id, msg.key, **({"last_language": lang}
                                                                 if lang != conv.last_language else {}))
            turn = self._turn(msg, channel, lang)
            command = parse_command(msg.text, channel.command_prefixes) if msg.kind == "command" else None
            reason = "user" if command and command[0] == "human" else None
            if not command:
                reason = self.wants_person(msg.text, await self.store.conversation(msg.key), channel)
            if reason is not None:
                await self._signal(msg, "handoff_after_answer")
                await self.desk.request(turn, reason)
            elif command and command[0] == "bot":
                await self.desk.back_to_bot(turn)
            elif command and command[0] == "find":
                await self.grounder.find(turn, command[1])
            elif command:
                await self.commands.run(turn, *command)
            else:
                await self.answerer.answer(turn)
            state = "answered"
        except asyncio.CancelledError:
            state = await self._cancelled(msg, turn)
            raise
        except InputError as exc:
            if turn is not None:
                await tell_failure(turn, exc)
        except Exception as exc:
            log.exception("message %d failed", msg.id)
            self.metrics.engine_errors.labels(self.engine.info.name).inc()
            if turn is not None:
                await tell_failure(turn, exc)
            else:
                await self.store.finish(msg.id, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.desk.forget(msg.id)
            if turn is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await turn.relay.close()
            self.settle(msg.id, state)

    async def _cancelled(self, msg: StoredMessage, turn: Turn | None) -> str:
        """``/reset`` or an operator's take-over cancelled this message; or the service is stopping."""
        if not self.scheduler.cancelling(msg.id):
            return "interrupted"  # shutdown: stays pending, answered after a restart
        with contextlib.suppress(KeyError):
            if (await self.store.message(msg.id)).state == "answered":
                return "answered"  # its answer was stored before the cancel came: it stands
        conv = await self.store.conversation(msg.key)
        state = "held" if conv.mode == "human" else "cancelled"
        await self.store.finish(msg.id, state, error=None if state == "held" else "cancelled by /reset")
        return state

    def wants_person(self, text: str, conv: Conversation, channel: Channel) -> str | None:
        """Why a message goes to a person: the user asked (``user``), or it names something the persona's
        policy sends to a person (``policy: <keyword>``); None when it is for the assistant."""
        if asks_for_human(text):
            return "user"
        hit = self.persona_for(conv, channel).policy_hit(text) if len(text) <= 2000 else None
        return f"policy: {hit}" if hit else None

    def persona_for(self, conv: Conversation, channel: Channel) -> Persona:
        name = conv.persona or channel.persona or self.conf.default_persona
        return self.personas.get(name) or self.personas[self.conf.default_persona]

    # -- operators ------------------------------------------------------------------------

    async def hand_back(self, key: ConversationKey, *, by: str = "operator") -> bool:
        """An operator gives the conversation back to the bot; the user is told. False if it was not handed off."""
        return await self.desk.hand_back(key, by=by)

    async def take_over(self, key: ConversationKey, *, by: str) -> bool:
        """An operator takes over a conversation the bot is handling (see :meth:`HandoffDesk.take_over`)."""
        return await self.desk.take_over(key, by=by)

    async def operator_reply(self, key: ConversationKey, text: str, *, author: str) -> int:
        """A person's answer in a handed-off conversation: stored and sent to the user as theirs."""
        return await self.desk.operator_reply(key, text, author=author)

    async def deliver_notice(self, key: ConversationKey, notice: Notice) -> int:
        """Send ``notice`` to a conversation outside any turn (stored as a notice); its message id."""
        return await self.courier.deliver(key, notice)

    async def regenerate(self, key: ConversationKey, answer_platform_id: str, *, sender: Sender,
                         event_id: str | None = None, locale: str | None = None) -> Receipt | None:
        """Answer a question again (a "Regenerate" button under the answer the platform knows as
        ``answer_platform_id``): the old question and answer leave the context and the question is asked
        anew. Raises :class:`NoSuchConversation` when that answer is no longer in the context."""
        answer, question = await _answered(self.store, key, answer_platform_id)
        receipt = await self.submit(IncomingMessage(
            key, sender, question.text, tuple(a.as_attachment() for a in question.attachments),
            locale=locale or question.locale, event_id=event_id, message_id=question.platform_message_id,
            route=question.route))
        if receipt is not None:
            await self.store.set_state(question.id, "superseded")
            self.prompts.forget(key)
            # the answer lost to the one asked for now (value: the new question, whose answer may be kept)
            await self.feedback.record(answer, "regenerated", user=sender.id, value=str(receipt.message_id))
        return receipt

    async def _undeliverable(self, key: ConversationKey, lang: str) -> HandoffUpdate | None:
        """The outbox gave up a reply on a platform with people (a helpdesk): they take the conversation."""
        if not await self.desk.to_people(key, lang, reason="undeliverable"):
            return None
        return HandoffUpdate("requested", "human", say(self.channel(key.platform), "handoff_started", lang),
                             reason="undeliverable")

    async def set_mode(self, key: ConversationKey, mode: str, *, by: str) -> bool:
        """The platform itself moved the conversation to a person or back (see :meth:`HandoffDesk.set_mode`)."""
        return await self.desk.set_mode(key, mode, by=by)

    async def forget(self, key: ConversationKey) -> ForgetReport:
        """Delete a conversation for good: what is being answered stops, its messages and files go."""
        for queued in await self.scheduler.cancel(key):
            self.settle(queued.id, "cancelled")
        report = await self.store.forget(key)
        self.prompts.forget(key)
        self.answerer.forget(key)
        return report


__all__: Sequence[str] = ["COMMANDS", "ConversationManager", "Receipt"]


async def _answered(store: Store, key: ConversationKey, answer_platform_id: str) -> tuple[StoredMessage, StoredMessage]:
    """The answer the platform knows as ``answer_platform_id`` and its question, while both are in the context of
    ``key``; :class:`NoSuchConversation` otherwise."""
    answer = await store.find_by_platform_id(key.platform, key.chat, answer_platform_id)
    conv = await store.conversation(key)
    if answer is None or answer.role != "assistant" or answer.reply_to is None or answer.key != key:
        raise NoSuchConversation(f"no answer {answer_platform_id} in {key}")
    question = await store.message(answer.reply_to)
    if question.id < conv.context_start or question.state != "answered" or question.kind != "chat":
        raise NoSuchConversation(f"the question of {answer_platform_id} is no longer in the context of {key}")
    return answer, question

