"""The LMDeploy engine: InternVL on the GPU inside this process (``pip install 'internvl-bot[lmdeploy]'``).

Built from ``engine.lmdeploy``: ``lmdeploy.pipeline(model, backend_config=TurbomindEngineConfig(...)
or PytorchEngineConfig(...))`` with ``session_len``, ``cache_max_entry_count``, ``tp`` and
``max_batch_size``. Each answer streams through LMDeploy's async API, ``generate(messages,
session_id, gen_config=GenerationConfig(...), stream_response=True)``, whose outputs carry the new
text in ``response`` and a ``finish_reason``. Conversations run concurrently and LMDeploy batches
them. Images go as PIL images, ``{"type": "image_data", "image_data": {"data": image,
"max_dynamic_patch": n}}``, with the text in InternVL's ``Image-1: <IMAGE_TOKEN>`` layout (video:
``Frame1: <IMAGE_TOKEN>``, one tile a frame). Cancelling the consumer closes the generator, which
makes LMDeploy cancel the session.

LMDeploy needs CUDA; on a machine without it the engine refuses to start with a clear message.
``module`` can be injected: the tests drive this engine with a fake that follows LMDeploy's API.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from bot.config import GenerationSettings, LMDeploySettings
from bot.engines.base import ChatMessage, EngineInfo, ImagePart, LimitedEngine, layout, neutralize
from bot.errors import EngineError, ModelLoadError, PromptTooLong
from bot.media.images import tile_count

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<IMAGE_TOKEN>"


class LMDeployEngine(LimitedEngine):
    def __init__(self, settings: LMDeploySettings, *, max_concurrency: int = 64, context_length: int = 0,
                 module: ModuleType | Any | None = None) -> None:
        super().__init__(max_concurrency)
        self.settings = settings
        self._module = module
        self._pipe: Any = None
        self._engine: Any = None
        self._tokenizer: Any = None
        self._sessions = itertools.count(1)
        self.info = EngineInfo(name="lmdeploy", context_length=context_length or settings.session_len or 8192)

    def _lmdeploy(self) -> Any:
        if self._module is not None:
            return self._module
        try:
            import lmdeploy
        except ImportError as exc:
            raise ModelLoadError(
                f"engine.kind: lmdeploy needs LMDeploy, which is not installed ({exc}) — on a CUDA host run "
                "pip install 'internvl-bot[lmdeploy]', or choose engine.kind: openai_http or transformers"
            ) from None
        return lmdeploy

    def backend_config(self) -> Any:
        lm = self._lmdeploy()
        s = self.settings
        kwargs: dict[str, Any] = {"tp": s.tp, "cache_max_entry_count": s.cache_max_entry_count}
        if s.session_len:
            kwargs["session_len"] = s.session_len
        if s.max_batch_size:
            kwargs["max_batch_size"] = s.max_batch_size
        if s.dtype != "auto":
            kwargs["dtype"] = s.dtype
        cls = lm.TurbomindEngineConfig if s.backend == "turbomind" else lm.PytorchEngineConfig
        return cls(**kwargs)

    async def start(self) -> None:
        s = self.settings
        if not s.model:
            raise ModelLoadError("engine.lmdeploy.model: empty — set it to an InternVL checkpoint folder or hub id")
        lm = self._lmdeploy()
        config = self.backend_config()
        log.info("loading %s with LMDeploy (%s, tp=%d)", s.model, s.backend, s.tp)
        try:
            self._pipe = await asyncio.to_thread(lm.pipeline, s.model, backend_config=config)
        except Exception as exc:
            raise ModelLoadError(f"engine.lmdeploy: LMDeploy could not load {s.model}: {exc}") from None
        # Newer LMDeploy wraps its AsyncEngine in a Pipeline object; older versions return it directly.
        self._engine = getattr(self._pipe, "async_engine", None) or self._pipe
        session_len = getattr(self._engine, "session_len", None)
        if isinstance(session_len, int) and session_len > 0 and not self.settings.session_len:
            self.info = EngineInfo(name="lmdeploy", context_length=session_len)
        tokenizer = getattr(self._engine, "tokenizer", None)
        self._tokenizer = tokenizer

    async def close(self) -> None:
        closer = getattr(self._pipe, "close", None)
        if callable(closer):
            await asyncio.to_thread(closer)
        self._pipe = self._engine = None

    async def check(self) -> None:
        if self._engine is None:
            raise EngineError("the LMDeploy pipeline is not loaded")

    def count_tokens(self, text: str) -> int:
        encode = getattr(self._tokenizer, "encode", None)
        if callable(encode):
            return len(encode(text, add_bos=False)) if _takes(encode, "add_bos") else len(encode(text))
        return (len(text.encode("utf-8")) + 2) // 3

    def image_tokens(self, width: int, height: int, max_tiles: int) -> int:
        return self.info.tokens_per_tile * tile_count(width, height, max_num=max_tiles)

    def gen_config(self, generation: GenerationSettings) -> Any:
        lm = self._lmdeploy()
        return lm.GenerationConfig(
            max_new_tokens=generation.max_new_tokens,
            do_sample=generation.temperature > 0,
            temperature=generation.temperature if generation.temperature > 0 else 1.0,
            top_p=generation.top_p,
            repetition_penalty=generation.repetition_penalty,
        )

    def build_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """GPT-4V-style messages with PIL images and per-image ``max_dynamic_patch``."""
        out: list[dict[str, Any]] = []
        for message in messages:
            if not message.images and not message.videos:
                out.append({"role": message.role, "content": neutralize(message.prompt_text)})
                continue
            pieces = layout(message)
            text = "".join(IMAGE_TOKEN if isinstance(p, ImagePart) else neutralize(p) if p is pieces[-1] else p
                           for p in pieces)
            content: list[dict[str, Any]] = [{"type": "text", "text": text}]
            for part in pieces:
                if isinstance(part, ImagePart):
                    content.append({"type": "image_data",
                                    "image_data": {"data": _pil(part.image), "max_dynamic_patch": part.max_tiles}})
            out.append({"role": message.role, "content": content})
        return out

    async def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        if self._engine is None:
            raise EngineError("the LMDeploy engine was used before start()")
        prompt = await asyncio.to_thread(self.build_messages, messages)
        session_id = next(self._sessions)
        stream = self._engine.generate(prompt, session_id, gen_config=self.gen_config(generation),
                                       stream_response=True, sequence_start=True, sequence_end=True)
        try:
            async for out in stream:
                text = getattr(out, "response", "") or ""
                reason = getattr(out, "finish_reason", None)
                if reason == "error":
                    raise EngineError(f"LMDeploy reported an error: {text[:300]}")
                if reason == "length" and not text and getattr(out, "generate_token_len", 1) == 0:
                    raise PromptTooLong(tokens=getattr(out, "input_token_len", 0), limit=self.info.context_length)
                if text:
                    yield text
                if reason in ("stop", "length", "abort"):
                    return
        finally:
            await stream.aclose()


def _pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    return Image.fromarray(np.asarray(image))


def _takes(fn: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
