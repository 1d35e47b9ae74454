"""Knowledge bases: the company's manuals, help-center articles and solved tickets, searched for each turn
whose persona (or adapter) names a base, shown to InternVL (text, and a PDF page's image) and cited to the
user in a Sources footer.

:func:`open_index` gives the implementation for the store in use: its tables live in the store's own
database (SQLite file, PostgreSQL), or beside a :class:`~bot.store.memory.MemoryStore` in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.knowledge.base import BaseSummary, Chunk, Document, KnowledgeIndex, KnowledgeStore, Passage, Source
from bot.knowledge.memory import MemoryKnowledge

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.store.base import Store


def open_index(settings: Settings, store: Store) -> KnowledgeStore:
    """The knowledge bases kept in ``store`` (opened), searching with ``settings.knowledge.min_score``.

    Cheap (no I/O): call it once the store is open, keep the result for the store's lifetime. For a
    :class:`~bot.store.memory.MemoryStore` the same in-memory index is kept on every call. With
    ``knowledge.embeddings.url`` the index is wrapped in a :class:`~bot.knowledge.dense.DenseKnowledge`,
    whose searches fuse lexical and dense results.
    """
    from bot.knowledge.dense import dense

    return dense(_lexical_index(settings, store), settings.knowledge.embeddings)


def _lexical_index(settings: Settings, store: Store) -> KnowledgeStore:
    """The store's own (lexical) implementation: see :func:`open_index`."""
    from bot.store.memory import MemoryStore
    from bot.store.sqlite import SQLiteStore

    conf = settings.knowledge
    if isinstance(store, SQLiteStore):
        from bot.knowledge.sqlite import SQLiteKnowledge

        return SQLiteKnowledge(store, min_score=conf.min_score)
    if isinstance(store, MemoryStore):
        if store.knowledge is None:
            store.knowledge = MemoryKnowledge(min_score=conf.min_score)
        return store.knowledge
    try:  # imported only now: psycopg is the postgres extra's, and without it there is no such store
        from bot.store.postgres.store import PostgresStore
    except ImportError:
        PostgresStore = None  # type: ignore[assignment,misc]
    if PostgresStore is not None and isinstance(store, PostgresStore):
        from bot.knowledge.postgres import PostgresKnowledge

        return PostgresKnowledge(store, min_score=conf.min_score,
                                 languages={name: base.language for name, base in conf.bases.items()})
    raise TypeError(f"no knowledge index for a {type(store).__name__}")


__all__ = ["BaseSummary", "Chunk", "Document", "KnowledgeIndex", "KnowledgeStore", "MemoryKnowledge", "Passage",
           "Source", "open_index"]
