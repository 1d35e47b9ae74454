"""The engine seam: what every engine (transformers, LMDeploy, OpenAI-compatible HTTP, echo) provides.

Streaming is the primitive: :meth:`Engine.stream` yields text chunks and the full answer is the
collected stream. Cancelling the consuming task (or closing the iterator) stops the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from bot.config import GenerationSettings
from bot.knowledge.base import Passage
from bot.knowledge.citing import knowledge_block

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@dataclass(frozen=True, slots=True)
class ImagePart:
    """One image of a message, decoded (a PIL image or an H x W x 3 uint8 array), with the most
    tiles it may use. ``sha256`` identifies the source file, so engines can cache its preprocessing."""

    image: Image.Image | np.ndarray
    max_tiles: int = 12
    sha256: str = ""
    label: str = ""  # "Page-3" for a document page; images are numbered "Image-k" when there are several
    #: The file as the user sent it (remote engines send these bytes rather than a re-encode).
    source: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        shape = getattr(self.image, "shape", None)
        if shape is not None:
            return int(shape[1]), int(shape[0])
        return self.image.size  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class VideoPart:
    """Frames sampled from one video, one tile each, laid out as ``Frame1: <image>`` ... ."""

    frames: tuple[ImagePart, ...]
    name: str = ""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the prompt. Images and videos of a user message come before its text, as
    InternVL expects: ``Image-1: <image>`` ... for several images, ``Frame1: <image>`` ... for video."""

    role: Literal["system", "user", "assistant"]
    text: str
    images: tuple[ImagePart, ...] = ()
    videos: tuple[VideoPart, ...] = ()
    #: what a knowledge base gave for this question (bot/knowledge/citing.py): the model reads it before
    #: ``text`` (see :attr:`prompt_text`); the echo engine lists it
    knowledge: tuple[Passage, ...] = ()
    #: a note for the model after the passages (nothing relevant was found, say so)
    knowledge_note: str = ""

    @property
    def prompt_text(self) -> str:
        """The text the model reads: the knowledge block and its note, then the message's own text."""
        if not self.knowledge and not self.knowledge_note:
            return self.text
        head = knowledge_block(self.knowledge) if self.knowledge else ""
        return "\n\n".join(p for p in (head, self.knowledge_note, f"Question: {self.text}") if p)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    context_length: int
    tokens_per_tile: int = 256
    demo: bool = False
    wants_source: bool = False  # the engine sends images' original bytes (ImagePart.source)


#: Tokens around each message in the ChatML template (``<|im_start|>role\n`` ... ``<|im_end|>\n``).
MESSAGE_OVERHEAD = 5


@runtime_checkable
class Engine(Protocol):
    """A model that answers a conversation as a stream of text chunks, ``max_concurrency`` at a time."""

    info: EngineInfo
    max_concurrency: int

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def check(self) -> None:
        """Raise when the engine cannot answer now (readiness probe). Cheap: no generation."""
        ...
    def count_tokens(self, text: str) -> int: ...
    def image_tokens(self, width: int, height: int, max_tiles: int) -> int: ...
    def stream(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]: ...


def message_cost(engine: Engine, message: ChatMessage, *, images: bool = True) -> int:
    """Prompt tokens ``message`` costs: its text, its images by their tiles (unless ``images`` is False:
    the budget planner prices them), its videos' frames, and the template."""
    cost = engine.count_tokens(message.prompt_text) + MESSAGE_OVERHEAD
    for part in message.images if images else ():
        cost += engine.image_tokens(*part.size, part.max_tiles) + 2 + (4 if len(message.images) > 1 or part.label else 0)
    for video in message.videos:
        cost += sum(engine.image_tokens(*f.size, f.max_tiles) + 2 + 4 for f in video.frames)
    return cost


class LimitedEngine:
    """Base for engines: a global concurrency limit around the subclass's ``_generate``."""

    info: EngineInfo

    def __init__(self, max_concurrency: int = 1) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency

    async def stream(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        async with self._slots:
            async for chunk in self._generate(messages, generation):
                if chunk:
                    yield chunk

    async def check(self) -> None:
        """In-process engines are ready once started; remote ones override this with a request."""
        return None

    def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        raise NotImplementedError


#: Tokens a user must not be able to write into a prompt: InternVL's chat and image control tokens and
#: the image placeholders of LMDeploy and vLLM.
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<IMG_CONTEXT>", "<img>", "</img>", "<video>",
                  "<IMAGE_TOKEN>", "<image>")


def neutralize(text: str, tokens: Sequence[str] = CONTROL_TOKENS) -> str:
    """``<|im_start|>`` -> ``‹|im_start|›``: shown the same to the model, never parsed as a control token."""
    for token in tokens:
        if token in text:
            text = text.replace(token, token.replace("<", "‹").replace(">", "›"))
    return text


def layout(message: ChatMessage) -> list[str | ImagePart]:
    """InternVL's order for one message: each image (``Image-k:`` when several, or its label such as
    ``Page-2:``), then each video's frames (``Frame1:`` ...), then the text; text pieces are strings."""
    out: list[str | ImagePart] = []
    many = len(message.images) > 1
    number = 0
    for part in message.images:
        if part.label:
            out.append(f"{part.label}: ")
        elif many:
            number += 1
            out.append(f"Image-{number}: ")
        out.append(part)
        out.append("\n")
    for video in message.videos:
        for k, frame in enumerate(video.frames):
            out.append(f"Frame{k + 1}: ")
            out.append(frame)
            out.append("\n")
    out.append(message.prompt_text)
    return out


def interleaved(message: ChatMessage, clean: Callable[[str], str] = neutralize) -> list[str | ImagePart]:
    """:func:`layout` for chat templates that end each image with a newline themselves (transformers'
    InternVL ``-hf`` template, ``transformers serve``): images and non-empty text pieces, the newline after
    each image left out, the message's own text passed through ``clean``."""
    pieces = layout(message)
    out: list[str | ImagePart] = []
    previous_image = False
    for piece in pieces:
        if isinstance(piece, ImagePart):
            out.append(piece)
            previous_image = True
            continue
        text = clean(piece) if piece is pieces[-1] else piece
        if previous_image and text == "\n":
            previous_image = False
            continue
        previous_image = False
        if text:
            out.append(text)
    return out
