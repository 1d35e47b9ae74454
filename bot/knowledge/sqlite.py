""":class:`~bot.knowledge.base.KnowledgeStore` in the store's own SQLite file (tables ``kb_*``, migration
``m007_knowledge`` in bot/store/sqlite.py), on the store's connection and transactions.

Candidates come from two FTS5 tables: ``kb_fts`` (``unicode61 remove_diacritics 2``: words, BM25) and
``kb_cjk`` (``trigram``, only chunks with Chinese, Japanese or Korean text: those scripts have no spaces,
so ``unicode61`` would make one token of a whole sentence). A query's CJK runs are cut into trigrams,
each an alternative; a two-character run (one word, often) is looked for with ``LIKE`` among the CJK
chunks. ``kb_fts`` indexes each chunk's words as bot/knowledge/text.py cuts them (folded, plurals made
singular), so both sides agree on every word. Candidates are then scored by bot/knowledge/text.py from ``kb_terms``/``kb_stats``, which
:meth:`put_document` keeps in the same transaction as the chunks.

Dense retrieval (bot/knowledge/dense.py) keeps one unit vector per chunk in ``kb_vectors`` (float32 blobs);
:meth:`nearest` ranks the bases' vectors of the model with numpy. sqlite-vec would rank them in SQL, but
it is a loadable extension and this project's Python (pyenv's build) has no ``enable_load_extension``;
the blobs are in its layout for the day it can.

Like the store, it runs short synchronous statements on the event loop; a document's whole replacement
(one PDF: up to a few thousand chunks) is one transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from bot.knowledge.base import BaseSummary, Chunk, Document, Passage, Source
from bot.knowledge.dense import pack
from bot.knowledge.text import (
    MIN_SCORE,
    LexicalSearch,
    Stats,
    body,
    candidate,
    candidate_limit,
    candidate_terms,
    cjk_runs,
    has_cjk,
    rank,
    ranked,
    settle,
    terms,
)
from bot.store.sqlite import SQLiteStore

_DOC_COLUMNS = "base, doc, title, content_hash, mime, blob, pages, url, synced_at"


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _match(words: Sequence[str]) -> str:
    """An FTS5 query matching any of ``words`` (each quoted: a term is never read as an operator)."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def _words(text_body: str) -> str:
    """What ``kb_fts`` indexes of a chunk: its terms (bot/knowledge/text.py) other than CJK pairs, so the
    words FTS5 holds are exactly those a query asks for (folded, singular)."""
    return " ".join(t for t in terms(text_body) if not has_cjk(t))


class SQLiteKnowledge(LexicalSearch):
    """See the module docstring. ``store``: an opened :class:`SQLiteStore` (its migrations made the tables)."""

    def __init__(self, store: SQLiteStore, *, min_score: float = MIN_SCORE,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.min_score = min_score
        self._clock = clock

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store.db.conn

    # -- bases and sources ----------------------------------------------------------------

    def _ensure_base(self, base: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO kb_bases (name, created_at) VALUES (?, ?)", (base, self._clock()))

    async def add_sources(self, base: str, sources: Sequence[Source]) -> None:
        with self.store.transaction():
            self._ensure_base(base)
            self._conn.executemany(
                "INSERT OR IGNORE INTO kb_sources (base, location, kind, added_at) VALUES (?, ?, ?, ?)",
                [(base, s.location, s.kind, self._clock()) for s in sources])

    async def sources(self, base: str) -> list[Source]:
        rows = self._conn.execute("SELECT location, kind FROM kb_sources WHERE base = ? ORDER BY rowid",
                                  (base,)).fetchall()
        return [Source(base, location, kind) for location, kind in rows]

    async def remove_source(self, base: str, location: str) -> bool:
        return self._conn.execute("DELETE FROM kb_sources WHERE base = ? AND location = ?",
                                  (base, location)).rowcount > 0

    async def documents(self, base: str) -> list[Document]:
        rows = self._conn.execute(f"SELECT {_DOC_COLUMNS} FROM kb_documents WHERE base = ? ORDER BY doc",
                                  (base,)).fetchall()
        return [Document(*row) for row in rows]

    async def bases(self) -> list[BaseSummary]:
        out = []
        for (name,) in self._conn.execute("SELECT name FROM kb_bases ORDER BY name").fetchall():
            docs, synced = self._conn.execute("SELECT COUNT(*), MAX(synced_at) FROM kb_documents WHERE base = ?",
                                              (name,)).fetchone()
            [chunks] = self._conn.execute("SELECT COUNT(*) FROM kb_chunks WHERE base = ?", (name,)).fetchone()
            out.append(BaseSummary(name, docs, chunks, tuple(await self.sources(name)), synced))
        return out

    # -- documents ------------------------------------------------------------------------

    def _drop(self, document_id: int) -> None:
        """Remove one document's chunks from both FTS tables and the statistics, then the rows."""
        title = self._conn.execute("SELECT title FROM kb_documents WHERE id = ?", (document_id,)).fetchone()[0]
        rows = self._conn.execute("SELECT id, heading, text, length, cjk FROM kb_chunks WHERE document_id = ?",
                                  (document_id,)).fetchall()
        df: Counter[str] = Counter()
        length = 0
        for cid, heading, text, n, cjk in rows:
            text_body = body(title, heading, text)
            # contentless FTS5 tables forget a row only when told the exact values it was indexed with
            self._conn.execute("INSERT INTO kb_fts (kb_fts, rowid, body) VALUES ('delete', ?, ?)",
                               (cid, _words(text_body)))
            if cjk:
                self._conn.execute("INSERT INTO kb_cjk (kb_cjk, rowid, body) VALUES ('delete', ?, ?)",
                                   (cid, text_body))
            df.update(set(terms(text_body)))
            length += n
        self._conn.executemany("UPDATE kb_terms SET df = df - ? WHERE term = ?", [(n, t) for t, n in df.items()])
        self._conn.execute("DELETE FROM kb_terms WHERE df <= 0")
        self._add_stats(-len(rows), -length)
        self._conn.execute("DELETE FROM kb_vectors WHERE chunk_id IN (SELECT id FROM kb_chunks WHERE document_id = ?)",
                           (document_id,))
        self._conn.execute("DELETE FROM kb_chunks WHERE document_id = ?", (document_id,))
        self._conn.execute("DELETE FROM kb_documents WHERE id = ?", (document_id,))

    def _add_stats(self, chunks: int, length: int) -> None:
        self._conn.executemany("UPDATE kb_stats SET value = value + ? WHERE name = ?",
                               [(chunks, "chunks"), (length, "length")])

    async def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        # the terms are computed before the transaction: it holds the write lock only to write
        prepared = []
        df: Counter[str] = Counter()
        for position, chunk in enumerate(chunks):
            text_body = body(document.title, chunk.heading, chunk.text)
            found = terms(text_body)
            df.update(set(found))
            prepared.append((position, chunk, text_body, len(found), has_cjk(text_body)))
        d = document
        with self.store.transaction():
            self._ensure_base(d.base)
            old = self._conn.execute("SELECT id FROM kb_documents WHERE base = ? AND doc = ?", (d.base, d.doc)).fetchone()
            if old is not None:
                self._drop(old[0])
            [(doc_id,)] = self._conn.execute(
                f"INSERT INTO kb_documents ({_DOC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (d.base, d.doc, d.title, d.content_hash, d.mime, d.blob, d.pages, d.url,
                 d.synced_at or self._clock())).fetchall()
            for position, chunk, text_body, n, cjk in prepared:
                [(cid,)] = self._conn.execute(
                    "INSERT INTO kb_chunks (document_id, base, page, heading, text, position, length, cjk)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (doc_id, d.base, chunk.page, chunk.heading, chunk.text, position, n, int(cjk))).fetchall()
                self._conn.execute("INSERT INTO kb_fts (rowid, body) VALUES (?, ?)", (cid, _words(text_body)))
                if cjk:
                    self._conn.execute("INSERT INTO kb_cjk (rowid, body) VALUES (?, ?)", (cid, text_body))
            self._conn.executemany(
                "INSERT INTO kb_terms (term, df) VALUES (?, ?) ON CONFLICT (term) DO UPDATE SET df = df + excluded.df",
                sorted(df.items()))
            self._add_stats(len(prepared), sum(p[3] for p in prepared))

    async def remove_documents(self, base: str, docs: Sequence[str]) -> int:
        removed = 0
        with self.store.transaction():
            for doc in docs:
                row = self._conn.execute("SELECT id FROM kb_documents WHERE base = ? AND doc = ?", (base, doc)).fetchone()
                if row is not None:
                    self._drop(row[0])
                    removed += 1
        return removed

    async def remove_base(self, base: str) -> bool:
        with self.store.transaction():
            ids = [r[0] for r in self._conn.execute("SELECT id FROM kb_documents WHERE base = ?", (base,))]
            for document_id in ids:
                self._drop(document_id)
            self._conn.execute("DELETE FROM kb_sources WHERE base = ?", (base,))
            return self._conn.execute("DELETE FROM kb_bases WHERE name = ?", (base,)).rowcount > 0

    # -- search ---------------------------------------------------------------------------

    def _stats(self, qterms: Sequence[str]) -> Stats:
        values = dict(self._conn.execute("SELECT name, value FROM kb_stats").fetchall())
        df = dict(self._conn.execute(f"SELECT term, df FROM kb_terms WHERE term IN ({_marks(len(qterms))})",
                                     list(qterms)).fetchall())
        return Stats(int(values.get("chunks", 0)), int(values.get("length", 0)), df)

    def _candidate_ids(self, bases: Sequence[str], query: str, words: Sequence[str], stats: Stats,
                       limit: int) -> list[int]:
        ids: list[int] = []
        in_bases = f"c.base IN ({_marks(len(bases))})"
        latin = [w for w in words if not has_cjk(w)]
        if latin:
            order = "ORDER BY f.rank" if ranked(latin, stats) else ""
            ids += [r[0] for r in self._conn.execute(
                f"SELECT f.rowid FROM kb_fts f JOIN kb_chunks c ON c.id = f.rowid WHERE kb_fts MATCH ? AND {in_bases}"
                f" {order} LIMIT ?", (_match(latin), *bases, limit))]
        runs = cjk_runs(query)
        trigrams = list(dict.fromkeys(r[i:i + 3] for r in runs for i in range(len(r) - 2)))
        if trigrams:
            ids += [r[0] for r in self._conn.execute(
                f"SELECT f.rowid FROM kb_cjk f JOIN kb_chunks c ON c.id = f.rowid WHERE kb_cjk MATCH ? AND {in_bases}"
                " ORDER BY f.rank LIMIT ?", (_match(trigrams), *bases, limit))]
        for pair in (r for r in runs if len(r) == 2):
            # a trigram index cannot look up two characters: scan the CJK chunks only
            ids += [r[0] for r in self._conn.execute(
                f"SELECT c.id FROM kb_chunks c WHERE c.cjk = 1 AND {in_bases} AND c.text LIKE ? LIMIT ?",
                (*bases, f"%{pair}%", limit))]
        return list(dict.fromkeys(ids))

    async def _lexical(self, bases: Sequence[str], query: str, qterms: list[str], k: int,
                       min_score: float) -> list[Passage]:
        stats = self._stats(qterms)
        qterms = settle(qterms, stats)
        words = candidate_terms(qterms, stats)
        if not words:
            return []
        ids = self._candidate_ids(list(bases), query, words, stats, candidate_limit(k))
        if not ids:
            return []
        rows = {r[0]: r[1:] for r in self._conn.execute(
            "SELECT c.id, c.base, d.doc, d.title, c.text, c.page, c.heading, d.url, d.blob, d.mime FROM kb_chunks c"
            f" JOIN kb_documents d ON d.id = c.document_id WHERE c.id IN ({_marks(len(ids))})", ids)}
        return rank(qterms, (candidate(*rows[i]) for i in ids if i in rows), stats, k, min_score)

    # -- dense retrieval (bot/knowledge/dense.py) -----------------------------------------

    async def missing_vectors(self, base: str, model: str, limit: int) -> list[tuple[int, str]]:
        rows = self._conn.execute(
            "SELECT c.id, d.title, c.heading, c.text FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
            " LEFT JOIN kb_vectors v ON v.chunk_id = c.id AND v.model = ? WHERE c.base = ? AND v.chunk_id IS NULL"
            " ORDER BY c.id LIMIT ?", (model, base, limit)).fetchall()
        return [(cid, body(title, heading, text)) for cid, title, heading, text in rows]

    async def put_vectors(self, model: str, vectors: Sequence[tuple[int, Sequence[float]]]) -> None:
        with self.store.transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO kb_vectors (chunk_id, model, vector) SELECT ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM kb_chunks WHERE id = ?)",
                [(cid, model, pack(v), cid) for cid, v in vectors])

    async def nearest(self, bases: Sequence[str], model: str, vector: Sequence[float], n: int) -> list[Passage]:
        if not bases or n <= 0:
            return []
        rows = self._conn.execute(
            f"SELECT v.chunk_id, v.vector FROM kb_vectors v JOIN kb_chunks c ON c.id = v.chunk_id"
            f" WHERE v.model = ? AND c.base IN ({_marks(len(bases))})", (model, *bases)).fetchall()
        query = np.asarray(vector, dtype=np.float32)
        rows = [r for r in rows if len(r[1]) == 4 * len(query)]  # vectors of another size: another model's
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), len(query))
        sims = matrix @ query
        best = np.argsort(-sims, kind="stable")[:n]
        ids = [rows[i][0] for i in best]
        found = {r[0]: r[1:] for r in self._conn.execute(
            "SELECT c.id, c.base, d.doc, d.title, c.text, c.page, c.heading, d.url, d.blob, d.mime FROM kb_chunks c"
            f" JOIN kb_documents d ON d.id = c.document_id WHERE c.id IN ({_marks(len(ids))})", ids)}
        return [Passage(base=b, doc=doc, title=title, text=text, page=page, heading=heading, url=url, blob=blob,
                        mime=mime, score=round(float(sims[i]), 4))
                for i, cid in zip(best, ids, strict=True) if cid in found
                for b, doc, title, text, page, heading, url, blob, mime in [found[cid]]]


__all__ = ["SQLiteKnowledge"]
