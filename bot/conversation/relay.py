"""Between the engine and a platform: the engine never waits for a sink.

A :class:`Relay` wraps the sink of one turn. The engine's chunks are :meth:`Relay.push`-ed into a
buffer without waiting for the platform; a pump task hands them to the sink, coalesced, as fast as the
sink takes them — a Telegram sink that edits a message per chunk sees fewer, larger chunks, and the GPU
slot is released as soon as the model is done. A sink that only hands events to in-process queues (the
web chat's) says so with ``immediate = True`` and is called inline, without the pump. Other events keep their order behind the text
(:meth:`Relay.send` waits for them; :meth:`Relay.post` does not). A sink that fails stops the relay:
the engine loop sees :attr:`Relay.error` and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from bot.ops.metrics import Metrics
from bot.seams import ImmediateSink, ReplySink
from bot.types import AnswerDone, FileReply, HandoffUpdate, Notice, PlatformIds, ReplyEvent, Status, TextChunk

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Item:
    event: ReplyEvent | None = None
    text: str = ""
    done: asyncio.Future[PlatformIds] | None = field(default=None)


class Relay:
    """The buffered, ordered path of one turn's events to its sink. See the module docstring."""

    def __init__(self, sink: ReplySink) -> None:
        self.sink = sink
        self.immediate = isinstance(sink, ImmediateSink) and bool(sink.immediate)
        self._items: deque[_Item] = deque()
        self._pump: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.streamed = ""  # every text pushed, whether or not the sink has shown it yet
        self.chunks_in = 0
        self.chunks_out = 0

    # -- producer side --------------------------------------------------------------------

    async def push(self, text: str) -> None:
        """A chunk of the answer, from the engine loop. Never waits for a platform."""
        if not text:
            return
        self.streamed += text  # the whole answer, also when the sink failed (the outbox may send it later)
        if self.error is not None:
            return
        self.chunks_in += 1
        if self.immediate and not self._items and (self._pump is None or self._pump.done()):
            with contextlib.suppress(Exception):
                await self._emit_now(TextChunk(text))
                self.chunks_out += 1
            return
        if self._items and self._items[-1].event is None and self._items[-1].done is None:
            self._items[-1].text += text  # coalesce with text the sink has not taken yet
        else:
            self._items.append(_Item(text=text))
        self._wake()

    def post(self, event: ReplyEvent) -> None:
        """An event that must not hold up its caller (a progress status from a decoding thread's callback).
        A newer status replaces one the sink has not shown yet."""
        if self.error is not None:
            return
        if isinstance(event, Status) and self._items and isinstance(self._items[-1].event, Status) \
                and self._items[-1].done is None:
            self._items[-1].event = event
        else:
            self._items.append(_Item(event=event))
        self._wake()

    async def note(self, event: ReplyEvent) -> None:
        """An event that must not hold up the turn (a status, a note): inline for an immediate sink,
        else queued like :meth:`post`."""
        if self.immediate and not self._items and (self._pump is None or self._pump.done()):
            with contextlib.suppress(Exception):
                await self._emit_now(event)
            return
        self.post(event)

    async def send(self, event: ReplyEvent) -> PlatformIds:
        """An event, in order after the text pushed so far; returns what the sink returned. Raises when
        the sink failed (now or earlier)."""
        if self.error is not None:
            raise self.error
        if not self._items and (self._pump is None or self._pump.done()):
            return await self._emit_now(event)  # nothing ahead of it: no need for the pump
        future: asyncio.Future[PlatformIds] = asyncio.get_running_loop().create_future()
        self._items.append(_Item(event=event, done=future))
        self._wake()
        return await asyncio.shield(future)

    async def flush(self) -> None:
        """Wait until the sink has taken everything; raise its error, if any."""
        while self._pump is not None and not self._pump.done():
            await asyncio.shield(self._pump)
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        """Stop the pump (a turn cancelled in a hurry); events not yet shown are dropped."""
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        for item in self._items:
            if item.done is not None and not item.done.done():
                item.done.cancel()
        self._items.clear()

    async def _emit_now(self, event: ReplyEvent) -> PlatformIds:
        try:
            return await self.sink.emit(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            log.warning("the reply sink failed on %s: %s", type(event).__name__, exc)
            raise

    # -- the pump -------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name="relay")

    async def _run(self) -> None:
        while self._items:
            item = self._items.popleft()
            event = item.event if item.event is not None else TextChunk(item.text)
            try:
                result = await self.sink.emit(event)
            except asyncio.CancelledError:
                if item.done is not None and not item.done.done():
                    item.done.cancel()
                raise
            except Exception as exc:
                self.error = exc
                if item.done is not None and not item.done.done():
                    item.done.set_exception(exc)
                log.warning("the reply sink failed on %s: %s", type(event).__name__, exc)
                for rest in self._items:
                    if rest.done is not None and not rest.done.done():
                        rest.done.set_exception(exc)
                self._items.clear()
                return
            if isinstance(event, TextChunk):
                self.chunks_out += 1
            if item.done is not None and not item.done.done():
                item.done.set_result(result)


class MeteredSink:
    """Counts what reaches the user and times the answer (first token, complete) from the message's arrival."""

    def __init__(self, sink: ReplySink, metrics: Metrics, adapter: str, arrived: float) -> None:
        self.sink = sink
        self.immediate = isinstance(sink, ImmediateSink) and bool(sink.immediate)
        self.metrics = metrics.adapter(adapter)
        self.adapter = adapter
        self.arrived = arrived
        self.first = True
        self.first_at: float | None = None  # when the first text went out (monotonic)

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        result = await self.sink.emit(event)
        m = self.metrics
        if isinstance(event, TextChunk):
            if self.first:
                self.first = False
                self.first_at = time.monotonic()
                m.ttft_seconds.observe(self.first_at - self.arrived)
        elif isinstance(event, AnswerDone):
            m.answers_out.inc()
            if event.outcome == "done":
                m.answer_seconds.observe(time.monotonic() - self.arrived)
        elif isinstance(event, Notice | HandoffUpdate):
            (m.errors_out if isinstance(event, Notice) and event.kind == "error" else m.notices_out).inc()
        elif isinstance(event, FileReply):
            m.files_out.inc()
        return result


class MarkerFilter:
    """Takes a marker out of a streamed answer (the model's "[handoff]"), holding back just enough text to
    never show half of it. ``found`` tells whether it came."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.found = False
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        if self.marker in text:
            self.found = True
            text = text.replace(self.marker, "")
        for size in range(min(len(self.marker) - 1, len(text)), 0, -1):
            if self.marker.startswith(text[-size:]):
                self._held = text[-size:]
                return text[:-size]
        self._held = ""
        return text

    def rest(self) -> str:
        held, self._held = self._held, ""
        return held
