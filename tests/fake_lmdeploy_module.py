"""A stand-in for the ``lmdeploy`` package, following its documented Python API (LMDeploy needs CUDA).

``pipeline(model, backend_config=...)`` returns a pipeline whose ``async_engine.generate(messages,
session_id, gen_config=..., stream_response=True, sequence_start=True, sequence_end=True)`` is an
async generator of outputs carrying the new text in ``response`` and a ``finish_reason``; closing the
generator early cancels the session, as LMDeploy's ``safe_run`` does. It checks what LMDeploy checks:
one ``<IMAGE_TOKEN>`` per image, images as PIL images, and records everything for the tests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

IMAGE_TOKEN = "<IMAGE_TOKEN>"


@dataclass
class TurbomindEngineConfig:
    dtype: str = "auto"
    session_len: int | None = None
    max_batch_size: int | None = None
    cache_max_entry_count: float = 0.8
    tp: int = 1


@dataclass
class PytorchEngineConfig:
    dtype: str = "auto"
    session_len: int | None = None
    max_batch_size: int | None = None
    cache_max_entry_count: float = 0.8
    tp: int = 1


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    do_sample: bool = False
    top_p: float = 1.0
    top_k: int = 50
    temperature: float = 0.8
    repetition_penalty: float = 1.0


@dataclass
class GenOut:
    response: str
    history_token_len: int
    input_token_len: int
    generate_token_len: int
    finish_reason: str | None = None


class Tokenizer:
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        return [1] * (len(text.split()) + (1 if add_bos else 0))


@dataclass
class AsyncEngine:
    model: str
    backend_config: Any
    session_len: int = 32768
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    calls: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    delay: float = 0.0
    words: int = 8
    finish: str = "stop"

    async def generate(self, messages: Any, session_id: int, gen_config: GenerationConfig | None = None,
                       stream_response: bool = True, sequence_start: bool = True, sequence_end: bool = True,
                       **kwargs: Any):
        images = [p["image_data"] for m in messages if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image_data"]
        tokens = sum(p["text"].count(IMAGE_TOKEN) for m in messages if isinstance(m["content"], list)
                     for p in m["content"] if p["type"] == "text")
        assert tokens == len(images), f"{tokens} image tokens for {len(images)} images"
        assert all(isinstance(i["data"], Image.Image) for i in images)
        self.calls.append({"messages": messages, "session_id": session_id, "gen_config": gen_config,
                           "stream": stream_response, "start": sequence_start, "end": sequence_end})
        if self.finish == "error":
            yield GenOut("internal error", 0, 10, 0, "error")
            return
        if self.finish == "too_long":
            yield GenOut("", 0, 40000, 0, "length")
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        done = False
        try:
            limit = min(self.words, gen_config.max_new_tokens if gen_config else self.words)
            for i in range(limit):
                await asyncio.sleep(self.delay)
                yield GenOut(f"tok{i} ", 0, 10, i + 1, None)
            yield GenOut("", 0, 10, limit, "length" if limit < self.words else "stop")
            done = True
        finally:
            self.active -= 1
            if not done:
                self.cancelled.append(session_id)


@dataclass
class Pipeline:
    async_engine: AsyncEngine
    closed: bool = False

    def close(self) -> None:
        self.closed = True


pipelines: list[Pipeline] = []


def pipeline(model_path: str, backend_config: Any = None, **kwargs: Any) -> Pipeline:
    pipe = Pipeline(AsyncEngine(model_path, backend_config,
                                session_len=(backend_config.session_len or 32768) if backend_config else 32768))
    pipelines.append(pipe)
    return pipe
