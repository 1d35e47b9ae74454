"""In-process InternVL through Hugging Face transformers (CPU, or one GPU).

Loads an InternVL checkpoint in the transformers ``-hf`` layout (``InternVLForConditionalGeneration``,
e.g. ``OpenGVLab/InternVL3-1B-hf``) with the Auto classes: config, tokenizer, the checkpoint's image
processor (PIL backend: torchvision is not required) and model. Generation runs in a worker thread;
tokens come back to the event loop through a streamer, and a stop flag checked after every token
makes cancellation take effect within one decoding step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.config import GenerationSettings, TransformersSettings
from bot.engines.base import ChatMessage, EngineInfo, ImagePart, LimitedEngine, interleaved
from bot.engines.demo_model import is_demo_model
from bot.errors import EngineError, ModelLoadError, PromptTooLong
from bot.media.images import IMAGENET_MEAN, IMAGENET_STD, PixelCache, map_images, tile_count

log = logging.getLogger(__name__)

_END = object()


class TransformersEngine(LimitedEngine):
    """An :class:`~bot.engines.base.Engine` running InternVL with transformers in this process."""

    def __init__(self, settings: TransformersSettings, *, model_path: str, max_concurrency: int = 1,
                 context_length: int = 0, fast_resize: bool = False) -> None:
        super().__init__(max_concurrency)
        self.fast_resize = fast_resize
        self.pixel_cache = PixelCache()
        self._mean: tuple[float, ...] = IMAGENET_MEAN
        self._std: tuple[float, ...] = IMAGENET_STD
        self.settings = settings
        self.model_path = model_path
        self._context_override = context_length
        self.info = EngineInfo(name=f"transformers:{model_path}", context_length=context_length or 0)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="generate")
        self._model: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None
        self._chat_template: str | None = None
        self._image_seq_length = 256
        self._specials: list[str] = []

    # -- loading --------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        import torch
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForImageTextToText,
            AutoTokenizer,
        )
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path, _ = internvl_config(self.model_path)
        config = AutoConfig.from_pretrained(path)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        dtype = {
            "auto": torch.float32 if self.settings.device == "cpu" else torch.bfloat16,
            "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
        }[self.settings.dtype]
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        except Exception as exc:
            raise ModelLoadError(f"engine.transformers.model: loading {path} failed: {exc}") from None
        model.to(self.settings.device).eval()
        template = getattr(tokenizer, "chat_template", None)
        template_file = Path(path) / "chat_template.jinja"
        if not template and template_file.exists():
            template = template_file.read_text(encoding="utf-8")
        if not template:
            raise ModelLoadError(f"engine.transformers.model: {path} has no chat template (chat_template.jinja)")
        for attr in ("context_image_token", "start_image_token", "end_image_token"):
            if not getattr(tokenizer, attr, None):
                raise ModelLoadError(f"engine.transformers.model: the tokenizer of {path} lacks InternVL's {attr}")
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self._model = model
        self._chat_template = template
        self._image_seq_length = int(getattr(config, "image_seq_length", 256))
        self._mean = tuple(getattr(image_processor, "image_mean", None) or IMAGENET_MEAN)
        self._std = tuple(getattr(image_processor, "image_std", None) or IMAGENET_STD)
        self._specials = sorted(
            set(tokenizer.all_special_tokens) | {
                tokenizer.context_image_token, tokenizer.start_image_token, tokenizer.end_image_token,
                getattr(tokenizer, "video_token", None) or "<video>", "<|im_start|>", "<|im_end|>",
            },
            key=len, reverse=True,
        )
        context = self._context_override or int(getattr(config.text_config, "max_position_embeddings", 8192))
        self.info = EngineInfo(
            name=f"transformers:{path}", context_length=context, tokens_per_tile=self._image_seq_length,
            demo=is_demo_model(path),
        )
        log.info("model loaded: %s (%s, %s, context %d)", path, self.settings.device, dtype, context)

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # -- accounting -----------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(self._sanitize(text), add_special_tokens=False)["input_ids"])

    def image_tokens(self, width: int, height: int, max_tiles: int) -> int:
        return self._image_seq_length * tile_count(width, height, max_num=max_tiles)

    def _sanitize(self, text: str) -> str:
        """Users must not be able to inject control tokens (``<|im_start|>``, ``<IMG_CONTEXT>``...)."""
        for token in self._specials:
            if token in text:
                text = text.replace(token, token.replace("<", "‹").replace(">", "›"))
        return text

    # -- generation -----------------------------------------------------------------------

    def _pixels(self, part: ImagePart) -> Any:
        return self.pixel_cache.pixels(part.image, sha256=part.sha256, max_num=part.max_tiles,
                                       fast=self.fast_resize, mean=self._mean, std=self._std)

    def _prepare(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        import torch

        conversation = []
        parts: list[ImagePart] = []
        for message in messages:
            content: list[dict[str, str]] = []
            for piece in interleaved(message, self._sanitize):
                if isinstance(piece, ImagePart):
                    content.append({"type": "image"})
                    parts.append(piece)
                else:
                    content.append({"type": "text", "text": piece})
            if not content:
                content.append({"type": "text", "text": ""})
            conversation.append({"role": message.role, "content": content})
        prompt = self._tokenizer.apply_chat_template(
            conversation, chat_template=self._chat_template, tokenize=False, add_generation_prompt=True
        )
        tok = self._tokenizer
        pieces = prompt.split(tok.context_image_token)
        if len(pieces) != len(parts) + 1:
            raise EngineError(f"chat template produced {len(pieces) - 1} image slots for {len(parts)} images")
        pixel_values = map_images(self._pixels, parts, weight=lambda p: p.size[0] * p.size[1])
        expanded = [pieces[0]]
        for pixels, rest in zip(pixel_values, pieces[1:], strict=True):
            expanded.append(
                tok.start_image_token + tok.context_image_token * (self._image_seq_length * pixels.shape[0])
                + tok.end_image_token
            )
            expanded.append(rest)
        inputs = dict(tok("".join(expanded), return_tensors="pt", add_special_tokens=False))
        if inputs["input_ids"].shape[1] >= self.info.context_length:
            raise PromptTooLong(tokens=int(inputs["input_ids"].shape[1]), limit=self.info.context_length)
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values).to(self._model.dtype)
        return {k: v.to(self.settings.device) for k, v in inputs.items()}

    async def check(self) -> None:
        if self._model is None:
            raise EngineError("the transformers engine is not loaded")

    async def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        if self._model is None:
            raise EngineError("the transformers engine was used before start()")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        future = loop.run_in_executor(self._executor, self._run, messages, generation, put, stop)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield str(item)
        finally:
            stop.set()
            # Wait for the worker so the concurrency slot is really free when we release it.
            await asyncio.shield(future)

    def _run(self, messages: Sequence[ChatMessage], generation: GenerationSettings, put: Any,
             stop: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    put(text)

        class StopFlag(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        try:
            inputs = self._prepare(messages)
            tok = self._tokenizer
            eos = [tok.convert_tokens_to_ids("<|im_end|>")]
            if tok.eos_token_id is not None and tok.eos_token_id not in eos:
                eos.append(tok.eos_token_id)
            room = self.info.context_length - inputs["input_ids"].shape[1]
            sampling: dict[str, Any] = (
                {"do_sample": True, "temperature": generation.temperature, "top_p": generation.top_p}
                if generation.temperature > 0 else {"do_sample": False}
            )
            with torch.inference_mode():
                self._model.generate(
                    **inputs,
                    max_new_tokens=max(1, min(generation.max_new_tokens, room)),
                    repetition_penalty=generation.repetition_penalty,
                    eos_token_id=eos,
                    pad_token_id=tok.pad_token_id,
                    streamer=Streamer(tok, skip_prompt=True, skip_special_tokens=True),
                    stopping_criteria=StoppingCriteriaList([StopFlag()]),
                    **sampling,
                )
        except BaseException as exc:  # travels to the event loop and is raised there
            put(exc)
        finally:
            put(_END)


def internvl_config(path: str) -> tuple[str, dict[str, Any]]:
    """The folder (or hub id) ``path`` resolved, and its ``config.json`` as a dict, when it is an InternVL ``-hf``
    checkpoint; else :class:`~bot.errors.ModelLoadError` saying what it is and what to set. Reads the config
    only (``serve --check``; :meth:`TransformersEngine.start` loads the rest)."""
    from transformers import PretrainedConfig

    local = Path(path).expanduser()
    if local.exists():
        path = str(local)
        if not (local / "config.json").exists():
            raise ModelLoadError(
                f"engine.transformers.model: {local} has no config.json — it is not a transformers checkpoint; "
                "point it at an InternVL -hf folder such as a download of OpenGVLab/InternVL3-1B-hf"
            )
    elif path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ModelLoadError(
            f"engine.transformers.model: model folder {path} not found — fix the path, or leave the key "
            "empty to use the demo model"
        )
    try:
        raw, _ = PretrainedConfig.get_config_dict(path)
    except Exception as exc:
        raise ModelLoadError(f"engine.transformers.model: cannot read the config of {path}: {exc}") from None
    model_type = raw.get("model_type", "")
    if model_type != "internvl":
        hint = (
            "this is the original InternVL layout (InternVLChatModel, trust_remote_code); use its -hf "
            "conversion, e.g. OpenGVLab/InternVL3-1B-hf"
            if model_type == "internvl_chat"
            else "point it at an InternVL -hf checkpoint such as OpenGVLab/InternVL3-1B-hf"
        )
        raise ModelLoadError(
            f"engine.transformers.model: {path} is a {model_type or 'unknown'!r} model, not InternVL — {hint}"
        )
    return path, raw
