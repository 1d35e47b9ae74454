"""A reply sink that times one answer: its first streamed text and its end (what the benches measure)."""

from __future__ import annotations

import asyncio
import time

from bot.types import AnswerDone, ReplyEvent, TextChunk


class TimingSink:
    """``first``: when the first text arrived; ``done`` resolves to (end time, the answer's text)."""

    immediate = True  # hands nothing to any platform: the relay may call it inline

    def __init__(self, started: float = 0.0) -> None:
        self.started = started or time.perf_counter()
        self.first: float | None = None
        self.done: asyncio.Future[tuple[float, str]] = asyncio.get_running_loop().create_future()

    async def emit(self, event: ReplyEvent) -> str | None:
        if isinstance(event, TextChunk) and self.first is None:
            self.first = time.perf_counter()
        elif isinstance(event, AnswerDone) and not self.done.done():
            self.done.set_result((time.perf_counter(), event.text))
        return None
