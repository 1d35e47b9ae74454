"""The echo engine: instant, deterministic answers without a model.

It is the in-memory implementation of the engine seam (tests and the bench use it) and a real
option for checking an adapter's wiring end to end before a GPU is available (``engine.kind: echo``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from bot.config import GenerationSettings
from bot.engines.base import ChatMessage, EngineInfo, LimitedEngine
from bot.media.images import tile_count


class EchoEngine(LimitedEngine):
    """Answers with what it received: the last user text, a line per knowledge passage and per image (size and
    tiles).

    ``delay`` (seconds per chunk) or ``delay_for`` (per text, looked up by the user text) make it slow on
    purpose, for ordering tests; ``fail_on`` makes it raise for a given user text; ``record`` keeps every
    prompt in ``calls`` (tests only: prompts hold decoded images).
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        context_length: int = 8192,
        delay: float = 0.0,
        delay_for: Callable[[str], float] | None = None,
        fail_on: str | None = None,
        record: bool = False,
    ) -> None:
        super().__init__(max_concurrency)
        self.info = EngineInfo(name="echo", context_length=context_length)
        self.delay = delay
        self.delay_for = delay_for
        self.fail_on = fail_on
        self.record = record
        self.calls: list[list[ChatMessage]] = []  # prompts received, when ``record`` (tests): they hold images
        self.active = 0
        self.peak_active = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def count_tokens(self, text: str) -> int:
        # About four characters a token, as for real BPE vocabularies on English text.
        return (len(text) + 3) // 4

    def image_tokens(self, width: int, height: int, max_tiles: int) -> int:
        return self.info.tokens_per_tile * tile_count(width, height, max_num=max_tiles)

    async def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        if self.record:
            self.calls.append(list(messages))
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            last = messages[-1]
            if self.fail_on is not None and self.fail_on in last.text:
                raise RuntimeError(f"echo engine told to fail on {self.fail_on!r}")
            # what a knowledge base gave, one line a passage: each counts as citing it (bot/knowledge/citing.py)
            lines = [f"[knowledge {k}: {p.label}]" for k, p in enumerate(last.knowledge, start=1)]
            lines += [
                f"[{p.label.lower() if p.label else f'image {i + 1}'}: {p.size[0]}x{p.size[1]}, "
                f"{tile_count(*p.size, max_num=p.max_tiles)} tiles]"
                for i, p in enumerate(last.images)
            ]
            lines += [f"[video {i + 1}: {len(v.frames)} frames]" for i, v in enumerate(last.videos)]
            lines.append(f"echo: {last.text}")
            words = "\n".join(lines).split(" ")
            delay = self.delay_for(last.text) if self.delay_for else self.delay
            for i, word in enumerate(words[: generation.max_new_tokens]):
                if delay:
                    await asyncio.sleep(delay)
                yield word if i == 0 else " " + word
        finally:
            self.active -= 1
