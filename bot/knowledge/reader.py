"""A turn's reading of its knowledge bases (its persona's and its adapter's): the passages (and pages) put before the question, and
the Sources footer put after the answer. The conversation manager holds one (``manager.reader``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from cachetools import LRUCache

from bot.config import Settings
from bot.engines.base import ChatMessage, Engine, ImagePart
from bot.errors import BotError, describe
from bot.knowledge.base import KnowledgeIndex, Passage
from bot.knowledge.citing import NOT_FITTED, cited, nothing_found, sources_footer
from bot.l10n.personas import Persona
from bot.media.documents import render_page
from bot.media.images import decode_image
from bot.store import Store, StoredMessage

log = logging.getLogger(__name__)

#: Passages asked of the bases per turn (as many as fit a third of the prompt are given), and the length
#: under which a question is read with the one before it (a follow-up: "and the valve?").
TOP_K = 5
FOLLOW_UP_WORDS = 8
#: Tiles a source's page or picture may use (a manual page reads well in 6), and rendered ones kept.
SOURCE_PAGE_TILES = 6
SOURCE_PAGES_KEPT = 8


@dataclass(frozen=True, slots=True)
class Reading:
    """What a turn's reading gave: its message with the passages, and how many relevant passages did not fit
    (the user is told, as for images left out)."""

    message: ChatMessage
    left_out: int = 0


class KnowledgeReader:
    """See the module docstring. ``links``: the signed link to a stored source (set by the server,
    adapters/sources.py); without one a PDF source is cited by title and page."""

    def __init__(self, index: KnowledgeIndex, store: Store, engine: Engine, settings: Settings) -> None:
        self.index = index
        self.store = store
        self.engine = engine
        self.settings = settings
        self.links: Callable[[Passage], str] | None = None
        self._pages: LRUCache[tuple[str, int], np.ndarray] = LRUCache(maxsize=SOURCE_PAGES_KEPT)

    async def prompt_with(self, msg: StoredMessage, persona: Persona, current: ChatMessage,
                          budget: int, *, bases: Sequence[str]) -> Reading:
        """``current`` with the passages of ``bases`` (the persona's and the adapter's) that match the
        question — and the user's previous question, so "and the valve?" still finds the pump's manual — as
        many as fit a third of the prompt's budget, best first, with the best pages as images; or, when
        nothing matches, the note to say so. Passages that match but do not fit are counted in
        ``left_out``."""
        query = current.text
        if len(query.split()) < FOLLOW_UP_WORDS:
            earlier = [m for m in await self.store.transcript(msg.key, limit=6)
                       if m.role == "user" and m.id < msg.id and m.kind != "command"]
            if earlier:
                query = f"{earlier[-1].text} {query}"
        try:
            found = await self.index.search(bases, query, k=TOP_K)
        except Exception as exc:  # the answer goes on without it; the operator reads why
            log.warning("knowledge search for %s failed (%s): answered without the knowledge bases", msg.key,
                        describe(exc))
            return Reading(current)
        room = budget // 3
        kept: list[Passage] = []
        for passage in found:
            cost = self.engine.count_tokens(passage.text) + 16
            if cost > room:
                break
            room -= cost
            kept.append(passage)
        left_out = len(found) - len(kept)
        if not found:
            return Reading(replace(current, knowledge_note=nothing_found(bool(persona.handoff_marker))))
        if not kept:  # the documentation has it, but not within this prompt: not "nothing found"
            return Reading(replace(current, knowledge_note=NOT_FITTED), left_out)
        pages = await self._source_pages(kept)
        return Reading(replace(current, knowledge=tuple(kept), images=current.images + tuple(pages)), left_out)

    def with_sources(self, question: ChatMessage, answer: str, lang: str) -> str:
        """``answer`` with the Sources footer of the passages it cites (none cited: as it is)."""
        passages = question.knowledge
        if not passages or not answer:
            return answer
        footer = sources_footer(passages, cited(answer, len(passages)), lang, self.links)
        return f"{answer}\n\n{footer}" if footer else answer

    async def _source_pages(self, passages: Sequence[Passage]) -> list[ImagePart]:
        """The PDF pages (or pictures) of the best passages as images, ``knowledge.page_images`` of them,
        each once: InternVL reads the wiring diagram or the table itself, not only its extracted text. A
        page that cannot be rendered is left out; its passage stays."""
        out: list[ImagePart] = []
        seen: set[tuple[str, int]] = set()
        for k, passage in enumerate(passages, start=1):
            if len(out) >= self.settings.knowledge.page_images:
                break
            picture = passage.mime.startswith("image/")
            if not passage.blob or (passage.page is None and not picture) or \
                    (passage.mime not in ("", "application/pdf") and not picture):
                continue
            where = (passage.blob, passage.page or 0)
            if where in seen:
                continue
            seen.add(where)
            image = self._pages.get(where)
            if image is None:
                try:
                    data = await self.store.attachment_data(passage.blob)
                    if picture:  # a wiring diagram, a "correct assembly" photo: the picture itself
                        image = await asyncio.to_thread(_source_picture, data, passage.title,
                                                        self.settings.media.max_image_pixels)
                    else:
                        image = await asyncio.to_thread(render_page, data, where[1], max_tiles=SOURCE_PAGE_TILES,
                                                        name=passage.title)
                except (FileNotFoundError, ValueError, BotError) as exc:
                    log.info("%s of %s not shown to the model: %s",
                             f"page {passage.page}" if passage.page else "the picture", passage.title, exc)
                    continue
                self._pages[where] = image
            label = f"Source [{k}], page {passage.page}" if passage.page else f"Source [{k}]"
            out.append(ImagePart(image=image, max_tiles=SOURCE_PAGE_TILES, sha256=f"{passage.blob}#p{where[1]}",
                                 label=label))
        return out


def _source_picture(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """A knowledge base's picture, no larger than its tiles need: kept in a small cache between turns."""
    image = decode_image(data, name=name, max_pixels=max_pixels)
    side = 448 * SOURCE_PAGE_TILES // 2
    image.thumbnail((side, side))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


__all__ = ["KnowledgeReader", "Reading"]
