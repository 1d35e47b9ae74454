"""Contract test classes for the seams adapters implement. Every implementation subclasses the class of its
seam and provides the fixture it names; the tests assert what a user (or a person, for notifiers) would
see, through the implementation's own output.

- :class:`SinkContract` — a :class:`~bot.types.ReplySink`. Fixture ``screen``: a :class:`Screen`.
- :class:`FetcherContract` — a :class:`~bot.types.MediaFetcher`. Fixture ``files``: a :class:`FileSource`.
- :class:`NotifierContract` — a :class:`~bot.handoff.notifiers.Notifier`. Fixture ``desk``: a :class:`Desk`.
- :class:`PlatformContract` — a platform adapter end to end, through the platform's own delivery (its fake's
  polling, socket or signed webhooks; the helpdesk's own calls). Fixture ``chat``: a :class:`Chat`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bot.engines import EchoEngine
from bot.errors import AttachmentUnavailable, FileTooLarge
from bot.l10n.i18n import text
from bot.seams import MediaFetcher, Notifier, ReplySink
from bot.store import Store
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffEvent,
    HandoffUpdate,
    Notice,
    SinkContext,
    Status,
    TextChunk,
    platform_ids,
)

KEY = ConversationKey("contract", "c1")


@dataclass
class Screen:
    """How a sink contract sees a platform: ``sink(context)`` builds a sink for one turn; ``visible()`` is the
    text a user sees now, message by message, in order (finished messages); ``files()`` the names of files
    they received."""

    sink: Callable[[SinkContext], ReplySink]
    visible: Callable[[], Awaitable[list[str]]]
    files: Callable[[], Awaitable[list[str]]]
    key: ConversationKey = KEY
    """The conversation the turns are in (a chat the platform knows)."""


class SinkContract:
    """Every reply sink: the user ends up seeing the final text of every turn, exactly once."""

    @staticmethod
    def context(screen: Screen, **kw: object) -> SinkContext:
        return SinkContext(key=screen.key, reply_to=None, message_id=1, **kw)  # type: ignore[arg-type]

    async def test_a_streamed_answer_ends_as_its_final_text_once(self, screen: Screen) -> None:
        sink = screen.sink(self.context(screen))
        await sink.emit(Status("typing"))
        for word in ("The", " filter", " is", " clogged."):
            await sink.emit(TextChunk(word))
        ids = platform_ids(await sink.emit(AnswerDone("The filter is clogged.")))
        shown = await screen.visible()
        assert shown.count("The filter is clogged.") == 1, shown
        assert all(isinstance(i, str) and i for i in ids)

    async def test_the_final_text_wins_over_what_streamed(self, screen: Screen) -> None:
        sink = screen.sink(self.context(screen))
        await sink.emit(TextChunk("Check the pu"))
        await sink.emit(AnswerDone("Check the pump. (stopped)", outcome="interrupted"))
        shown = await screen.visible()
        assert "Check the pump. (stopped)" in shown and "Check the pu" not in shown

    async def test_a_turn_cancelled_before_its_first_text_leaves_nothing_behind(self, screen: Screen) -> None:
        """/reset or a take-over before the model said anything: the turn still ends on its sink (typing
        stops, a progress placeholder goes), and the user sees no empty or stray message."""
        before = await screen.visible()
        sink = screen.sink(self.context(screen))
        await sink.emit(Status("typing"))
        await sink.emit(Status("progress", "Reading the photo…"))
        assert platform_ids(await sink.emit(AnswerDone("", outcome="interrupted"))) == ()
        shown = await screen.visible()
        assert shown == before, shown

    async def test_a_failed_answer_keeps_its_partial_text_and_the_error_follows(self, screen: Screen) -> None:
        sink = screen.sink(self.context(screen))
        await sink.emit(TextChunk("Half an answer"))
        await sink.emit(AnswerDone("Half an answer", outcome="failed"))
        await sink.emit(Notice("Sorry, something went wrong.", kind="error"))
        shown = await screen.visible()
        assert shown[-2:] == ["Half an answer", "Sorry, something went wrong."]

    async def test_notices_and_handoff_updates_are_shown(self, screen: Screen) -> None:
        sink = screen.sink(self.context(screen))
        platform_ids(await sink.emit(Notice("Persona switched.", kind="command")))
        platform_ids(await sink.emit(HandoffUpdate("requested", "human", "A person will answer here.")))
        shown = await screen.visible()
        assert "Persona switched." in shown[-2] and "A person will answer here." in shown[-1]

    async def test_a_file_reaches_the_user(self, screen: Screen) -> None:
        """Under its name, or with an extension added that the platform accepts (django-helpdesk refuses
        ``.csv`` by default: the customer gets ``tables.csv.txt``)."""
        sink = screen.sink(self.context(screen))
        await sink.emit(FileReply("tables.csv", "text/csv", b"a,b\n1,2\n"))
        names = await screen.files()
        assert any(name == "tables.csv" or name.startswith("tables.csv.") for name in names), names


@dataclass
class FileSource:
    """How a fetcher contract puts files on a platform: ``add(data, name)`` gives the fetcher and the
    attachment a message would carry; ``missing()`` an attachment the platform cannot deliver."""

    add: Callable[[bytes, str], Awaitable[tuple[MediaFetcher, Attachment]]]
    missing: Callable[[], Awaitable[tuple[MediaFetcher, Attachment]]]


class FetcherContract:
    """Every media fetcher: the bytes as sent, the byte cap enforced, a polite error for the unavailable."""

    async def test_fetches_the_bytes_the_user_sent(self, files: FileSource) -> None:
        data = bytes(range(256)) * 40
        fetcher, attachment = await files.add(data, "photo.jpg")
        assert await fetcher.fetch(attachment, 1_000_000) == data

    async def test_refuses_a_file_over_the_cap(self, files: FileSource) -> None:
        fetcher, attachment = await files.add(b"x" * 5000, "big.pdf")
        with pytest.raises(FileTooLarge):
            await fetcher.fetch(attachment, 1000)

    async def test_an_unavailable_file_is_a_polite_error(self, files: FileSource) -> None:
        fetcher, attachment = await files.missing()
        with pytest.raises(AttachmentUnavailable):
            await fetcher.fetch(attachment, 1_000_000)


@dataclass
class Desk:
    """How a notifier contract sees the people's side: ``notifier`` and ``received()``, the events a person
    got so far (kinds, in order); ``broken()`` gives a notifier whose destination fails."""

    notifier: Notifier
    received: Callable[[], Awaitable[list[str]]]
    broken: Callable[[], Awaitable[Notifier]]


class NotifierContract:
    """Every handoff notifier: events reach people in order; a failing destination never raises into the
    conversation; ``reaches_people`` is a plain flag."""

    @staticmethod
    def event(kind: str = "requested") -> HandoffEvent:
        return HandoffEvent(kind, str(KEY), KEY.platform, "en", text="I want a person", user="Ana",  # type: ignore[arg-type]
                            transcript=[{"role": "user", "text": "my printer shows E5", "author": "Ana"}])

    async def test_events_reach_people_in_order(self, desk: Desk) -> None:
        for kind in ("requested", "message", "returned"):
            await desk.notifier.notify(self.event(kind))
        received = await desk.received()
        assert [k for k in received if k in ("requested", "message", "returned")] == ["requested", "message", "returned"]

    async def test_a_failing_destination_never_raises(self, desk: Desk) -> None:
        notifier = await desk.broken()
        await notifier.notify(self.event())
        await notifier.close()

    async def test_reaches_people_is_a_flag(self, desk: Desk) -> None:
        assert isinstance(desk.notifier.reaches_people, bool)


class Chat(abc.ABC):
    """How a platform contract drives one user's conversation end to end. Implementations run the real adapter
    against the platform's fake (or the real peer) with ``engine`` (an :class:`EchoEngine`; the contract sets
    its ``delay``), ``conversation.max_pending_per_conversation: 1``, and the store in a directory that
    survives :meth:`restart`. ``seen()`` is what the user sees: the bot's finished texts in the conversation."""

    engine: EchoEngine
    language = "en"

    @property
    @abc.abstractmethod
    def store(self) -> Store:
        """The running runtime's store (a new object after :meth:`restart`)."""

    @abc.abstractmethod
    async def say(self, text: str) -> Any:
        """The user writes ``text``; returns what the platform would deliver again (:meth:`redeliver`)."""

    @abc.abstractmethod
    async def redeliver(self, delivery: Any) -> None:
        """The platform delivers an earlier event again, as it does after a timeout or a lost ack."""

    @abc.abstractmethod
    def seen(self) -> list[str]:
        """The bot's texts the user sees in the conversation, in order; streaming ones not yet finished left out."""

    @abc.abstractmethod
    def outage(self, down: bool) -> None:
        """From now on every call the bot makes to the platform answers 503 (``down``), or works again."""

    @abc.abstractmethod
    async def restart(self) -> None:
        """Stop the adapter and its runtime as a deploy does, and start new ones on the same store."""

    @abc.abstractmethod
    async def idle(self) -> None:
        """Wait until the bot has nothing left to do (the manager idle, the outbox empty)."""

    def command(self, name: str) -> str:
        return f"/{name}"

    async def generating(self) -> None:
        """Until the engine is generating the question just asked."""
        async with asyncio.timeout(10):
            while not self.engine.active:
                await asyncio.sleep(0.02)

    async def wait_seen(self, expected: str, timeout: float = 30) -> None:  # noqa: ASYNC109
        """Until the user sees ``expected`` (polled: the fakes have no common event to wait on)."""
        async with asyncio.timeout(timeout):
            while expected not in self.seen():
                await asyncio.sleep(0.05)


class HarnessChat(Chat):
    """A :class:`Chat` over a test file's harness: an async context manager (``open_harness()``) yielding an
    object with ``runtime`` and ``idle()``; :meth:`restart` closes it and opens a new one on the same store."""

    def __init__(self, engine: EchoEngine) -> None:
        self.engine = engine
        self.stack = contextlib.AsyncExitStack()
        self.harness: Any = None

    @abc.abstractmethod
    def open_harness(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The test file's harness for this chat (its fake platform shared across restarts)."""

    async def start(self) -> None:
        self.harness = await self.stack.enter_async_context(self.open_harness())

    async def restart(self) -> None:
        await self.stack.aclose()
        self.stack = contextlib.AsyncExitStack()
        await self.start()

    async def close(self) -> None:
        await self.stack.aclose()

    @property
    def store(self) -> Store:
        return self.harness.runtime.manager.store  # type: ignore[no-any-return]

    async def idle(self) -> None:
        await self.harness.idle()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, chat: HarnessChat) -> AsyncIterator[HarnessChat]:
        """``chat`` started, and closed after the test."""
        await chat.start()
        try:
            yield chat
        finally:
            await chat.close()


class PlatformContract:
    """Every platform: each question answered once where it was asked, whatever failed on the way. The cases
    are the failures real deployments meet: the store erring while a message comes in, a redelivery after a
    restart, the platform down for a while, a turn cancelled before its first text, a refused /human."""

    OUTAGE = 3.0  # seconds the platform answers 503 (bench/outage.py runs 30 s, with time-outs too)

    async def test_a_question_is_answered_once(self, chat: Chat) -> None:
        await chat.say("why does my kettle switch off early")
        await chat.wait_seen("echo: why does my kettle switch off early")
        await chat.idle()
        assert chat.seen() == ["echo: why does my kettle switch off early"]

    async def test_a_store_error_at_intake_is_not_confirmed_and_the_message_is_answered_once(
            self, chat: Chat, monkeypatch: pytest.MonkeyPatch) -> None:
        store = chat.store
        real = store.add_incoming
        failures: list[int] = []

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if len(failures) < 2:
                failures.append(1)
                raise sqlite3.OperationalError("database is locked")
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, "add_incoming", flaky)
        await chat.say("is my message kept when the disk hiccups")
        await chat.wait_seen("echo: is my message kept when the disk hiccups")
        await chat.idle()
        assert len(failures) == 2
        assert chat.seen() == ["echo: is my message kept when the disk hiccups"]

    async def test_a_redelivery_after_a_restart_is_not_answered_again(self, chat: Chat) -> None:
        delivery = await chat.say("the pump hums but no water comes")
        await chat.wait_seen("echo: the pump hums but no water comes")
        await chat.idle()
        await chat.restart()
        await chat.redeliver(delivery)
        await chat.say("and the filter is clean")  # answered after the redelivery was handled: same conversation
        await chat.wait_seen("echo: and the filter is clean")
        await chat.idle()
        assert chat.seen() == ["echo: the pump hums but no water comes", "echo: and the filter is clean"]

    async def test_the_platform_down_for_a_while_then_back_gets_each_answer_once(self, chat: Chat) -> None:
        chat.outage(True)
        try:
            await chat.say("my router blinks red")
            await asyncio.sleep(self.OUTAGE)  # the outage lasting, not an ordering wait
            assert "echo: my router blinks red" not in chat.seen()
        finally:
            chat.outage(False)
        await chat.wait_seen("echo: my router blinks red")
        await chat.idle()
        assert chat.seen() == ["echo: my router blinks red"]

    async def test_a_turn_reset_before_its_first_text_leaves_only_the_reset_notice(self, chat: Chat) -> None:
        chat.engine.delay = 0.5
        await chat.say("describe the whole manual please")
        await chat.generating()
        chat.engine.delay = 0.0
        await chat.say(chat.command("reset"))
        notice = text("reset_done", chat.language)
        await chat.wait_seen(notice)
        await chat.idle()
        assert chat.seen() == [notice], chat.seen()

    async def test_a_refused_human_request_leaves_the_conversation_with_the_bot(self, chat: Chat) -> None:
        chat.engine.delay = 0.3
        await chat.say("my printer shows E5")
        await chat.generating()
        await chat.say(chat.command("human"))  # one message already waits: over the pending limit
        refusal = text("too_many_pending", chat.language, count=1)
        await chat.wait_seen(refusal)
        chat.engine.delay = 0.0
        await chat.wait_seen("echo: my printer shows E5")
        await chat.say("what does E5 mean")
        await chat.wait_seen("echo: what does E5 mean")
        await chat.idle()
        assert chat.seen() == [refusal, "echo: my printer shows E5", "echo: what does E5 mean"], chat.seen()
