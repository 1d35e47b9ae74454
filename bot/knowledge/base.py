"""The knowledge seam: what a turn asks of a knowledge base, and what it gets back.

:class:`Passage` is one retrieved chunk with where it came from (document, title, page, heading) and how
to show it to the user (a public ``url``, or the ``blob`` of the stored original, served by a signed
link). :class:`KnowledgeIndex` is the search the conversation manager calls; the store's backends implement
it (SQLite FTS5 in the same database, PostgreSQL full-text search for replicas, an in-memory one for
tests), and ingestion writes through the same implementation (bot/knowledge/ingest.py):
:class:`KnowledgeStore` is that write side (bases, their sources, documents and chunks).

Scores are comparable across queries and implementations: each backend finds candidates with its own
full-text index, and every one of them scores the candidates the same way (bot/knowledge/text.py), so
one threshold (``knowledge.min_score``) means "nothing relevant" everywhere.
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


@dataclass(frozen=True, slots=True)
class Source:
    """What ``kb add`` was given (a file or a folder), kept so ``kb sync`` needs no arguments."""

    base: str
    location: str
    kind: str = "path"


@dataclass(frozen=True, slots=True)
class Document:
    """One indexed file of a base. ``doc``: its path (or URL), the key within the base; ``content_hash``: the
    SHA-256 of the bytes read, so an unchanged file is never indexed twice; ``blob``: the stored original
    (a PDF or an image), "" when none; ``pages``: a PDF's page count; ``synced_at``: when it was indexed."""

    base: str
    doc: str
    title: str
    content_hash: str
    mime: str = ""
    blob: str = ""
    pages: int | None = None
    url: str = ""
    synced_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document as ingestion cut it: the text searched and shown, its page and heading."""

    text: str
    page: int | None = None
    heading: str = ""


@dataclass(frozen=True, slots=True)
class BaseSummary:
    """A base as ``kb list`` shows it."""

    name: str
    documents: int
    chunks: int
    sources: tuple[Source, ...] = ()
    synced_at: float | None = None


@runtime_checkable
class KnowledgeIndex(Protocol):
    """Search over the chunks of knowledge bases (see the module docstring)."""

    async def search(self, bases: Sequence[str], query: str, k: int = 5) -> list[Passage]:
        """The ``k`` passages of ``bases`` most relevant to ``query``, best first, each scoring at least the
        index's ``min_score`` (``knowledge.min_score``); [] when nothing relevant is found."""
        ...


@runtime_checkable
class KnowledgeStore(KnowledgeIndex, Protocol):
    """The write side ingestion uses, on the same tables the search reads. ``tests/test_knowledge.py`` holds
    the contract every implementation passes."""

    min_score: float

    async def add_sources(self, base: str, sources: Sequence[Source]) -> None:
        """Remember ``sources`` of ``base`` (creating the base); a source stored before is kept once."""
        ...

    async def sources(self, base: str) -> list[Source]:
        """The sources stored for ``base``, in the order first added."""
        ...

    async def remove_source(self, base: str, location: str) -> bool:
        """Forget one source of ``base``; whether it was stored (its documents stay: see ``remove_documents``)."""
        ...

    async def documents(self, base: str) -> list[Document]:
        """The documents of ``base``, by ``doc``."""
        ...

    async def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        """Index ``document`` with ``chunks``, replacing the document of the same base and ``doc``, in one
        transaction: a search sees the old chunks or the new ones, never none or both."""
        ...

    async def remove_documents(self, base: str, docs: Sequence[str]) -> int:
        """Drop these documents of ``base`` and their chunks; how many there were."""
        ...

    async def remove_base(self, base: str) -> bool:
        """Drop ``base`` with its sources, documents and chunks; whether it existed."""
        ...

    async def bases(self) -> list[BaseSummary]:
        """Every base, by name."""
        ...


__all__ = ["BaseSummary", "Chunk", "Document", "KnowledgeIndex", "KnowledgeStore", "Passage", "Source"]
