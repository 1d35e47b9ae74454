"""The scheduler seam (per-conversation order, never twice, cancel, stop) and the fair gate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.scheduler import FairGate, LocalScheduler, Scheduler
from bot.store import StoredMessage
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
    """Subclasses provide ``make``: a factory of schedulers with a given number of parallel places."""

    async def test_one_message_at_a_time_per_conversation_in_order(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        scheduler.bind(rec)
        first = rec.gate(1)
        for mid, chat in [(1, "a"), (2, "b"), (3, "a"), (4, "b"), (5, "a")]:
            assert scheduler.submit(message(mid, chat))
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
        scheduler.bind(rec)
        release = rec.gate(1)
        assert scheduler.submit(message(1))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        assert scheduler.is_inflight(1)
        assert not scheduler.submit(message(1))  # being processed
        assert scheduler.submit(message(2))
        assert not scheduler.submit(message(2))  # queued
        release.set()
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.started == [1, 2]

    async def test_cancel_drops_the_queue_and_stops_the_running_message(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(8), Recorder()
        scheduler.bind(rec)
        rec.gate(1)
        for mid in (1, 2, 3):
            scheduler.submit(message(mid))
        await asyncio.wait_for(rec.running[1].wait(), 5)
        dropped = await scheduler.cancel(ConversationKey("test", "c1"))
        assert [m.id for m in dropped] == [2, 3]
        assert scheduler.cancelling(1)
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.cancelled == [1] and rec.started == [1]
        assert scheduler.submit(message(4))  # the conversation goes on
        await asyncio.wait_for(scheduler.wait_idle(), 5)
        assert rec.ended == [4]

    async def test_the_parallel_bound_holds(self, make: Callable[[int], Scheduler]) -> None:
        scheduler, rec = make(2), Recorder()
        scheduler.bind(rec)
        gates = [rec.gate(mid) for mid in (1, 2, 3)]
        for mid in (1, 2, 3):
            scheduler.submit(message(mid, chat=f"c{mid}", sender=f"u{mid}"))
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
        scheduler.bind(rec)
        rec.gate(1)
        scheduler.submit(message(1))
        scheduler.submit(message(2))
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
