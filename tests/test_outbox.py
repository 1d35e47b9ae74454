"""The durable outbox (bot/conversation/outbox.py): what a platform did not take is kept, sent again in order, never
doubled, and given up only after the deadline — with the operator and /metrics told."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bot.conversation.manager import ConversationManager
from bot.conversation.outbox import BUCKET as OUTBOX_BUCKET
from bot.conversation.outbox import NOT_DELIVERED, decode, encode
from bot.engines import EchoEngine
from bot.seams import Channel
from bot.store import MemoryStore, SQLiteStore, Store
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import (
    AlreadySent,
    AnswerDone,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    PlatformIds,
    ReplyEvent,
    Sender,
    SinkContext,
)
from tests.conftest import make_settings

KEY = ConversationKey("flaky", "c1")


class Platform:
    """A platform that can be down (503, like a Slack or Chatwoot edge) and shows what reached the user."""

    def __init__(self) -> None:
        self.down = False
        self.hang = False  # requests get no answer (a platform that stopped answering)
        self.probes: list[float] = []  # when each send made while it hangs went out (loop time)
        self.hung: list[ConversationKey] = []  # whose sends they were
        self.probed = asyncio.Event()
        self.refuse = False
        self.shown: list[str] = []
        self.contexts: list[SinkContext] = []
        self.attempts = 0
        self.already: set[ConversationKey] = set()  # whose reply the bot knows arrived (the platform's echo)
        self.retry_after = ""  # down with a 429 asking for this many seconds (else a 503)
        self.shown_at: list[float] = []  # loop time of each message shown

    def sink_for(self, context: SinkContext) -> Sink:
        self.contexts.append(context)
        return Sink(self, context.key)


class Sink(CollectingSink):
    def __init__(self, platform: Platform, key: ConversationKey = KEY) -> None:
        super().__init__()
        self.platform = platform
        self.key = key

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, AnswerDone) and self.key in self.platform.already:
            return AlreadySent((f"echoed-{self.key.chat}",))  # found without asking the platform
        if isinstance(event, AnswerDone | Notice):
            self.platform.attempts += 1
            if self.platform.refuse:
                raise ValueError("the platform refuses this message for good")
            if self.platform.hang:
                self.platform.probes.append(asyncio.get_running_loop().time())
                self.platform.hung.append(self.key)
                self.platform.probed.set()
                await asyncio.Event().wait()  # never answered: the outbox's probe time-out ends it
            if self.platform.down:
                request = httpx.Request("POST", "http://127.0.0.1/api")
                status, headers = (429, {"Retry-After": self.platform.retry_after}) if self.platform.retry_after \
                    else (503, {})
                raise httpx.HTTPStatusError(str(status), request=request,
                                            response=httpx.Response(status, request=request, headers=headers))
            self.platform.shown.append(event.text)
            self.platform.shown_at.append(asyncio.get_running_loop().time())
        return await super().emit(event)


def manager(tmp_path: Path, store: Store, platform: Platform, **conversation: object) -> ConversationManager:
    m = ConversationManager(make_settings(tmp_path, conversation=conversation), store, EchoEngine(delay=0.001))
    m.register(Channel("flaky", MemoryFetcher(), platform.sink_for))
    return m


def quick_outbox(monkeypatch: pytest.MonkeyPatch, *, backoff: float, most: float, probe: float | None = None) -> None:
    """The outbox's probe schedule in tenths of seconds (its back-off from ``backoff`` up to ``most``, a probe
    given up after ``probe``), so a test sees it work in its own time."""
    from bot.conversation import outbox

    monkeypatch.setattr(outbox, "FIRST_BACKOFF", backoff)
    monkeypatch.setattr(outbox, "MAX_BACKOFF", most)
    if probe is not None:
        monkeypatch.setattr(outbox, "PROBE_TIMEOUT", probe)


async def ask(m: ConversationManager, text: str, n: int) -> str:
    ticket = await m.submit(IncomingMessage(KEY, Sender("u1", "Ana"), text, event_id=f"e{n}"))
    assert ticket is not None
    return await asyncio.wait_for(ticket.done, 10)


def test_every_kept_event_survives_encoding() -> None:
    for event in (AnswerDone("the answer"), AnswerDone("half (stopped)", outcome="interrupted"),
                  Notice("**Ana:** hello", kind="info", author="Ana"),
                  HandoffUpdate("requested", "human", "A person will answer.", by="user", reason="user"),
                  FileReply("t.csv", "text/csv", b"a,b\n1,2\n", caption="your table")):
        assert decode(encode(event)) == event


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_answers_kept_while_the_platform_is_down_arrive_once_in_order_after_a_restart(
        tmp_path: Path, kind: str) -> None:
    """Down: answers are stored and kept; the process restarts; the platform is back: each answer arrives
    once, in order, and the store knows the platform ids it got."""
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "bot.db")
    await store.open()
    platform = Platform()
    platform.down = True
    first = manager(tmp_path, store, platform)
    await first.start()
    assert [await ask(first, f"question {i}", i) for i in range(3)] == ["answered"] * 3
    assert platform.shown == []
    await first.stop(1)
    platform.down = False
    second = manager(tmp_path, store, platform)
    await second.start()  # a new process: the kept answers are still there
    try:
        await second.outbox.deliver_due()
        assert platform.shown == ["echo: question 0", "echo: question 1", "echo: question 2"]
        await second.outbox.deliver_due()
        assert len(platform.shown) == 3  # nothing twice
        assert not await second.outbox.waiting(KEY)
        answers = [m for m in await store.transcript(KEY) if m.role == "assistant"]
        assert all(m.platform_ids for m in answers) and all(m.state == "answered" for m in answers)
    finally:
        await second.stop(1)
        await store.close()


async def test_a_platform_that_stays_down_past_the_deadline_is_given_up_and_everyone_is_told(
        tmp_path: Path) -> None:
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform, delivery_deadline_seconds=0.2)
    await m.start()
    try:
        assert await ask(m, "will this arrive?", 1) == "answered"
        await asyncio.sleep(0.3)
        await m.outbox.deliver_due()
        [answer] = [r for r in await store.transcript(KEY) if r.role == "assistant" and r.kind == "chat"]
        assert answer.state == "failed" and (answer.error or "").startswith(NOT_DELIVERED)
        assert m.metrics.delivery_failed.labels("flaky")._value.get() == 1
        platform.down = False  # the user is told, once the platform answers (the outbox probes it again)
        for _ in range(200):
            if platform.shown:
                break
            await asyncio.sleep(0.05)
        assert platform.shown == [await _text(m, "delivery_failed")]
    finally:
        await m.stop(1)


async def test_a_refusal_for_good_is_not_retried(tmp_path: Path) -> None:
    store = MemoryStore()
    platform = Platform()
    m = manager(tmp_path, store, platform)
    await m.start()
    try:
        row = await m.operator_reply(KEY, "Hi, this is Ana.", author="Ana")
        assert platform.shown == ["**Ana:** Hi, this is Ana."] or platform.shown == ["Hi, this is Ana."]
        platform.refuse = True
        row = await m.operator_reply(KEY, "Are you there?", author="Ana")
        stored = await store.message(row)
        assert stored.state == "failed" and (stored.error or "").startswith(NOT_DELIVERED)
        assert platform.attempts == 2 and not await m.outbox.waiting(KEY)
    finally:
        await m.stop(1)


async def test_an_operator_reply_while_the_platform_is_down_is_kept_not_reported_delivered(
        tmp_path: Path) -> None:
    store = MemoryStore()
    platform = Platform()
    m = manager(tmp_path, store, platform)
    await m.start()
    try:
        platform.down = True
        row = await m.operator_reply(KEY, "We are on it.", author="Ana")
        assert (await store.message(row)).platform_ids == ()  # not shown to the user (yet)
        assert await m.outbox.waiting(KEY)
        platform.down = False
        await m.outbox.deliver_due()
        assert any("We are on it." in text for text in platform.shown)
        assert (await store.message(row)).platform_ids
        assert platform.contexts[-1].reply_row == row  # the same identity when sent again
    finally:
        await m.stop(1)


async def _text(m: ConversationManager, key: str) -> str:
    from bot.l10n.i18n import text

    return text(key, "en")


@pytest.mark.parametrize(("failure", "looks_first"), [("503", False), ("timeout", True)])
async def test_a_retry_looks_for_an_earlier_copy_only_when_one_may_have_arrived(
        tmp_path: Path, failure: str, looks_first: bool) -> None:
    """A 503 says the platform did not take it: sent again as is. A time-out may have delivered it: the
    retry is marked ``resend`` (Slack then looks in the thread for the answer's mark before posting)."""
    store = MemoryStore()
    platform = Platform()

    class Timing(Sink):
        async def emit(self, event: ReplyEvent) -> str | None:
            if isinstance(event, AnswerDone) and failure == "timeout" and platform.down:
                platform.attempts += 1
                raise httpx.ReadTimeout("no answer in 10 s")
            return await super().emit(event)

    m = ConversationManager(make_settings(tmp_path), store, EchoEngine(delay=0.001))
    def sink_for(context: SinkContext) -> Timing:
        platform.contexts.append(context)
        return Timing(platform)

    m.register(Channel("flaky", MemoryFetcher(), sink_for))
    platform.down = True
    await m.start()
    try:
        assert await ask(m, "is it there?", 1) == "answered"
        assert platform.shown == []
        platform.down = False
        async with asyncio.timeout(10):  # the outbox's own loop sends it after its back-off
            while not platform.shown:
                await asyncio.sleep(0.05)
        await m.outbox.deliver_due()
        assert platform.shown == ["echo: is it there?"]
        assert platform.contexts[-1].resend is looks_first
    finally:
        await m.stop(1)


async def test_a_probe_that_hangs_does_not_put_off_the_next_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform that stops answering is probed every back-off period, even while earlier probes hang: one
    giving up (its time-out) leaves the next probe where it was planned, counted from when it went, not
    from its time-out (which made the period the time-out: a recovery seen seconds later)."""
    quick_outbox(monkeypatch, backoff=0.5, most=0.5, probe=0.9)  # under two periods: a time-out comes before a probe
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform)
    await m.start()
    keys = [ConversationKey("flaky", f"c{i}") for i in range(4)]
    try:
        for i, key in enumerate(keys):
            ticket = await m.submit(IncomingMessage(key, Sender(f"u{i}", "Ana"), f"question {i}", event_id=f"e{i}"))
            assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        platform.down, platform.hang = False, True
        async with asyncio.timeout(10):
            while len(platform.probes) < 6:
                platform.probed.clear()
                await platform.probed.wait()
        gaps = [later - earlier for earlier, later in zip(platform.probes, platform.probes[1:], strict=False)]
        assert max(gaps) < 0.75, gaps  # every 0.5 s; 0.9 s + 0.5 s when a time-out moved the next probe
        platform.hang = False
        async with asyncio.timeout(10):
            while len(platform.shown) < len(keys):
                await asyncio.sleep(0.05)
        assert sorted(platform.shown) == [f"echo: question {i}" for i in range(4)]
    finally:
        await m.stop(1)


async def test_an_answer_hanging_when_the_platform_answers_again_is_kept_and_sent_with_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer sent while the platform is in trouble whose request hangs (made into the outage, answered by
    no one before its time-out): once the outbox sees the platform answer again, it is given up and kept,
    and goes out at once, looking for an earlier copy first (the hung request may have arrived)."""
    quick_outbox(monkeypatch, backoff=0.3, most=0.3, probe=0.5)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform)
    await m.start()
    first, second = ConversationKey("flaky", "c1"), ConversationKey("flaky", "c2")
    try:
        ticket = await m.submit(IncomingMessage(first, Sender("u1", "Ana"), "first", event_id="e1"))
        assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"  # kept: in trouble
        async with asyncio.timeout(10):
            while platform.attempts < 2:  # the outbox tried it too: the platform is being probed
                await asyncio.sleep(0.02)
        platform.down, platform.hang = False, True
        hanging = await m.submit(IncomingMessage(second, Sender("u2", "Rui"), "second", event_id="e2"))
        assert hanging is not None
        async with asyncio.timeout(10):
            while second not in platform.hung:
                platform.probed.clear()
                await platform.probed.wait()
        platform.hang = False  # back: the next probe (the kept first answer) goes through
        assert await asyncio.wait_for(hanging.done, 5) == "answered"  # not held until the request's time-out
        async with asyncio.timeout(5):
            while len(platform.shown) < 2:
                await asyncio.sleep(0.05)
        assert sorted(platform.shown) == ["echo: first", "echo: second"]
        assert [c.resend for c in platform.contexts if c.key == second][-1] is True
        assert "flaky" not in m.outbox.troubles()  # a request given up this way says nothing of the platform
    finally:
        await m.stop(1)


async def test_an_answer_that_goes_through_brings_the_next_probe_forward(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform being probed after a long back-off: a turn's answer that goes through has the kept replies
    probed now, not at the end of the back-off period (live traffic shows the recovery first)."""
    quick_outbox(monkeypatch, backoff=0.2, most=60.0)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform)
    await m.start()
    kept, live = ConversationKey("flaky", "c1"), ConversationKey("flaky", "c2")
    try:
        ticket = await m.submit(IncomingMessage(kept, Sender("u1", "Ana"), "kept", event_id="e1"))
        assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        async with asyncio.timeout(10):
            while platform.attempts < 4:  # probed, failing, the back-off doubling: 0.2, 0.4, 0.8 s...
                await asyncio.sleep(0.02)
        m.outbox._backoff["flaky"] = 60.0  # ... up to a period far longer than this test waits
        m.outbox._down["flaky"] = m.outbox.clock() + 60.0
        platform.down = False
        ticket = await m.submit(IncomingMessage(live, Sender("u2", "Rui"), "live", event_id="e2"))
        assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        async with asyncio.timeout(5):
            while "echo: kept" not in platform.shown:
                await asyncio.sleep(0.05)
        assert platform.shown == ["echo: live", "echo: kept"]
        assert "flaky" not in m.outbox.troubles()
    finally:
        await m.stop(1)


async def test_a_reply_found_already_sent_does_not_count_as_the_platform_answering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept reply whose earlier send hung but arrived (the platform echoed it: Chatwoot's webhook) is delivered
    without a request: that says nothing of the platform, which still hangs. It stays in trouble and the next
    kept reply probes it (with the probe's short time-out), instead of every kept reply going out at once
    into the hang."""
    quick_outbox(monkeypatch, backoff=0.2, most=0.2, probe=0.4)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform)
    await m.start()
    echoed, waiting = ConversationKey("flaky", "c1"), ConversationKey("flaky", "c2")
    try:
        for n, key in enumerate((echoed, waiting)):
            ticket = await m.submit(IncomingMessage(key, Sender(f"u{n}", "Ana"), f"q{n}", event_id=f"e{n}"))
            assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        assert "flaky" in m.outbox.troubles()
        platform.down, platform.hang = False, True
        platform.already.add(echoed)
        async with asyncio.timeout(10):  # the echoed reply is delivered (found), the other probes the hang
            while len([k for k in platform.hung if k == waiting]) < 2:
                platform.probed.clear()
                await platform.probed.wait()
        assert "flaky" in m.outbox.troubles()  # still hanging: not declared back by a reply found already there
        platform.hang = False
        async with asyncio.timeout(10):
            while "echo: q1" not in platform.shown:
                await asyncio.sleep(0.05)
        assert "flaky" not in m.outbox.troubles()
    finally:
        await m.stop(1)


async def test_a_send_the_outbox_gave_up_waiting_for_is_tried_again_whatever_the_sdk_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox's own time-out of a hanging send (asyncio's TimeoutError) is not an error an SDK's retry rule
    knows: Telegram's knows only its TimedOut and NetworkError, and called this one final, so a probe that
    hung gave the reply up for good ("please ask again"). It is tried again."""
    quick_outbox(monkeypatch, backoff=0.2, most=0.2, probe=0.3)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = ConversationManager(make_settings(tmp_path), store, EchoEngine(delay=0.001))

    def sdk_rule(exc: BaseException) -> float | None:  # like Telegram's: only the SDK's own errors
        return 1.0 if isinstance(exc, httpx.HTTPStatusError) else None

    m.register(Channel("flaky", MemoryFetcher(), platform.sink_for, retry_after=sdk_rule))
    await m.start()
    try:
        assert await ask(m, "kept", 1) == "answered"
        async with asyncio.timeout(10):
            while platform.attempts < 2:  # the outbox tried it too: the platform is being probed
                await asyncio.sleep(0.02)
        platform.down, platform.hang = False, True
        async with asyncio.timeout(10):
            while len(platform.probes) < 2:  # a probe hung and was given up waiting for, and another went
                platform.probed.clear()
                await platform.probed.wait()
        platform.hang = False
        async with asyncio.timeout(10):
            while "echo: kept" not in platform.shown:
                await asyncio.sleep(0.05)
        assert (await store.transcript(KEY, limit=10))[-1].state != "failed"
    finally:
        await m.stop(1)


async def test_the_last_kept_reply_found_already_sent_ends_the_trouble(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply found already on the platform (no request made) that was the last one waiting leaves nothing to
    probe: the platform is no longer reported in trouble (/readyz), rather than for good."""
    quick_outbox(monkeypatch, backoff=0.2, most=0.2)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    m = manager(tmp_path, store, platform)
    await m.start()
    try:
        assert await ask(m, "kept", 1) == "answered"
        assert "flaky" in m.outbox.troubles()
        platform.already.add(KEY)  # the send that failed had arrived after all: the platform echoed it
        async with asyncio.timeout(10):
            while await store.stashed(OUTBOX_BUCKET):
                await asyncio.sleep(0.05)
            while "flaky" in m.outbox.troubles():
                await asyncio.sleep(0.05)
        assert platform.shown == []  # found there, not sent again
    finally:
        await m.stop(1)


async def test_a_live_answer_going_through_does_not_bring_a_probe_before_the_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform that answered 429 with Retry-After is not probed before that time, even when a turn's answer
    goes through meanwhile (which otherwise brings the next probe forward)."""
    quick_outbox(monkeypatch, backoff=0.2, most=0.2)
    store = MemoryStore()
    platform = Platform()
    platform.down, platform.retry_after = True, "2"
    m = manager(tmp_path, store, platform)
    await m.start()
    kept, live = ConversationKey("flaky", "c1"), ConversationKey("flaky", "c2")
    try:
        ticket = await m.submit(IncomingMessage(kept, Sender("u1", "Ana"), "kept", event_id="e1"))
        assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        async with asyncio.timeout(10):
            while platform.attempts < 2:  # the outbox's own try: refused with Retry-After 2
                await asyncio.sleep(0.01)
        refused_at = asyncio.get_running_loop().time()
        platform.down = False
        ticket = await m.submit(IncomingMessage(live, Sender("u2", "Rui"), "live", event_id="e2"))
        assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        async with asyncio.timeout(10):
            while "echo: kept" not in platform.shown:
                await asyncio.sleep(0.05)
        assert platform.shown == ["echo: live", "echo: kept"]
        assert platform.shown_at[1] - refused_at >= 1.9  # the Retry-After was honoured
    finally:
        await m.stop(1)


async def test_a_channels_own_probe_keeps_replies_out_of_a_hang(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform where a send that hangs may have arrived and cannot be looked up (Telegram) gives the outbox
    a harmless probe: while it hangs no kept reply is sent into the hang (each would show twice), and once it
    answers the kept replies go, each once."""
    quick_outbox(monkeypatch, backoff=0.2, most=0.2, probe=0.3)
    store = MemoryStore()
    platform = Platform()
    platform.down = True
    probes: list[ConversationKey] = []
    probed = asyncio.Event()

    async def probe(key: ConversationKey) -> None:
        probes.append(key)
        probed.set()
        if platform.hang:
            await asyncio.Event().wait()
        if platform.down:
            request = httpx.Request("POST", "http://127.0.0.1/api")
            raise httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, request=request))

    m = ConversationManager(make_settings(tmp_path), store, EchoEngine(delay=0.001))
    m.register(Channel("flaky", MemoryFetcher(), platform.sink_for, probe=probe))
    await m.start()
    try:
        for n in range(2):
            ticket = await m.submit(IncomingMessage(ConversationKey("flaky", f"c{n}"), Sender(f"u{n}", "Ana"),
                                                    f"q{n}", event_id=f"e{n}"))
            assert ticket is not None and await asyncio.wait_for(ticket.done, 10) == "answered"
        tried = platform.attempts  # the two live answers, refused
        platform.down, platform.hang = False, True
        async with asyncio.timeout(10):
            while len(probes) < 4:  # probes hang and are given up, again and again
                probed.clear()
                await probed.wait()
        assert platform.attempts == tried and platform.hung == []  # no kept reply went into the hang
        platform.hang = False
        async with asyncio.timeout(10):
            while len(platform.shown) < 2:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert sorted(platform.shown) == ["echo: q0", "echo: q1"]  # each once
        assert "flaky" not in m.outbox.troubles()
    finally:
        await m.stop(1)
