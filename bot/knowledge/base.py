"""The knowledge seam: what a turn asks of a knowledge base, and what it gets back.

:class:`Passage` is one retrieved chunk with where it came from (document, title, page, heading) and how
to show it to the user (a public ``url``, or the ``blob`` of the stored original, served by a signed
link). :class:`KnowledgeIndex` is the search the conversation manager calls; the store's backends implement
it (SQLite FTS5 in the same database, PostgreSQL full-text search for replicas, an in-memory one for
tests), and ingestion writes through the same implementation (bot/knowledge/ingest.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk. ``page``: 1-based PDF page, None when the source has none. ``score``: higher is
    more relevant (comparable within one search). ``url``: a public link (a help-center article); ``blob``:
    the SHA-256 of the stored original file (a PDF), "" when none; ``mime``: its type."""

    base: str
    doc: str
    title: str
    text: str
    page: int | None = None
    heading: str = ""
    score: float = 0.0
    url: str = ""
    blob: str = ""
    mime: str = ""

    @property
    def label(self) -> str:
        """``Pump X200 manual p.12`` (page omitted when none): how the model and the user see the source."""
        return f"{self.title} p.{self.page}" if self.page is not None else self.title


@runtime_checkable
class KnowledgeIndex(Protocol):
    """Search over the chunks of knowledge bases (see the module docstring)."""

    async def search(self, bases: Sequence[str], query: str, k: int = 5) -> list[Passage]:
        """The ``k`` passages of ``bases`` most relevant to ``query``, best first; [] when none matches."""
        ...


__all__ = ["KnowledgeIndex", "Passage"]
