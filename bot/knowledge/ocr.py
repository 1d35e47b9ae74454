"""Reading scanned pages: ``kb add --ocr`` indexes a PDF page without a text layer by what the configured
engine reads on it. InternVL reads printed text, tables and labels well when asked for the text alone.

:class:`PageReader` is the seam the ingester calls; :class:`EngineReader` is its implementation on an
:class:`~bot.engines.base.Engine` (the one ``serve`` and ``chat`` build from ``engine.*``), started on the first
page that needs it, so a ``kb sync`` that finds nothing scanned loads no model. :func:`engine_problem` says,
before anything is read, why the configured engine cannot read pages (the random demo model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from bot.engines.base import ChatMessage, Engine, ImagePart
from bot.errors import StartupError, describe
from bot.types import strip_controls

if TYPE_CHECKING:
    from bot.config import GenerationSettings, Settings

#: What the model is asked for each page: the text alone, in reading order, nothing added.
OCR_PROMPT = ("Read all the text in this page, top to bottom, as plain text: headings, paragraphs, lists, each "
              "table row on its own line, the labels of figures. Write only the text you read, exactly as "
              "written, in its own language; add nothing and leave nothing out.")
#: Tiles a page is read with (a dense manual page needs the detail), and the longest reading of one page.
OCR_TILES = 12
OCR_MAX_NEW_TOKENS = 2048


class OcrUnavailable(StartupError):
    """The engine cannot read pages; the message names what to fix (one line)."""


@runtime_checkable
class PageReader(Protocol):
    """Reads the text of one rendered page (an H x W x 3 uint8 array)."""

    async def read_page(self, image: np.ndarray, *, page: int, name: str) -> str: ...

    async def close(self) -> None: ...


class EngineReader:
    """:class:`PageReader` on an engine: the page as an image, :data:`OCR_PROMPT`, greedy decoding.
    ``engine``: the engine, or a function building it (called on the first page; started then)."""

    def __init__(self, engine: Engine | Callable[[], Engine], generation: GenerationSettings, *,
                 max_new_tokens: int = OCR_MAX_NEW_TOKENS, what: str = "the engine") -> None:
        self._engine: Engine | None = engine if isinstance(engine, Engine) else None
        self._build = None if isinstance(engine, Engine) else engine
        self._started = False
        self._opened = False  # started (and so to be closed), whatever its check said
        self.generation = generation.model_copy(update={"temperature": 0.0, "max_new_tokens": max_new_tokens})
        self.what = what
        self.pages = 0

    async def _ready(self) -> Engine:
        if self._engine is not None and self._started:
            return self._engine
        try:
            if self._engine is None:
                assert self._build is not None
                self._engine = self._build()
            await self._engine.start()
            self._opened = True
            await self._engine.check()
        except OcrUnavailable:
            raise
        except Exception as exc:
            raise OcrUnavailable(f"kb --ocr: {self.what} cannot read pages: {describe(exc)} — fix engine.* in the "
                                 "config (or start the model server), or add the files without --ocr") from None
        self._started = True
        return self._engine

    async def read_page(self, image: np.ndarray, *, page: int, name: str) -> str:
        """The text the engine reads on ``image``, page ``page`` of ``name``; "" when it reads none."""
        engine = await self._ready()
        message = ChatMessage("user", OCR_PROMPT, images=(ImagePart(image, max_tiles=OCR_TILES,
                                                                     label=f"Page-{page}"),))
        pieces = [piece async for piece in engine.stream([message], self.generation)]
        self.pages += 1
        return strip_controls("".join(pieces)).strip()

    async def close(self) -> None:
        if self._engine is not None and self._opened:
            self._started = self._opened = False
            await self._engine.close()


def engine_problem(settings: Settings) -> str | None:
    """Why the configured engine cannot read scanned pages (one line), or None. Checked before anything is
    read or loaded: the random demo model would index noise."""
    from bot.engines.demo_model import is_demo_model

    eng = settings.engine
    if eng.kind == "transformers" and (not eng.transformers.model or is_demo_model(eng.transformers.model)):
        return ("kb add --ocr: engine.transformers.model is " + ("empty (the random demo model)"
                                                                 if not eng.transformers.model else
                                                                 f"{eng.transformers.model}, the random demo model")
                + ", whose reading is noise — set it to an InternVL checkpoint (e.g. OpenGVLab/InternVL3-1B-hf), "
                "or engine.kind: openai_http with a model server")
    if eng.kind == "lmdeploy" and not eng.lmdeploy.model:
        return "kb add --ocr: engine.lmdeploy.model is empty — set it to an InternVL checkpoint"
    return None


def engine_reader(settings: Settings) -> EngineReader:
    """The reader on the configured engine (built as ``serve`` builds it, on the first scanned page); raises
    :class:`OcrUnavailable` when it cannot be used (:func:`engine_problem`)."""
    from bot.engines import build_engine

    problem = engine_problem(settings)
    if problem is not None:
        raise OcrUnavailable(problem)
    return EngineReader(lambda: build_engine(settings), settings.engine.generation,
                        what=f"the engine (engine.kind: {settings.engine.kind})")


__all__ = ["OCR_PROMPT", "EngineReader", "OcrUnavailable", "PageReader", "engine_problem", "engine_reader"]
