"""The :class:`~bot.scheduling.scheduler.Scheduler` for several replicas on one PostgreSQL: claims with leases.

The queue is the messages table itself: a user's message waiting for an answer is ``received`` or
``answering``. A replica works on a *conversation*, never on a message alone: it claims the conversation
(a row in ``claims`` with its replica name, a token and a lease), answers that conversation's waiting
messages oldest first, renewing the lease as it goes, and deletes the claim when none is left. So exactly
one replica works on a conversation at a time, in arrival order, and conversations spread over replicas.

The claim is one statement — ``INSERT … ON CONFLICT DO UPDATE … WHERE the lease has expired`` — so two
replicas can never both win it. A replica that dies (kill -9, a lost machine) stops renewing; when its
lease runs out (``store.lease_seconds``, 30 s by default) another replica claims the conversation and
answers what is still waiting, completing the dead replica's partial answer through the platform message
ids stored with it. A replica that finds its lease lost (a long pause) stops the answer it was working on.

New messages wake the replicas through ``NOTIFY``; a poll every ``poll`` seconds covers a missed one. The
per-process limit (``conversation.max_parallel_conversations``) bounds how many conversations a replica
claims at once. Claims are fair between users across replicas (each user's oldest waiting conversation
before anyone's second; users already being answered after those who are not); the engine's places are
handed out fairly between users within each replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.scheduling.scheduler import Handler, answer_in_lane, wind_down
from bot.store import StoredMessage
from bot.store.postgres.store import PostgresStore
from bot.types import ConversationKey

log = logging.getLogger(__name__)

# "work": messages are waiting; "cancel:<id>:<key>": stop the answer to <key> if its message is not newer
CHANNEL = "internvl_bot_work"
CANCEL = "cancel:"
#: the states another replica gives a message it cancels (``/reset``, a take-over): seen on the message being
#: answered here, its answer stops
CANCELLED_ELSEWHERE = frozenset({"cancelled", "held"})
HOLD_SECONDS = 5.0


@dataclass(eq=False)
class _Lane:
    key: ConversationKey
    token: int
    task: asyncio.Task[None] | None = None
    current: StoredMessage | None = None
    current_task: asyncio.Task[None] | None = None
    lost: bool = False
    queued: set[int] = field(default_factory=set)
    # after a cancel: messages up to this id are not started while their canceller marks them (briefly)
    hold_upto: int = 0
    hold_until: float = 0.0

    def hold(self, upto: int) -> None:
        self.hold_upto = max(self.hold_upto, upto)
        self.hold_until = time.monotonic() + HOLD_SECONDS


class ClaimScheduler:
    """See the module docstring."""

    def __init__(self, store: PostgresStore, *, replica: str, parallel: int, lease: float = 30.0,
                 poll: float = 1.0) -> None:
        self.store = store
        self.replica = replica
        self.parallel = parallel
        self.lease = lease
        self.poll = poll
        self._handler: Handler | None = None
        self._lanes: dict[ConversationKey, _Lane] = {}
        self._cancelling: set[int] = set()
        self._wake = asyncio.Event()
        self.listening = asyncio.Event()  # set once notifications from the other replicas arrive
        self._submitted: dict[int, ConversationKey] = {}  # taken in here, not yet seen answered
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        #: called with (message id, state) when a message this replica took in was finished by another one
        self.on_settled: Callable[[int, str], None] | None = None
        #: the platforms this replica has adapters for (None: all); it claims no conversation of another
        self.serves: Callable[[], set[str]] | None = None
        self.claimed = 0  # conversations claimed (metrics, tests)
        self.taken_over = 0  # of those, claims another replica had let expire

    # -- the Scheduler protocol -------------------------------------------------------------

    def bind(self, handler: Handler) -> None:
        self._handler = handler

    def submit(self, message: StoredMessage) -> bool:
        """The message is stored: wake this replica's claimer and tell the others."""
        self._ensure_started()
        if self.is_inflight(message.id) or message.id in self._submitted:
            return False
        self._submitted[message.id] = message.key
        self._wake.set()
        task = asyncio.create_task(self._tell_others())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return True

    def depth(self, key: ConversationKey) -> int:
        """What this replica knows of: messages it took in for ``key`` and not yet seen answered, and the one
        it is answering (another replica's intake is not counted)."""
        lane = self._lanes.get(key)
        running = 1 if lane is not None and lane.current is not None else 0
        return running + sum(1 for k in self._submitted.values() if k == key)

    async def waiting(self, key: ConversationKey, besides: int) -> int:
        """Messages of ``key`` waiting or being answered on any replica, ``besides`` aside."""
        return await self.store.count_waiting(key, besides)

    @property
    def total(self) -> int:
        return len(self._submitted) + sum(1 for lane in self._lanes.values() if lane.current is not None)

    def is_inflight(self, message_id: int) -> bool:
        return any(lane.current is not None and lane.current.id == message_id for lane in self._lanes.values())

    async def wait_idle(self) -> None:
        """Until no message waits in the database and this replica works on none (tests, scripts)."""
        self._ensure_started()
        while True:
            if not await self.store.any_waiting() and not self._lanes:
                self._submitted.clear()
                return
            await asyncio.sleep(0.05)

    def cancelling(self, message_id: int) -> bool:
        return message_id in self._cancelling

    async def cancel(self, key: ConversationKey) -> list[StoredMessage]:
        """Stop the answer in progress here, and hand back the conversation's other waiting messages (the
        caller holds them); a replica working on it elsewhere sees them no longer waiting."""
        lane = self._lanes.get(key)
        current = lane.current if lane is not None else None
        waiting = [m for m in await self.store.waiting_messages(key) if current is None or m.id != current.id]
        if lane is not None and waiting:
            lane.hold(max(m.id for m in waiting))
        if not self._stop_current(key) and waiting:
            with contextlib.suppress(Exception):  # the replica answering it, if another, stops too
                await self.store.notify(CHANNEL, [f"{CANCEL}{max(m.id for m in waiting)}:{key}"])
        return waiting

    def _stop_current(self, key: ConversationKey, upto: int | None = None) -> bool:
        """Cancel the answer in progress on ``key`` here (as cancelled, not interrupted), if it answers a
        message not newer than ``upto``; False if none."""
        lane = self._lanes.get(key)
        if lane is None or lane.current is None or lane.current_task is None or lane.current_task.done():
            return False
        if upto is not None and lane.current.id > upto:
            return False  # a message that came after the cancel
        self._cancelling.add(lane.current.id)
        lane.current_task.cancel()
        return True

    def _heard(self, payload: str) -> None:
        if payload.startswith(CANCEL):
            with contextlib.suppress(ValueError):
                upto, key = payload[len(CANCEL):].split(":", 1)
                lane = self._lanes.get(ConversationKey.parse(key))
                if lane is not None:
                    lane.hold(int(upto))
                self._stop_current(ConversationKey.parse(key), int(upto))
            return
        self._wake.set()

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._submitted.clear()  # what waits stays in the database, for whichever replica claims it
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        running = [lane.current_task for lane in self._lanes.values()
                   if lane.current_task is not None and not lane.current_task.done()]
        await wind_down(running, [lane.task for lane in self._lanes.values() if lane.task is not None], grace)

    # -- claiming ---------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._loop is None and not self._stopping:
            self.store.listen(CHANNEL, self._heard, ready=self.listening)
            self._loop = asyncio.create_task(self._claim_forever(), name="claims")

    async def _tell_others(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.notify(CHANNEL, ["work"])

    async def _claim_forever(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.parallel - len(self._lanes)
            if self._submitted:  # answered by another replica: no longer ours to count
                asked = list(self._submitted)
                with contextlib.suppress(Exception):
                    states = await self.store.message_states(asked)
                    for mid in asked:  # only those asked about: others came in while the query ran
                        state = states.get(mid, "cancelled")  # gone: its conversation was deleted
                        if state not in ("received", "answering"):
                            self._submitted.pop(mid, None)
                            if self.on_settled is not None:
                                self.on_settled(mid, state)
            if free > 0:
                try:
                    for key, token, expired in await self._claim(free):
                        lane = self._lanes[key] = _Lane(key, token)
                        self.claimed += 1
                        if expired:
                            self.taken_over += 1
                            log.warning("conversation %s: the replica working on it stopped renewing its claim; "
                                        "taking it over", key)
                        lane.task = asyncio.create_task(self._drain(lane), name=f"lane {key}")
                except Exception as exc:
                    log.warning("claiming conversations failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def _claim(self, limit: int) -> list[tuple[ConversationKey, int, bool]]:
        """Claim up to ``limit`` conversations with waiting messages that nobody holds, fairly between users."""
        token = secrets.randbits(62)
        platforms = sorted(self.serves()) if self.serves is not None else None
        # fair between users across replicas (see ClaimQueries.claim): a user writing in fifty threads at once
        # does not hold up everyone else
        rows = await self.store.claim(limit=limit, replica=self.replica, token=token, lease=self.lease,
                                      platforms=platforms)
        return [(ConversationKey.parse(cid), token, bool(expired)) for cid, expired in rows]

    async def _renew(self, lane: _Lane) -> bool:
        return await self.store.renew_claim(lane.key, lane.token, self.lease)

    async def _keep(self, lane: _Lane) -> None:
        """Renew the lease a few times per lease while a message is answered; a lost claim stops it, and so
        does a database this replica cannot reach for most of a lease (another replica may be taking the
        conversation over: two answers must not stream at once)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                ok = await asyncio.wait_for(self._renew(lane), timeout=self.lease / 3)
            except Exception as exc:
                log.warning("renewing the claim on %s failed: %s", lane.key, exc)
                if time.monotonic() - renewed < 0.8 * self.lease:
                    continue
                ok = False
            else:
                renewed = time.monotonic()
                current = lane.current
                if ok and current is not None:  # a cancel whose NOTIFY was missed: the message says so too
                    with contextlib.suppress(Exception):
                        # (not "answered": the turn stored its answer and is finishing what follows it —
                        # the answer's record, a picture of the boxes — and must not be stopped now)
                        if (await self.store.message(current.id)).state in CANCELLED_ELSEWHERE:
                            self._stop_current(lane.key, current.id)
            if not ok:
                lane.lost = True
                log.error("the claim on %s was lost (this replica paused past its lease, or cannot reach the "
                          "database): stopping its answer", lane.key)
                if lane.current_task is not None:
                    lane.current_task.cancel()
                return

    async def _next(self, lane: _Lane) -> StoredMessage | None:
        rows = await self.store.waiting_messages(lane.key, limit=1)
        return rows[0] if rows else None

    async def _drain(self, lane: _Lane) -> None:
        assert self._handler is not None
        keeper = asyncio.create_task(self._keep(lane), name=f"lease {lane.key}")
        try:
            while not self._stopping and not lane.lost:
                msg = await self._next(lane)
                if msg is not None and msg.id <= lane.hold_upto and time.monotonic() < lane.hold_until:
                    await asyncio.sleep(0.05)  # cancelled a moment ago: its canceller is marking it
                    continue
                if msg is None or not await self._renew(lane):
                    break
                self._submitted.pop(msg.id, None)
                try:
                    await answer_in_lane(lane, msg, self._handler)
                finally:
                    self._cancelling.discard(msg.id)
                if (await self.store.message(msg.id)).state in ("received", "answering"):
                    break  # not finished (stopping, or stopped): leave it for whoever claims next
        finally:
            keeper.cancel()
            with contextlib.suppress(Exception):
                await self.store.release_claim(lane.key, lane.token)
            if self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]
            self._wake.set()


def replica_name() -> str:
    """This process's name among the replicas (host and pid, plus randomness: names are never reused)."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


ReplicaName = Callable[[], str]

__all__ = ["ClaimScheduler", "replica_name"]
