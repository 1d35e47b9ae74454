"""Who works on which message, when: per-conversation order, a global bound, and fairness between users.

:class:`Scheduler` is the seam: the manager hands it stored messages and a handler; the scheduler runs
the handler for each message of a conversation one at a time, in arrival order, conversations in
parallel. :class:`LocalScheduler` is the in-memory, single-process implementation (the default); a
multi-process one (claims in PostgreSQL) can replace it without the manager changing.

:class:`FairGate` is a counting semaphore that hands free slots to waiting *users* in turn, not to
waiters in arrival order: when the model is saturated, one user's burst of fifty messages does not
starve another user's first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bot.store import StoredMessage
from bot.types import ConversationKey

log = logging.getLogger(__name__)

Handler = Callable[[StoredMessage], Awaitable[None]]


class Lane(Protocol):
    """What a scheduler's lane (one conversation) shows of the message it is answering."""

    current: StoredMessage | None
    current_task: asyncio.Task[None] | None


async def answer_in_lane(lane: Lane, msg: StoredMessage, handler: Handler) -> None:
    """Answer ``msg`` as ``lane``'s current task: a failure is logged (the message's state says so), a cancel
    of this message alone (/reset, a take-over) ends it; a cancel of the lane itself goes on up."""
    lane.current = msg
    lane.current_task = asyncio.create_task(handler(msg), name=f"message {msg.id}")
    try:
        await lane.current_task
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the lane itself is being stopped
    except Exception:
        log.exception("processing message %d failed", msg.id)
    finally:
        lane.current = None
        lane.current_task = None


class FairGate:
    """``capacity`` slots, handed out round-robin between users when there are more takers than slots."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a gate needs at least one slot")
        self.capacity = capacity
        self._free = capacity
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @property
    def busy(self) -> int:
        return self.capacity - self._free

    async def acquire(self, user: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            else:
                queue = self._waiting.get(user)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(future)
                    if not queue:
                        del self._waiting[user]
            raise

    def release(self, user: str | None = None) -> None:
        """A slot is free again; ``user``, who had it, goes behind the other users waiting."""
        if user is not None and len(self._waiting) > 1 and next(iter(self._waiting)) == user:
            self._waiting.move_to_end(user)
        while self._waiting:
            user, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(user)  # this user's next waiter goes behind the other users
            else:
                del self._waiting[user]
            if not future.done():
                future.set_result(None)
                return
        self._free = min(self.capacity, self._free + 1)

    @contextlib.asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        await self.acquire(user)
        try:
            yield
        finally:
            self.release()


@runtime_checkable
class Scheduler(Protocol):
    """Runs the handler for each message, one at a time per conversation, in the order submitted."""

    def bind(self, handler: Handler) -> None:
        """The coroutine that processes one message (the manager's)."""
        ...
    def submit(self, message: StoredMessage) -> bool:
        """Queue ``message``; False when it is already queued or being processed (never twice)."""
        ...
    def depth(self, key: ConversationKey) -> int:
        """Messages of ``key`` queued or being processed."""
        ...
    @property
    def total(self) -> int:
        """Messages queued or being processed, all conversations."""
        ...
    def is_inflight(self, message_id: int) -> bool: ...
    async def wait_idle(self) -> None:
        """Return once no message is queued or being processed."""
        ...
    async def cancel(self, key: ConversationKey) -> list[StoredMessage]:
        """Drop what ``key`` has queued (returned) and cancel the message being processed; the cancelled
        handler sees ``CancelledError`` and :meth:`cancelling` is True for it."""
        ...
    def cancelling(self, message_id: int) -> bool:
        """True while the processing of ``message_id`` is being cancelled by :meth:`cancel`."""
        ...
    async def stop(self, grace: float) -> None:
        """Let messages being processed finish within ``grace`` seconds, then cancel everything."""
        ...


async def wind_down(running: list[asyncio.Task[None]], lanes: list[asyncio.Task[None]], grace: float) -> None:
    """A scheduler's stop: the messages being processed may finish within ``grace`` seconds, then what is
    left of them and the lanes' tasks are cancelled."""
    if running:
        _, late = await asyncio.wait(running, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    lanes = [task for task in lanes if not task.done()]
    for task in lanes:
        task.cancel()
    await asyncio.gather(*lanes, return_exceptions=True)


@dataclass(eq=False)
class _Lane:
    key: ConversationKey
    queue: deque[StoredMessage] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    current: StoredMessage | None = None
    current_task: asyncio.Task[None] | None = None


class LocalScheduler:
    """In-process lanes: one asyncio task per busy conversation, at most ``parallel`` processing at once,
    the free places handed out fairly between users (:class:`FairGate`)."""

    def __init__(self, parallel: int, *, user_of: Callable[[StoredMessage], str] | None = None) -> None:
        self._gate = FairGate(parallel)
        self._lanes: dict[ConversationKey, _Lane] = {}
        self._inflight: set[int] = set()
        self._cancelling: set[int] = set()
        self._handler: Handler | None = None
        self._idle: asyncio.Event | None = None
        self._user_of = user_of or (lambda m: f"{m.key.platform}:{m.sender_id}")

    def bind(self, handler: Handler) -> None:
        self._handler = handler

    def submit(self, message: StoredMessage) -> bool:
        if message.id in self._inflight:
            return False
        if self._handler is None:
            raise RuntimeError("LocalScheduler.submit before bind()")
        self._inflight.add(message.id)
        if self._idle is not None:
            self._idle.clear()
        lane = self._lanes.get(message.key)
        if lane is None:
            lane = self._lanes[message.key] = _Lane(message.key)
        lane.queue.append(message)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._drain(lane), name=f"lane {message.key}")
        return True

    def depth(self, key: ConversationKey) -> int:
        lane = self._lanes.get(key)
        return 0 if lane is None else len(lane.queue) + (1 if lane.current else 0)

    @property
    def total(self) -> int:
        return len(self._inflight)

    def is_inflight(self, message_id: int) -> bool:
        return message_id in self._inflight

    def _settle(self, message_id: int) -> None:
        self._inflight.discard(message_id)
        if not self._inflight and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if not self._inflight:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()

    def cancelling(self, message_id: int) -> bool:
        return message_id in self._cancelling

    async def cancel(self, key: ConversationKey) -> list[StoredMessage]:
        lane = self._lanes.get(key)
        if lane is None:
            return []
        dropped = list(lane.queue)
        lane.queue.clear()
        for msg in dropped:
            self._settle(msg.id)
        if lane.current is not None and lane.current_task is not None and not lane.current_task.done():
            self._cancelling.add(lane.current.id)
            lane.current_task.cancel()
        return dropped

    async def _drain(self, lane: _Lane) -> None:
        assert self._handler is not None
        try:
            while lane.queue:
                msg = lane.queue[0]
                await self._gate.acquire(self._user_of(msg))
                try:
                    if not lane.queue or lane.queue[0] is not msg:
                        continue  # cancelled while waiting for a place
                    lane.queue.popleft()
                    try:
                        await answer_in_lane(lane, msg, self._handler)
                    finally:
                        self._cancelling.discard(msg.id)
                        self._settle(msg.id)
                finally:
                    self._gate.release(self._user_of(msg))
        finally:
            for msg in lane.queue:
                self._settle(msg.id)
            if self._lanes.get(lane.key) is lane and not lane.queue and lane.current is None:
                del self._lanes[lane.key]

    async def stop(self, grace: float) -> None:
        running = [lane.current_task for lane in self._lanes.values()
                   if lane.current_task is not None and not lane.current_task.done()]
        for lane in self._lanes.values():  # nothing new starts; the queued stay pending in the store
            for msg in lane.queue:
                self._settle(msg.id)
            lane.queue.clear()
        await wind_down(running, [lane.task for lane in self._lanes.values() if lane.task is not None], grace)
        self._lanes.clear()
        for message_id in list(self._inflight):
            self._settle(message_id)
