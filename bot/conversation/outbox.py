"""What could not reach a platform is kept and sent again: the durable outbox.

A turn sends its final answer (and an operator's reply, a notice) straight away through its sink, as
before: nothing more is written on the happy path, where the pending message itself is the record (a
process killed before the platform's reply answers the message again after a restart). When a send fails
for a reason that passes — the platform answers 429 or 5xx, times out, cannot be reached — the reply is
stored as the message's answer, and the event is kept here (the store's stash, under ``outbox:``), so:

- the turn ends at once: the conversation's lane and the engine are free for the next message;
- the event is sent again with back-off, honouring the platform's Retry-After, across restarts and (with
  PostgreSQL) replicas — one replica delivers (an election), the others keep what they fail to send;
- in order per conversation: a newer reply of a conversation with replies waiting goes behind them;
- a platform that is down is probed by one send every back-off period (the oldest waiting; a new probe
  goes even while an earlier one hangs, so a recovery is seen within the period, not after a time-out),
  not hammered by every conversation (a turn's answer that goes through brings the next probe forward);
  when it answers, the rest follow at once, side by side, and a turn's answer still hanging on a request
  made during the outage is given up and kept with them (:class:`StillHanging`);
- each retry builds the sink with the platform messages the failed attempt left (``previous``), so a
  half-streamed message is completed, not left beside a second answer, and adapters whose platform lets
  them recognise an earlier send (Chatwoot's answer mark, the helpdesk API's delivery ids) do not double it;
- after ``deadline`` seconds (an hour by default) a reply is given up: the stored answer is marked
  ``failed`` with ``not delivered`` (the operator inbox shows it in red), ``delivery_failed`` counts it on
  /metrics, and the user is sent a short note asking them to ask again (tried once more, for as long).

Streaming previews are never kept: only what the user must finally read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.errors import describe, timed_out
from bot.l10n import i18n
from bot.ops.logs import Throttle
from bot.ops.metrics import Metrics
from bot.seams import Channel
from bot.store import NewMessage, Store
from bot.types import (
    AlreadySent,
    AnswerDone,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    Notice,
    ReplyEvent,
    SinkContext,
    platform_ids,
)

log = logging.getLogger(__name__)

BUCKET = "outbox:"
#: seconds between two probes of a platform that is down (doubling from the first, up to this)
MAX_BACKOFF = 2.0
ATTEMPT_TIMEOUT = 15.0  # seconds one send may take before it counts as failed (the platform hangs)
#: a probe of a platform that is down: what hangs this long is given up (the platform's own time-out is
#: longer), so a recovery is not waited out behind a request sent just before it
PROBE_TIMEOUT = 4.0
FIRST_BACKOFF = 0.5
PARALLEL = 8  # conversations of one platform delivered side by side once it answers
NOT_DELIVERED = "not delivered"


class StillHanging(TimeoutError):
    """A send made while its platform was in trouble, given up because it still had no answer when the
    platform was seen answering again (:meth:`Outbox.answers_again`): a request made into the outage, which
    nobody answers before its time-out. It may have arrived (a time-out): the retry looks first."""


def encode(event: ReplyEvent) -> dict[str, Any]:
    if isinstance(event, AnswerDone):
        return {"type": "answer", "text": event.text, "outcome": event.outcome}
    if isinstance(event, HandoffUpdate):
        return {"type": "handoff", "state": event.state, "mode": event.mode, "text": event.text,
                "by": event.by, "reason": event.reason}
    if isinstance(event, Notice):
        return {"type": "notice", "text": event.text, "kind": event.kind, "author": event.author}
    if isinstance(event, FileReply):
        return {"type": "file", "filename": event.filename, "mime": event.mime, "caption": event.caption,
                "data": base64.b64encode(event.data).decode("ascii")}
    raise TypeError(f"{type(event).__name__} is not kept in the outbox")


def decode(data: dict[str, Any]) -> ReplyEvent:
    kind = data["type"]
    if kind == "answer":
        return AnswerDone(data["text"], outcome=data.get("outcome", "done"))
    if kind == "handoff":
        return HandoffUpdate(data["state"], data["mode"], data["text"], by=data.get("by", ""),
                             reason=data.get("reason", ""))
    if kind == "notice":
        return Notice(data["text"], kind=data.get("kind", "info"), author=data.get("author", ""))
    return FileReply(data["filename"], data["mime"], base64.b64decode(data["data"]), caption=data.get("caption", ""))


@dataclass(frozen=True, slots=True)
class Waiting:
    """One kept event: its stash bucket and item (the stored reply's id, then the attempt)."""

    bucket: str
    item: str
    row: int
    attempt: int
    data: dict[str, Any]

    @property
    def key(self) -> ConversationKey:
        return ConversationKey.parse(self.data["key"])

    @property
    def due(self) -> float:
        return float(self.data["next_at"])


class Outbox:
    """See the module docstring. One per conversation manager; :meth:`start` runs its delivery loop."""

    def __init__(self, store: Store, channel_of: Callable[[str], Channel], metrics: Metrics, *,
                 deadline: float = 3600.0, clock: Callable[[], float] = time.time,
                 undeliverable: Callable[[ConversationKey, str], Awaitable[HandoffUpdate | None]] | None = None
                 ) -> None:
        self.store = store
        self.channel_of = channel_of
        #: a reply given up on a platform whose people can take over (a helpdesk): the conversation goes to
        #: them, and this returns what the user is told instead of "please ask again"
        self.undeliverable = undeliverable
        self._trouble: dict[str, tuple[float, str]] = {}  # platform -> since when it fails, and how
        self._warn = Throttle(60.0, clock=clock)
        self.metrics = metrics
        self.deadline = deadline
        self.clock = clock
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._down: dict[str, float] = {}  # platform -> when to probe it again
        self._backoff: dict[str, float] = {}
        self._up_at: dict[str, float] = {}  # platform -> when a send last went through
        self._back: dict[str, asyncio.Event] = {}  # platform in trouble -> set when it answers again
        self._probed: dict[str, float] = {}  # platform being probed -> when the last probe went
        self._not_before: dict[str, float] = {}  # platform -> until when it asked not to be sent to (Retry-After)
        self._probes: set[asyncio.Task[None]] = set()  # channels' own probes in flight
        self._keys: set[str] = set()  # conversations with replies kept here (by this process)
        self._flying: dict[str, asyncio.Task[None]] = {}  # conversation -> its delivery in progress
        self.delivered = 0

    # -- keeping ----------------------------------------------------------------------------

    @staticmethod
    def bucket(key: ConversationKey) -> str:
        return f"{BUCKET}{key.platform}:{key}"

    async def keep(self, key: ConversationKey, event: ReplyEvent, *, row: int, context: SinkContext,
                   error: BaseException | None = None, wait: float = 0.0, deadline: float | None = None,
                   last_try: bool = False) -> None:
        """Keep ``event`` (stored as message ``row``) to send again; the first retry after ``wait`` s."""
        now = self.clock()
        data = {"key": str(key), "event": encode(event), "route": dict(context.route),
                "language": context.language, "message_id": context.message_id, "reply_to": context.reply_to,
                "reply_row": context.reply_row,
                "previous": list(context.previous), "created": now, "next_at": now + wait,
                "deadline": now + (deadline if deadline is not None else self.deadline),
                "error": _describe(error), "last_try": last_try, "maybe_sent": self._maybe_sent(key, error)}
        await self.store.stash(self.bucket(key), _item(row, 0), json.dumps(data))
        self._keys.add(str(key))
        log.debug("%s for %s not delivered (%s): kept", type(event).__name__, key,
                  data["error"] or "waiting behind earlier replies")
        if error is not None and not isinstance(error, StillHanging):  # (that one says nothing of the platform)
            self._trouble_with(key.platform, data["error"])
        self._wake.set()

    # -- one line per platform in trouble ---------------------------------------------------

    def _channel(self, platform: str) -> Channel | None:
        try:
            return self.channel_of(platform)
        except Exception:
            return None

    def _trouble_with(self, platform: str, error: str) -> None:
        """A send to ``platform`` failed: at most one warning a minute, naming where and what to check."""
        since = self._trouble.setdefault(platform, (self.clock(), error))[0]
        self._trouble[platform] = (since, error)
        held = self._warn.allow(platform)
        if held is None:
            return
        channel = self._channel(platform)
        where = channel.endpoint if channel is not None and channel.endpoint else platform
        check = f"check {channel.endpoint_setting} and the network" if channel is not None and \
            channel.endpoint_setting else "check the platform and the network"
        waiting = len([k for k in self._keys if k.startswith(f"{platform}:")])
        lasting = self.clock() - since
        log.warning("%s: cannot deliver replies to %s (%s)%s: %d conversation(s) waiting, sent when it answers — %s",
                    platform, where, error, f" for {lasting:.0f} s" if lasting >= 1 else "", waiting, check)

    @property
    def probe_timeout(self) -> float:
        """How long a probe may hang before it is given up (PROBE_TIMEOUT)."""
        return PROBE_TIMEOUT

    def in_trouble(self, platform: str) -> bool:
        """Whether sends to ``platform`` fail now: one failed, and no kept reply has gone through since."""
        return platform in self._trouble

    async def answers_again(self, platform: str) -> None:
        """Returns once ``platform``, in trouble now, is seen answering again: a kept reply went through (at
        once when it is not in trouble)."""
        if platform in self._trouble:
            await self._back.setdefault(platform, asyncio.Event()).wait()

    def went_through(self, platform: str) -> None:
        """A send to ``platform`` outside the outbox (a turn's answer) went through. Being probed, the platform
        gets its next probe now (at most one every FIRST_BACKOFF), not at the end of the back-off period: live
        traffic shows a recovery sooner; only a probe that goes through declares it (one conversation's
        answer going through says little of the others' when only part of the platform fails)."""
        if platform not in self._backoff:
            return
        now = self.clock()
        # never before a Retry-After the platform asked for
        soonest = max(now, self._probed.get(platform, 0.0) + FIRST_BACKOFF, self._not_before.get(platform, 0.0))
        if soonest < self._down.get(platform, now):
            self._down[platform] = soonest
            self._wake.set()

    def _answers_again(self, platform: str) -> None:
        back = self._back.pop(platform, None)
        if back is not None:
            back.set()
        trouble = self._trouble.pop(platform, None)
        self._warn.reset(platform)
        if trouble is not None:
            channel = self._channel(platform)
            log.warning("%s: %s answers again after %.0f s: the kept replies are going out", platform,
                        channel.endpoint if channel is not None and channel.endpoint else "the platform",
                        self.clock() - trouble[0])

    def troubles(self) -> dict[str, str]:
        """Platforms replies cannot reach now, with why: what ``/readyz`` reports."""
        out = {}
        for platform, (since, error) in self._trouble.items():
            channel = self._channel(platform)
            where = channel.endpoint if channel is not None and channel.endpoint else platform
            out[platform] = f"cannot deliver replies to {where} for {self.clock() - since:.0f} s ({error})"
        return out

    def _maybe_sent(self, key: ConversationKey, error: BaseException | None) -> bool:
        """May a send that failed with ``error`` have arrived all the same? (None: never sent.)"""
        if error is None:
            return False
        try:
            return self.channel_of(key.platform).may_have_arrived(error)
        except Exception:
            return True

    def maybe_waiting(self, key: ConversationKey) -> bool:
        """Cheap first check (no store read on the happy path): may replies of ``key`` be waiting?"""
        return str(key) in self._keys

    async def waiting(self, key: ConversationKey) -> bool:
        """Are replies of this conversation waiting? (A newer one then goes behind them.)"""
        found = bool((await self.store.stashed(self.bucket(key))).get(self.bucket(key)))
        if not found:
            self._keys.discard(str(key))
        return found

    # -- delivering -------------------------------------------------------------------------

    def start(self, elect: Callable[[str, Callable[[], Awaitable[None]]], asyncio.Task[None]] | None = None) -> None:
        """Deliver in the background (with replicas: on the one replica the election picks)."""
        if self._task is None:
            self._task = elect("internvl-bot outbox", self.run) if elect else asyncio.create_task(
                self.run(), name="outbox")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._flying.values(), *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self._launch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store away: try again soon, never stop delivering
                log.warning("the outbox could not be read (%s): trying again", exc)
                wait = MAX_BACKOFF
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # (wait_for can swallow a cancel on 3.11)
                    await self._wake.wait()

    async def deliver_due(self) -> float:
        """Deliver what is due now and wait until it is settled (the loop does the same without waiting).
        Returns the seconds until the next one is due."""
        while True:
            wait = await self._launch()
            if not self._flying:
                return wait
            await asyncio.gather(*self._flying.values(), return_exceptions=True)

    async def _launch(self) -> float:
        """Start delivering each conversation whose oldest kept event is due and whose platform may answer:
        every such conversation of a platform that answers (up to PARALLEL at a time), one probe of a
        platform that does not. Returns the seconds until something is due again."""
        async with self._round:  # one reading of the stash at a time; a conversation in flight is never started twice
            queues = _queues(await self.store.stashed(BUCKET))
            self._keys = {str(entries[0].key) for entries in queues.values() if entries}
            now = self.clock()
            next_due = 60.0
            by_platform: dict[str, list[list[Waiting]]] = {}
            for entries in queues.values():
                if entries and str(entries[0].key) not in self._flying:
                    by_platform.setdefault(entries[0].key.platform, []).append(entries)
            for platform, waiting in by_platform.items():
                due: list[list[Waiting]] = []
                for entries in waiting:
                    head = entries[0]
                    if now >= head.data["deadline"]:
                        self._fly(entries)  # past its deadline: its last try now, whatever the probe schedule
                    elif head.due > now:
                        next_due = min(next_due, head.due - now)
                    else:
                        due.append(entries)
                if not due:
                    continue
                if platform not in self._backoff:  # it answers: everything due, side by side
                    flying = sum(1 for key in self._flying if key.startswith(f"{platform}:"))
                    for entries in due[:max(0, PARALLEL - flying)]:
                        self._fly(entries)
                    continue
                probe_at = self._down.get(platform, 0.0)
                if probe_at > now:
                    next_due = min(next_due, probe_at - now)
                    continue
                # one probe; the next one after the back-off even while this one hangs (it may never answer)
                channel = self._channel(platform)
                if channel is not None and channel.probe is not None:
                    task = asyncio.create_task(self._probe(platform, channel, due[0][0].key), name=f"probe {platform}")
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
                else:
                    self._fly(due[0])
                self._probed[platform] = now
                self._down[platform] = now + self._backoff[platform]
                next_due = min(next_due, self._backoff[platform])
            return max(0.05, next_due)

    async def _probe(self, platform: str, channel: Channel, key: ConversationKey) -> None:
        """The channel's own probe of a platform that is down: it answering lets every kept reply go."""
        assert channel.probe is not None
        started = self.clock()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await channel.probe(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if platform not in self._backoff or self._up_at.get(platform, 0.0) > started:
                return  # seen answering meanwhile (a turn's answer, an earlier probe)
            # no answer, or one that says nothing of when: the probe schedule stands
            self._still_down(platform, started, None if timed_out(exc) else channel.retry_after(exc))
            self._trouble_with(platform, _describe(exc))
            return
        self._back_up(platform)
        self._wake.set()

    def _still_down(self, platform: str, started: float, wait: float | None) -> float:
        """A send or probe that went at ``started`` failed: the back-off doubles and the next probe is due then
        — counted from when it went when the platform did not answer (``wait`` None: counted from the time-out,
        the probe period would be the time-out, and a recovery seen that late), else from now and never before
        the ``wait`` (its Retry-After) it asked for. Returns the back-off."""
        backoff = min(MAX_BACKOFF, self._backoff.get(platform, FIRST_BACKOFF / 2) * 2)
        self._backoff[platform] = backoff
        if wait is None:
            self._down[platform] = max(self._down.get(platform, 0.0), started + backoff)
        else:
            now = self.clock()
            self._down[platform] = now + max(wait, backoff)
            self._not_before[platform] = now + wait
        return backoff

    def _back_up(self, platform: str) -> None:
        """``platform`` answered: no more probing; its kept replies go out."""
        self._down.pop(platform, None)
        self._backoff.pop(platform, None)
        self._probed.pop(platform, None)
        self._not_before.pop(platform, None)
        self._up_at[platform] = self.clock()
        self._answers_again(platform)

    def _fly(self, entries: list[Waiting]) -> None:
        key = str(entries[0].key)
        self._flying[key] = asyncio.create_task(self._deliver_queue(key, entries), name=f"outbox {key}")

    async def _deliver_queue(self, key: str, entries: list[Waiting]) -> None:
        """One conversation's kept events, in order, until one is not due or fails."""
        try:
            for entry in entries:
                now = self.clock()
                if entry.due > now and now < entry.data["deadline"]:
                    break  # in order: nothing after it goes first
                if not await self._attempt(entry):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store away mid-delivery: the next round reads it again
            log.warning("delivering the kept replies of %s stopped (%s): trying again", key, exc)
        finally:
            self._flying.pop(key, None)
            self._wake.set()

    async def _attempt(self, entry: Waiting) -> bool:
        """Send one kept event; True when it is settled (delivered or given up)."""
        key, data = entry.key, entry.data
        event = decode(data["event"])
        try:
            channel = self.channel_of(key.platform)
        except Exception:
            return False  # this replica does not serve that platform (yet): left for one that does
        previous = tuple(data.get("previous") or ())
        if data.get("message_id") is not None:  # what the platform told us since (an echo of an earlier send)
            with contextlib.suppress(KeyError):
                noted = (await self.store.message(int(data["message_id"]))).drafts
                previous = tuple(dict.fromkeys(previous + tuple(noted)))
        context = SinkContext(key=key, reply_to=data.get("reply_to"), message_id=data.get("message_id"),
                              previous=previous, route=data.get("route") or {},
                              language=data.get("language") or "en", reply_row=data.get("reply_row"),
                              resend=bool(data.get("maybe_sent", True)))
        started = self.clock()
        probe = key.platform in self._backoff
        try:
            # a platform that hangs: the next probe, not forever
            async with asyncio.timeout(PROBE_TIMEOUT if probe else ATTEMPT_TIMEOUT):
                result = await channel.sink_for(context).emit(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._failed(entry, channel, exc, started)
        await self.store.set_platform_ids(entry.row, platform_ids(result))
        await self.store.drop_stash(entry.bucket, [entry.item])
        if probe and isinstance(result, AlreadySent) and await self.store.stashed(f"{BUCKET}{key.platform}:"):
            # found there without a request (the platform's echo of a send that hung): nothing says it answers;
            # the next waiting reply probes it now (none left waiting: nothing to probe, nothing in trouble)
            self._probed.pop(key.platform, None)
            self._down[key.platform] = self.clock()
        else:
            self._back_up(key.platform)
        self.delivered += 1
        self.metrics.adapter(key.platform).redelivered.inc()
        log.info("%s for %s delivered after %.1f s", type(event).__name__, key, self.clock() - data["created"])
        return True

    async def _failed(self, entry: Waiting, channel: Channel, exc: BaseException, started: float) -> bool:
        data, platform = entry.data, entry.key.platform
        wait = channel.retry_after(exc)
        if wait is None and isinstance(exc, TimeoutError):
            # this outbox's own time-out of a send that hung (a platform not answering): an SDK's retry rule
            # does not know it (Telegram's knows its TimedOut only), and it is never a refusal for good
            wait = 0.0
        now = self.clock()
        if wait is None or now >= data["deadline"]:
            await self._give_up(entry, exc if wait is None else None)
            return True
        backoff = 0.0
        if self._up_at.get(platform, 0.0) <= started:  # not a request that hung while the platform came back
            backoff = self._still_down(platform, started, None if timed_out(exc) else wait)
        data = {**data, "attempts": int(data.get("attempts", 0)) + 1, "error": _describe(exc),
                "maybe_sent": bool(data.get("maybe_sent", True)) or channel.may_have_arrived(exc)}
        # the new attempt's item first, then the old one goes: a crash between keeps both, read as one
        await self.store.stash(entry.bucket, _item(entry.row, entry.attempt + 1), json.dumps(data))
        await self.store.drop_stash(entry.bucket, [entry.item])
        log.debug("%s still unreachable (%s): next try in %.1f s", platform, data["error"], max(wait, backoff))
        self._trouble_with(platform, data["error"])
        return False

    async def _give_up(self, entry: Waiting, permanent: BaseException | None) -> None:
        data, key = entry.data, entry.key
        why = _describe(permanent) if permanent is not None else f"still failing after {self.deadline:g} s"
        await self.store.drop_stash(entry.bucket, [entry.item])
        await self.store.set_state(entry.row, "failed", error=f"{NOT_DELIVERED}: {data.get('error') or why}"[:500])
        self.metrics.adapter(key.platform).delivery_failed.inc()
        log.error("a reply for %s was not delivered (%s): given up; the operator inbox shows it", key, why)
        if data.get("last_try"):
            return
        lang = data.get("language") or "en"
        channel = self._channel(key.platform)
        handed: HandoffUpdate | None = None
        if channel is not None and channel.reaches_people and self.undeliverable is not None:
            # a helpdesk: its people take the conversation rather than leave it with a bot that cannot post
            handed = await self.undeliverable(key, lang)
        if handed is None and permanent is not None:
            return  # the note would fail the same way
        note: Notice | HandoffUpdate = handed or Notice(i18n.text("delivery_failed", lang), kind="error")
        row = await self.store.add_message(key, _notice_row(note))
        context = SinkContext(key=key, route=data.get("route") or {}, language=lang)
        await self.keep(key, note, row=row, context=context, last_try=True)


def _notice_row(note: Notice | HandoffUpdate) -> NewMessage:
    return NewMessage(role="assistant", text=note.text, kind="notice", state="answered")


def _item(row: int, attempt: int) -> str:
    return f"{row:012d}.{attempt:04d}"


def _describe(exc: BaseException | None) -> str:
    return describe(exc)[:200] if exc is not None else ""


def _queues(stashed: dict[str, list[tuple[str, str]]]) -> dict[str, list[Waiting]]:
    """Per conversation, its kept events in order (a row kept twice by a crash mid-retry: the newest)."""
    out: dict[str, list[Waiting]] = {}
    for bucket, items in stashed.items():
        latest: dict[int, Waiting] = {}
        for item, payload in items:
            row_text, _, attempt_text = item.partition(".")
            try:
                row, attempt = int(row_text), int(attempt_text or 0)
                data = json.loads(payload)
            except ValueError:
                log.error("outbox item %s/%s is not readable: left alone", bucket, item)
                continue
            known = latest.get(row)
            if known is None or attempt > known.attempt:
                latest[row] = Waiting(bucket, item, row, attempt, data)
        out[bucket] = [latest[row] for row in sorted(latest)]
    return out
