"""Documents: PDF pages as images at the resolution the token budget allows, plus their text layer.

pypdfium2 renders each page straight to the pixel size its InternVL tile grid needs (no larger),
and reads the page's text layer when there is one, so the model gets exact text as well as the
layout (tables, stamps, handwriting). Long documents are cut at a page cap, and the user is told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bot.errors import EncryptedDocument, UnreadableDocument
from bot.media.images import IMAGE_SIZE, grid_for

log = logging.getLogger(__name__)

#: Never render above this, whatever the tile budget (tiny text is legible at 200 dpi).
MAX_DPI = 200
#: A page's text layer counts when it has at least this many letters.
MIN_TEXT_LETTERS = 20
#: PDFium is not thread-safe: one document operation at a time in the process.
_PDFIUM = threading.Lock()


@dataclass(frozen=True, slots=True)
class Page:
    number: int  # 1-based
    image: np.ndarray  # H x W x 3 uint8 RGB
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    pages: tuple[Page, ...]
    total_pages: int
    max_tiles: int = 12  # the tiles each page was rendered for

    @property
    def truncated(self) -> bool:
        return len(self.pages) < self.total_pages


def page_scale(width_pt: float, height_pt: float, max_tiles: int) -> float:
    """Render scale (pixels per PDF point) that gives the page the pixels its tile grid needs.

    The grid is the one InternVL would choose for the page at the highest resolution we render
    (its tie-break favours larger grids only for images with enough pixels), and the page is then
    rendered just large enough for that grid.
    """
    top = MAX_DPI / 72
    cols, rows = grid_for(max(1, round(width_pt * top)), max(1, round(height_pt * top)), max_num=max_tiles)
    scale = min(IMAGE_SIZE * cols / width_pt, IMAGE_SIZE * rows / height_pt)
    return max(0.1, min(scale, MAX_DPI / 72))


def read_pdf(data: bytes, *, name: str = "", max_pages: int = 20, max_tiles: int = 12,
             tiles_for: Callable[[int], int] | None = None) -> Document:
    """Render up to ``max_pages`` pages of a PDF and read their text layers.

    ``tiles_for(pages)`` gives the tiles a page may use once the page count is known (the token
    budget shared by the pages); pages are rendered at the resolution that many tiles need.
    """
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if "password" in str(exc).lower():
                raise EncryptedDocument(str(exc), name=name) from None
            raise UnreadableDocument(str(exc), name=name) from None
        try:
            total = len(pdf)
            if total < 1:
                raise UnreadableDocument("no pages", name=name)
            pages = []
            count = min(total, max_pages)
            if tiles_for is not None:
                max_tiles = max(1, min(max_tiles, tiles_for(count)))
            for index in range(count):
                page = pdf[index]
                width, height = page.get_size()
                bitmap = page.render(scale=page_scale(width, height, max_tiles), rev_byteorder=True)
                image = bitmap.to_numpy()
                if image.ndim == 3 and image.shape[2] == 4:
                    image = image[:, :, :3]
                image = np.ascontiguousarray(image)
                textpage = page.get_textpage()
                text = textpage.get_text_range().replace("\r\n", "\n").strip()
                if sum(ch.isalpha() for ch in text) < MIN_TEXT_LETTERS:
                    text = ""
                pages.append(Page(index + 1, image, text))
            return Document(tuple(pages), total, max_tiles)
        except pdfium.PdfiumError as exc:
            raise UnreadableDocument(str(exc), name=name) from None
        finally:
            pdf.close()


def render_page(data: bytes, number: int, *, max_tiles: int = 6, name: str = "") -> np.ndarray:
    """Page ``number`` (1-based) of a PDF as an H x W x 3 array, just large enough for ``max_tiles`` tiles:
    a knowledge base's manual page shown to the model beside the passage it came from."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            pdf = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            raise UnreadableDocument(str(exc), name=name) from None
        try:
            if not 1 <= number <= len(pdf):
                raise UnreadableDocument(f"no page {number}", name=name)
            page = pdf[number - 1]
            width, height = page.get_size()
            image = page.render(scale=page_scale(width, height, max_tiles), rev_byteorder=True).to_numpy()
            if image.ndim == 3 and image.shape[2] == 4:
                image = image[:, :, :3]
            return np.ascontiguousarray(image)
        except pdfium.PdfiumError as exc:
            raise UnreadableDocument(str(exc), name=name) from None
        finally:
            pdf.close()
