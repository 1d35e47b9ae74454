"""The scheduler seam (per-conversation order, never twice, cancel, stop) and the fair gate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.scheduling.scheduler import FairGate, LocalScheduler, Scheduler
from bot.store import NewMessage, StoredMessage
from bot.types import ConversationKey


def message(mid: int, chat: str = "c1", sender: str = "u1") -> StoredMessage:
    return StoredMessage(id=mid, key=ConversationKey("test", chat), role="user", kind="chat", text=f"m{mid}",
                         state="received", sender_id=sender)


class Recorder:
    """A handler that records starts and ends, and holds messages whose id is in ``hold`` until released."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.ended: list[int] = []
        self.cancelled: list[int] = []
        self.hold: dict[int, asyncio.Event] = {}
        self.running: dict[int, asyncio.Event] = {}

    def gate(self, mid: int) -> asyncio.Event:
        self.hold[mid] = asyncio.Event()
        self.running[mid] = asyncio.Event()
        return self.hold[mid]

    async def __call__(self, msg: StoredMessage) -> None:
        self.started.append(msg.id)
        if msg.id in self.running:
            self.running[msg.id].set()
        try:
            if msg.id in self.hold:
                await self.hold[msg.id].wait()
            self.ended.append(msg.id)
        except asyncio.CancelledError:
            self.cancelled.append(msg.id)
            raise


class SchedulerContract:
    """Subclasses provide ``make``: a factory of schedulers with a given number of parallel places. A scheduler
    whose queue is a database overrides :meth:`put` (store the message first) and :meth:`bind` (the handler
    settles the message there, as the manager does)."""

    async def put(self, scheduler: Scheduler, msg: StoredMessage) -> bool:
        return scheduler.submit(msg)

    def bind(self, scheduler: Scheduler, rec: Recorder) -> None:
        scheduler.bind(rec)

    async def test_one_message_at_a_time_per_conversation_in_order(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        self.bind(scheduler, rec)
        first = rec.gate(1)
        for mid, chat in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a")]:
            assert await self.put(scheduler, message(mid, chat))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        assert scheduler.depth(ConversationKey("test", "a")) == 3
        await asyncio.sleep(0)
        assert 3 not in rec.started  # behind 1 in its conversation
        first.set()
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert [m for m in rec.ended if m in (1, 3, 5)] == [1, 3, 5]
        assert [m for m in rec.ended if m in (2, 4)] == [2, 4]
        assert scheduler.total == 0

    async def test_a_message_is_never_queued_twice(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        self.bind(scheduler, rec)
        release = rec.gate(1)
        assert await self.put(scheduler, message(1))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        assert scheduler.is_inflight(1)
        assert not await self.put(scheduler, message(1))  # being processed
        assert await self.put(scheduler, message(2))
        assert not await self.put(scheduler, message(2))  # queued
        release.set()
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.started == [1, 2]

    async def test_cancel_drops_the_queue_and_stops_the_running_message(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        self.bind(scheduler, rec)
        rec.gate(1)
        for mid in (1, 2, 3):
            await self.put(scheduler, message(mid))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        dropped = await scheduler.cancel(ConversationKey("test", "c1"))
        assert [m.id for m in dropped] == [2, 3]
        assert scheduler.cancelling(1)
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.cancelled == [1] and rec.started == [1]
        assert await self.put(scheduler, message(4))  # the conversation goes on
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.ended == [4]

    async def test_the_parallel_bound_holds(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(2), Recorder()
        self.bind(scheduler, rec)
        gates = [rec.gate(mid) for mid in (1, 2, 3)]
        for mid in (1, 2, 3):
            await self.put(scheduler, message(mid, chat=f"c{mid}", sender=f"u{mid}"))
        await asyncio.wait_for(asyncio.gather(rec.running[1].wait(), rec.running[2].wait()), 5)
        await asyncio.sleep(0)
        assert rec.started == [1, 2]
        gates[0].set()
        await asyncio.wait_for(rec.running[3].wait(), 5)
        for gate in gates:
            gate.set()
        await asyncio.wait_for(scheduler.wait_idle(), 5)

    async def test_stop_lets_running_work_finish_within_grace_then_cancels(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        self.bind(scheduler, rec)
        rec.gate(1)
        await self.put(scheduler, message(1))
        await self.put(scheduler, message(2))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        await scheduler.stop(grace=0.01)
        assert rec.cancelled == [1] and 2 not in rec.started  # queued work is left for the next start
        assert scheduler.total == 0


class TestLocalScheduler(SchedulerContract):
    @pytest.fixture
    def make(self) -> Callable[[int], Scheduler]:
        return lambda parallel: LocalScheduler(parallel)


async def test_the_fair_gate_serves_users_in_turn() -> None:
    gate = FairGate(1)
    order: list[str] = []
    await gate.acquire("hog")

    async def take(user: str, label: str) -> None:
        await gate.acquire(user)
        order.append(label)
        gate.release()

    tasks = [asyncio.create_task(take("hog", f"hog{i}")) for i in range(5)]
    tasks.append(asyncio.create_task(take("newcomer", "newcomer")))
    await asyncio.sleep(0)
    assert gate.waiting == 6
    gate.release()
    await asyncio.gather(*tasks)
    assert order.index("newcomer") == 1  # right after the hog's next one, not after all of them


async def test_a_cancelled_waiter_gives_its_place_on() -> None:
    gate = FairGate(1)
    await gate.acquire("a")
    waiter = asyncio.create_task(gate.acquire("b"))
    other = asyncio.create_task(gate.acquire("c"))
    await asyncio.sleep(0)
    waiter.cancel()
    gate.release()
    await asyncio.wait_for(other, 5)
    assert gate.busy == 1 and gate.waiting == 0


class TestClaimScheduler(SchedulerContract):
    """The same contract for replicas: the queue is PostgreSQL's messages table, conversations are claimed
    with leases (a fresh database per test)."""

    @pytest.fixture
    async def make(self, postgres: Any) -> AsyncIterator[Callable[[int], Scheduler]]:
        from bot.store.postgres.claims import ClaimScheduler
        from bot.store.postgres.store import PostgresStore

        self.store = PostgresStore(postgres.database())
        await self.store.open()
        made: list[ClaimScheduler] = []

        def make(parallel: int) -> Scheduler:
            made.append(ClaimScheduler(self.store, replica="test", parallel=parallel, lease=5, poll=0.2))
            return made[-1]

        yield make
        for scheduler in made:
            await scheduler.stop(0.1)
        await self.store.close()

    async def put(self, scheduler: Scheduler, msg: StoredMessage) -> bool:
        if not any(m.id == msg.id for m in await self.store.pending()) and \
                await self.store.last_message_id() < msg.id:
            mid = await self.store.add_message(msg.key, NewMessage(role="user", text=msg.text, sender_id=msg.sender_id))
            assert mid == msg.id
        return scheduler.submit(msg)

    def bind(self, scheduler: Scheduler, rec: Recorder) -> None:
        store = self.store

        async def settle(msg: StoredMessage) -> None:  # as the manager does: a final state in the store
            try:
                await rec(msg)
            except asyncio.CancelledError:
                await store.set_state(msg.id, "cancelled")
                raise
            await store.finish(msg.id, "answered")

        scheduler.bind(settle)

    async def test_cancel_drops_the_queue_and_stops_the_running_message(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        self.bind(scheduler, rec)
        rec.gate(1)
        for mid in (1, 2, 3):
            await self.put(scheduler, message(mid))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        dropped = await scheduler.cancel(ConversationKey("test", "c1"))
        assert [m.id for m in dropped] == [2, 3]
        assert scheduler.cancelling(1)
        for m in dropped:  # the caller keeps them for the person (held), as the handoff desk does
            await self.store.set_state(m.id, "held")
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.cancelled == [1] and rec.started == [1]
        assert await self.put(scheduler, message(4))
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.ended == [4]


async def test_two_replicas_share_the_work_one_conversation_each_in_order(postgres: Any) -> None:
    """Two claim schedulers on one database: each conversation is worked on by one replica at a time, in
    order; the work spreads over both."""
    from bot.store.postgres.claims import ClaimScheduler
    from bot.store.postgres.store import PostgresStore

    store = PostgresStore(postgres.database())
    await store.open()
    seen: list[tuple[str, int, str]] = []
    busy: set[str] = set()
    overlaps = 0

    def handler(replica: str) -> Callable[[StoredMessage], Any]:
        async def run(msg: StoredMessage) -> None:
            nonlocal overlaps
            if msg.key.chat in busy:
                overlaps += 1
            busy.add(msg.key.chat)
            await asyncio.sleep(0.01)
            seen.append((msg.key.chat, msg.id, replica))
            busy.discard(msg.key.chat)
            await store.finish(msg.id, "answered")
        return run

    a = ClaimScheduler(store, replica="a", parallel=4, lease=5, poll=0.1)
    b = ClaimScheduler(store, replica="b", parallel=4, lease=5, poll=0.1)
    a.bind(handler("a"))
    b.bind(handler("b"))
    try:
        for i in range(60):
            msg = await store.add_message(ConversationKey("test", f"c{i % 10}"), NewMessage(role="user", text="q"))
            (a if i % 2 else b).submit(await store.message(msg))
        await asyncio.wait_for(asyncio.gather(a.wait_idle(), b.wait_idle()), 30)
    finally:
        await a.stop(1)
        await b.stop(1)
        await store.close()
    assert overlaps == 0 and len(seen) == 60 and len({mid for _, mid, _ in seen}) == 60
    for chat in {c for c, _, _ in seen}:
        ids = [mid for c, mid, _ in seen if c == chat]
        assert ids == sorted(ids), chat
    assert {r for _, _, r in seen} == {"a", "b"}


async def test_claims_are_fair_between_users_across_replicas(postgres: Any) -> None:
    """Ana writes in five conversations, then Bea and Caio in one each: the first replica to claim two takes
    Ana's oldest and Bea's, the next takes Caio's before Ana's second (Ana is being answered already)."""
    from bot.store.postgres.claims import ClaimScheduler
    from bot.store.postgres.store import PostgresStore

    store = PostgresStore(postgres.database())
    await store.open()
    try:
        def key(name: str) -> ConversationKey:
            return ConversationKey("slack", "T1", name)

        for n in range(5):
            await store.add_message(key(f"ana-{n}"), NewMessage(role="user", text="?", sender_id="ana"))
        await store.add_message(key("bea"), NewMessage(role="user", text="?", sender_id="bea"))
        await store.add_message(key("caio"), NewMessage(role="user", text="?", sender_id="caio"))
        first = ClaimScheduler(store, replica="one", parallel=2)
        second = ClaimScheduler(store, replica="two", parallel=2)
        assert sorted(k.thread for k, _, _ in await first._claim(2)) == ["ana-0", "bea"]
        assert sorted(k.thread for k, _, _ in await second._claim(2)) == ["ana-1", "caio"]
    finally:
        await store.close()


async def test_a_cancel_on_one_replica_stops_the_answer_on_another(postgres: Any) -> None:
    """/reset (or a person taking over) reaches whichever replica it reaches; the answer in progress stops on
    the replica producing it, as cancelled (not as interrupted by a shutdown)."""
    from bot.store.postgres.claims import ClaimScheduler
    from bot.store.postgres.store import PostgresStore

    store = PostgresStore(postgres.database())
    await store.open()
    started, stopped = asyncio.Event(), asyncio.Event()
    answering = ClaimScheduler(store, replica="one", parallel=4, poll=0.1)
    other = ClaimScheduler(store, replica="two", parallel=4, poll=0.1)
    seen: list[bool] = []

    async def slow(msg: StoredMessage) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(answering.cancelling(msg.id))
            stopped.set()
            await store.set_state(msg.id, "cancelled")
            raise

    async def never(msg: StoredMessage) -> None:
        raise AssertionError("the other replica must not take the conversation")

    answering.bind(slow)
    other.bind(never)
    try:
        key = ConversationKey("web", "s1")
        mid = await store.add_message(key, NewMessage(role="user", text="a long question"))
        answering.submit(await store.message(mid))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.wait_for(answering.listening.wait(), 10)
        assert [m.id for m in await other.cancel(key)] == [mid]  # waiting, as the caller sees it
        await asyncio.wait_for(stopped.wait(), 10)
        assert seen == [True]
    finally:
        await answering.stop(0.1)
        await other.stop(0.1)
        await store.close()


async def test_the_waiting_count_covers_every_replicas_intake(postgres: Any) -> None:
    """conversation.max_pending_per_conversation counts what waits in the database, whichever replica took
    it in, so a flood spread over replicas is refused as it would be by one."""
    from bot.store.postgres.claims import ClaimScheduler
    from bot.store.postgres.store import PostgresStore

    store = PostgresStore(postgres.database())
    await store.open()
    try:
        key = ConversationKey("telegram", "42")
        ids = [await store.add_message(key, NewMessage(role="user", text=f"{n}", sender_id="u")) for n in range(4)]
        await store.set_state(ids[0], "answering")
        await store.finish(ids[1], "answered", reply="done")
        await store.add_message(ConversationKey("telegram", "7"), NewMessage(role="user", text="other chat"))
        scheduler = ClaimScheduler(store, replica="one", parallel=2)  # took none of them in itself
        assert await scheduler.waiting(key, besides=ids[3]) == 2  # ids[0] (answering) and ids[2]
    finally:
        await store.close()
