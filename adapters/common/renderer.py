"""Streaming a turn's reply events into platform messages.

:class:`StreamingRenderer` is the :class:`~bot.types.ReplySink` platform adapters use: it turns the
reply events of one turn into the calls of a :class:`MessageTransport` (send, edit, delete, a draft
preview, a typing status, a file). It shows the answer as it grows — one message edited at most every
``min_interval`` seconds, edits whose text did not change skipped — splits a long answer at paragraph
boundaries under the platform's limit (a finished part gets its final formatting and is never touched
again), and guarantees the final text: the last update is always made, formatted, whatever was skipped
before. Messages a killed process left for the same turn (``SinkContext.previous``) are edited into the
answer, and extra ones deleted, so the user never sees two answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from adapters.common.sink import signed
from bot.types import (
    AnswerDone,
    FileReply,
    HandoffUpdate,
    Notice,
    PlatformIds,
    ReplyEvent,
    SinkContext,
    Status,
    TextChunk,
)

log = logging.getLogger(__name__)

Measure = Callable[[str], int]


@runtime_checkable
class MessageTransport(Protocol):
    """The platform calls a renderer makes. Each call does its own rate limiting and retries (see
    :mod:`adapters.common.ratelimit`) and raises only when the platform really refused.

    ``send``/``edit`` get Markdown; ``final`` says whether this is the part's finished text (render it
    formatted) or a preview while it streams (plain text is fine); ``closing`` marks the last message of a
    finished answer (where a platform puts its buttons). ``preview`` shows a draft without creating a
    message (Telegram's ``sendMessageDraft``); transports without drafts set ``supports_preview`` False.
    ``previews_affordable()`` says whether the platform's budget allows previews now: when it does not
    (a small per-workspace edit budget spent by a burst), only the finished text is written, so that it
    does not wait behind previews for the budget.
    ``edit`` of an unchanged text must not fail; ``edit`` of a message the platform no longer has raises
    :class:`MessageGone` (the renderer then sends it anew).
    """

    limit: int
    supports_preview: bool

    def measure(self, text: str) -> int: ...
    def previews_affordable(self) -> bool: ...
    async def send(self, text: str, *, final: bool, closing: bool = False) -> str: ...
    async def edit(self, message_id: str, text: str, *, final: bool, closing: bool = False) -> None: ...
    async def delete(self, message_id: str) -> None: ...
    async def preview(self, text: str) -> None: ...
    async def status(self, status: Status) -> None: ...
    async def file(self, reply: FileReply) -> str: ...


class MessageGone(Exception):
    """The platform no longer has the message to edit (deleted by a user or an admin)."""


# ---------------------------------------------------------------------------------------------
# Splitting


_FENCE = re.compile(r"^(```|~~~)(.*)$", re.M)
_SENTENCE_END = re.compile(r"[.!?。！？…](?:\s|$)")


def _open_fence(text: str) -> str | None:
    """The opening line of a code fence ``text`` leaves open, if any."""
    opened: str | None = None
    for m in _FENCE.finditer(text):
        if opened is None:
            opened = m.group(0)
        elif m.group(1) == opened[:3]:
            opened = None
    return opened


def _window(text: str, limit: int, measure: Measure) -> int:
    """The longest prefix of ``text`` (in characters) whose measure is within ``limit``."""
    if measure is len:
        return min(len(text), limit)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut(window: str) -> int:
    """Where to end a piece within ``window``: a paragraph, then a line, a sentence, a word; else anywhere."""
    floor = len(window) // 3  # never make a tiny piece just to end on a paragraph
    for finder in (lambda w: w.rfind("\n\n"), lambda w: w.rfind("\n")):
        at = finder(window)
        if at > floor:
            return at
    ends = [m.end() for m in _SENTENCE_END.finditer(window) if m.end() > floor]
    if ends:
        return ends[-1]
    at = window.rfind(" ")
    return at if at > floor else len(window)


def split_text(text: str, limit: int, measure: Measure = len) -> list[str]:
    """``text`` in pieces whose ``measure`` is at most ``limit``, cut at paragraph boundaries where possible.

    A code fence cut in two is closed at the end of one piece and reopened at the start of the next.
    Pieces are stable as ``text`` grows: a piece followed by another never changes again.
    """
    if limit < 16:
        raise ValueError("a message limit under 16 characters cannot be split sensibly")
    pieces: list[str] = []
    rest = text
    reopen = ""
    margin = 8  # room for closing a code fence
    while measure(reopen + rest) > limit:
        body = reopen + rest
        window = _window(body, limit - margin, measure)
        cut = _cut(body[:window])
        if cut <= len(reopen):
            if window <= len(reopen):  # the fence's opening line alone fills a piece: it is not reopened
                reopen = ""
                continue
            cut = window
        piece = body[:cut].rstrip()
        fence = _open_fence(piece)
        if fence is not None:
            piece += "\n" + fence[:3]
        pieces.append(piece)
        rest = body[cut:].lstrip("\n")
        reopen = fence + "\n" if fence is not None else ""
        if rest.startswith(reopen) and reopen:
            reopen = ""
    last = (reopen + rest).strip("\n") if (reopen or rest) else ""
    if last or not pieces:
        pieces.append(last)
    return pieces


# ---------------------------------------------------------------------------------------------
# The renderer


@dataclass
class _Part:
    id: str | None
    text: str | None = None  # what the platform shows now (None: unknown, a message left by a killed run)
    final: bool = False


class StreamingRenderer:
    """See the module docstring. One per turn."""

    def __init__(self, transport: MessageTransport, context: SinkContext | None = None, *,
                 min_interval: float = 1.0, typing_interval: float = 4.0, keep_typing: float = 0.0,
                 progress_as_status: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.context = context or SinkContext(key=None)  # type: ignore[arg-type]
        self.min_interval = min_interval
        self.typing_interval = typing_interval
        self.clock = clock
        self.parts: list[_Part] = [_Part(pid) for pid in self.context.previous]
        self.answer = ""
        self.placeholder = ""  # progress text shown before the answer starts
        self._last_write = float("-inf")
        self._last_typing = float("-inf")
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.writes = 0  # platform writes made (sends, edits, previews, deletes): for tests and the bench
        self.done = False
        self.keep_typing = keep_typing  # seconds to keep the typing status alive until text shows (0: once)
        #: progress goes to the platform's status line (Slack's assistant status), not a placeholder message
        self.progress_as_status = progress_as_status
        self._typing: asyncio.Task[None] | None = None
        self.previews_off = False  # set when a preview failed: the platform gets the final text only
        self._status_call: asyncio.Task[None] | None = None
        self._closing = False  # rendering the finished answer: its last message gets the platform's buttons

    # -- ReplySink ------------------------------------------------------------------------

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, TextChunk):
            self.answer += event.text
            await self._maybe_flush()
            return None
        if isinstance(event, AnswerDone):
            self._cancel_timer()
            self._stop_typing()
            if event.silent:
                return await self._end_silently()
            self.answer = event.text
            self._closing = True
            async with self._lock:
                await self._render(self.answer, final=True)
                self.done = True
            return tuple(p.id for p in self.parts if p.id)
        if isinstance(event, Status):
            await self._status(event)
            return None
        if isinstance(event, Notice | HandoffUpdate):
            text = signed(event)
            if isinstance(event, Notice) and event.kind == "error":
                self._stop_typing()
            if isinstance(event, Notice) and event.kind == "error" and not self.answer and self.parts:
                # The turn ends with an error before any answer: it replaces the progress message (or what a
                # killed run left), rather than standing beside it.
                self._cancel_timer()
                async with self._lock:
                    await self._render(text, final=True)
                    self.done = True
                return tuple(p.id for p in self.parts if p.id)
            return await self._standalone(text)
        if isinstance(event, FileReply):
            return await self.transport.file(event)
        return None

    async def _end_silently(self) -> PlatformIds:
        """Cancelled before any text: typing stops (above) and a progress placeholder goes away."""
        async with self._lock:
            self.done = True
            for part in self.parts:
                if part.id:
                    with contextlib.suppress(Exception):
                        await self.transport.delete(part.id)
            self.parts.clear()
        return None

    # -- streaming ------------------------------------------------------------------------

    async def _maybe_flush(self) -> None:
        if self.previews_off or not self.transport.previews_affordable():
            return
        due = self._last_write + self.min_interval
        if self.clock() >= due:
            async with self._lock:
                if not self.done:
                    await self._render(self.answer, final=False)
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_at(due))

    async def _flush_at(self, due: float) -> None:
        await asyncio.sleep(max(0.0, due - self.clock()))
        async with self._lock:
            if not self.done and not self.previews_off and self.transport.previews_affordable():
                await self._render(self.answer, final=False)

    def _cancel_timer(self) -> None:
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        self._timer = None

    def _cosmetic(self, status: Status) -> None:
        """A status or typing call, never awaited in front of the answer's text: one in flight at a time, a
        newer one while it runs is dropped (a platform's status bucket is small and shared)."""
        if self._status_call is not None and not self._status_call.done():
            return

        async def call() -> None:
            with contextlib.suppress(Exception):
                await self.transport.status(status)

        self._status_call = asyncio.create_task(call())

    async def _status(self, status: Status) -> None:
        now = self.clock()
        if status.kind == "progress" and status.text and self.progress_as_status:
            if not self.answer and now >= self._last_typing + self.min_interval:
                self._last_typing = now
                self._cosmetic(status)
            return
        if status.kind == "progress" and status.text and not self.answer:
            self.placeholder = status.text
            if now >= self._last_write + self.min_interval:
                async with self._lock:
                    if not self.done and not self.answer:
                        await self._render(self.placeholder, final=False)
            return
        if now >= self._last_typing + self.typing_interval:
            self._last_typing = now
            self._cosmetic(status)
        if self.keep_typing and status.kind == "typing" and self._typing is None:
            self._typing = asyncio.create_task(self._typing_until_text(status))

    async def _typing_until_text(self, status: Status) -> None:
        """Platforms show "typing…" for a few seconds: repeat it until the first text or progress shows."""
        deadline = self.clock() + self.keep_typing
        while not self.done and not self.answer and not self.parts and self.clock() < deadline:
            await asyncio.sleep(self.typing_interval)
            if self.done or self.answer or self.parts:
                return
            self._last_typing = self.clock()
            with contextlib.suppress(Exception):
                await self.transport.status(status)

    def _stop_typing(self) -> None:
        if self._typing is not None and not self._typing.done():
            self._typing.cancel()
        if self._status_call is not None and not self._status_call.done():
            self._status_call.cancel()  # a status landing after the answer would show "thinking" again

    async def _render(self, text: str, *, final: bool) -> None:
        """Bring the platform to ``text``: finished pieces formatted, the growing one as a preview."""
        pieces = split_text(text, self.transport.limit, self.transport.measure)
        if not final and pieces and not pieces[-1].strip():
            pieces.pop()
        for i, piece in enumerate(pieces):
            is_final = final or i < len(pieces) - 1
            closing = final and i == len(pieces) - 1 and self._closing
            if i < len(self.parts) and self.parts[i].final and self.parts[i].text == piece and not closing:
                continue
            await self._show(i, piece, final=is_final, streaming=not final and i == len(pieces) - 1, closing=closing)
        if final:
            extra = self.parts[len(pieces):]
            del self.parts[len(pieces):]
            for part in extra:
                if part.id:
                    with contextlib.suppress(Exception):
                        await self.transport.delete(part.id)
                        self.writes += 1
            await self.context.remember([p.id for p in self.parts if p.id])
        else:
            self._last_write = self.clock()

    async def _show(self, i: int, text: str, *, final: bool, streaming: bool, closing: bool = False) -> None:
        if not text.strip():
            return
        transport = self.transport
        try:
            if i < len(self.parts):
                part = self.parts[i]
                if part.text == text and part.final == final and not closing:
                    return
                if part.id is None:  # a draft preview so far: now it becomes a message
                    if streaming and transport.supports_preview:
                        await transport.preview(text)
                    else:
                        part.id = await transport.send(text, final=final, closing=closing)
                        await self.context.remember([p.id for p in self.parts if p.id])
                else:
                    try:
                        await transport.edit(part.id, text, final=final, closing=closing)
                    except MessageGone:  # deleted meanwhile: the text goes into a new message
                        part.id = await transport.send(text, final=final, closing=closing)
                        await self.context.remember([p.id for p in self.parts if p.id])
                part.text, part.final = text, final
            elif streaming and transport.supports_preview:
                await transport.preview(text)
                self.parts.append(_Part(None, text, False))
            else:
                pid = await transport.send(text, final=final, closing=closing)
                self.parts.append(_Part(pid, text, final))
                await self.context.remember([p.id for p in self.parts if p.id])
            self.writes += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if final:
                raise  # the finished text must arrive: sent again by the outbox, or the user is told
            # a platform failing (down, hanging) gets no more previews this turn: only the final text
            self.previews_off = True
            log.info("a streaming update failed (%s): no more previews for this answer", exc)

    async def _standalone(self, text: str) -> tuple[str, ...]:
        """A complete message (a notice, an error), split under the limit, formatted."""
        ids = []
        for piece in split_text(text, self.transport.limit, self.transport.measure):
            if piece.strip():
                ids.append(await self.transport.send(piece, final=True))
                self.writes += 1
        return tuple(ids)


# ---------------------------------------------------------------------------------------------
# In memory


@dataclass
class ShownMessage:
    """A message as the platform shows it (the in-memory transport's record)."""

    id: str
    text: str
    final: bool
    edits: int = 0
    deleted: bool = False
    history: list[str] | None = None
    closing: bool = False  # the last message of a finished answer (where buttons go)


class MemoryTransport:
    """In-memory :class:`MessageTransport`: a chat's messages as a user would see them. Tests, the bench
    and scripts use it; ``fail_on`` makes the next calls of a method raise."""

    def __init__(self, *, limit: int = 4096, supports_preview: bool = False, measure: Measure = len) -> None:
        self.limit = limit
        self.supports_preview = supports_preview
        self._measure = measure
        self.messages: dict[str, ShownMessage] = {}
        self.previews: list[str] = []
        self.statuses: list[Status] = []
        self.files: list[FileReply] = []
        self.calls: list[str] = []
        self.failures: dict[str, list[BaseException]] = {}
        self._ids = 0
        self.budget = True  # what previews_affordable() answers

    def measure(self, text: str) -> int:
        return self._measure(text)

    def previews_affordable(self) -> bool:
        return self.budget

    def fail_on(self, method: str, error: BaseException, times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([error] * times)

    def _call(self, method: str) -> None:
        self.calls.append(method)
        pending = self.failures.get(method)
        if pending:
            raise pending.pop(0)

    async def send(self, text: str, *, final: bool, closing: bool = False) -> str:
        self._call("send")
        if self.measure(text) > self.limit:
            raise ValueError(f"message longer than {self.limit}")
        self._ids += 1
        mid = str(self._ids)
        self.messages[mid] = ShownMessage(mid, text, final, history=[text], closing=closing)
        return mid

    async def edit(self, message_id: str, text: str, *, final: bool, closing: bool = False) -> None:
        self._call("edit")
        shown = self.messages.get(message_id)
        if shown is None or shown.deleted:
            raise MessageGone(message_id)
        shown.closing = shown.closing or closing
        if self.measure(text) > self.limit:
            raise ValueError(f"message longer than {self.limit}")
        if shown.text != text or shown.final != final:
            shown.text, shown.final = text, final
            shown.edits += 1
            assert shown.history is not None
            shown.history.append(text)

    async def delete(self, message_id: str) -> None:
        self._call("delete")
        self.messages[message_id].deleted = True

    async def preview(self, text: str) -> None:
        self._call("preview")
        self.previews.append(text)

    async def status(self, status: Status) -> None:
        self._call("status")
        self.statuses.append(status)

    async def file(self, reply: FileReply) -> str:
        self._call("file")
        self.files.append(reply)
        self._ids += 1
        return str(self._ids)

    @property
    def visible(self) -> list[str]:
        """The texts a user sees, in order (deleted messages gone)."""
        return [m.text for m in self.messages.values() if not m.deleted]

    def seed(self, text: str) -> str:
        """A message that exists before the turn (what a killed run left)."""
        self._ids += 1
        mid = str(self._ids)
        self.messages[mid] = ShownMessage(mid, text, False, history=[text])
        return mid
