"""Contract test classes for the seams adapters implement. Every implementation subclasses the class of its
seam and provides the fixture it names; the tests assert what a user (or a person, for notifiers) would
see, through the implementation's own output.

- :class:`SinkContract` — a :class:`~bot.types.ReplySink`. Fixture ``screen``: a :class:`Screen`.
- :class:`FetcherContract` — a :class:`~bot.types.MediaFetcher`. Fixture ``files``: a :class:`FileSource`.
- :class:`NotifierContract` — a :class:`~bot.handoff.Notifier`. Fixture ``desk``: a :class:`Desk`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from bot.errors import AttachmentUnavailable, FileTooLarge
from bot.handoff import HandoffEvent, Notifier
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    MediaFetcher,
    Notice,
    ReplySink,
    SinkContext,
    Status,
    TextChunk,
    platform_ids,
)

KEY = ConversationKey("contract", "c1")


@dataclass
class Screen:
    """How a sink contract sees a platform: ``sink(context)`` builds a sink for one turn; ``visible()`` is the
    text a user sees now, message by message, in order; ``files()`` the names of files they received."""

    sink: Callable[[SinkContext], ReplySink]
    visible: Callable[[], Awaitable[list[str]]]
    files: Callable[[], Awaitable[list[str]]]


class SinkContract:
    """Every reply sink: the user ends up seeing the final text of every turn, exactly once."""

    @staticmethod
    def context(**kw: object) -> SinkContext:
        return SinkContext(key=KEY, reply_to=None, message_id=1, **kw)  # type: ignore[arg-type]

    async def test_a_streamed_answer_ends_as_its_final_text_once(self, screen: Screen) -> None:
        sink = screen.sink(self.context())
        await sink.emit(Status("typing"))
        for word in ("The", " filter", " is", " clogged."):
            await sink.emit(TextChunk(word))
        ids = platform_ids(await sink.emit(AnswerDone("The filter is clogged.")))
        shown = await screen.visible()
        assert shown.count("The filter is clogged.") == 1, shown
        assert all(isinstance(i, str) and i for i in ids)

    async def test_the_final_text_wins_over_what_streamed(self, screen: Screen) -> None:
        sink = screen.sink(self.context())
        await sink.emit(TextChunk("Check the pu"))
        await sink.emit(AnswerDone("Check the pump. (stopped)", outcome="interrupted"))
        shown = await screen.visible()
        assert "Check the pump. (stopped)" in shown and "Check the pu" not in shown

    async def test_a_turn_cancelled_before_its_first_text_leaves_nothing_behind(self, screen: Screen) -> None:
        """/reset or a take-over before the model said anything: the turn still ends on its sink (typing
        stops, a progress placeholder goes), and the user sees no empty or stray message."""
        before = await screen.visible()
        sink = screen.sink(self.context())
        await sink.emit(Status("typing"))
        await sink.emit(Status("progress", "Reading the photo…"))
        assert platform_ids(await sink.emit(AnswerDone("", outcome="interrupted"))) == ()
        shown = await screen.visible()
        assert shown == before, shown

    async def test_a_failed_answer_keeps_its_partial_text_and_the_error_follows(self, screen: Screen) -> None:
        sink = screen.sink(self.context())
        await sink.emit(TextChunk("Half an answer"))
        await sink.emit(AnswerDone("Half an answer", outcome="failed"))
        await sink.emit(Notice("Sorry, something went wrong.", kind="error"))
        shown = await screen.visible()
        assert shown[-2:] == ["Half an answer", "Sorry, something went wrong."]

    async def test_notices_and_handoff_updates_are_shown(self, screen: Screen) -> None:
        sink = screen.sink(self.context())
        platform_ids(await sink.emit(Notice("Persona switched.", kind="command")))
        platform_ids(await sink.emit(HandoffUpdate("requested", "human", "A person will answer here.")))
        shown = await screen.visible()
        assert "Persona switched." in shown[-2] and "A person will answer here." in shown[-1]

    async def test_a_file_reaches_the_user(self, screen: Screen) -> None:
        sink = screen.sink(self.context())
        await sink.emit(FileReply("tables.csv", "text/csv", b"a,b\n1,2\n"))
        assert "tables.csv" in await screen.files()


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
