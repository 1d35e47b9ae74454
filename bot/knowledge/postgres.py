""":class:`~bot.knowledge.base.KnowledgeStore` in the store's PostgreSQL database (tables ``kb_*``, migration
``p003_knowledge`` in bot/store/postgres/store.py), on the store's connection pool: every replica searches
the same bases.

Each chunk's ``tsv`` is ``to_tsvector(<its base's configuration>, terms) || to_tsvector('simple', terms)``,
under one GIN index. ``terms`` is the chunk's text as bot/knowledge/text.py cuts it (diacritics folded, CJK
runs as character pairs separated by spaces, which PostgreSQL's parser cannot segment by itself), so the
base's configuration (``knowledge.bases.<name>.language``: ``en`` -> ``english``) stems the words of its
language and ``simple`` keeps every word as written: other languages, names, codes, CJK. A query asks for
any of its terms in both configurations. Candidates are ranked with ``ts_rank`` and then scored like
every backend's (bot/knowledge/text.py), from ``kb_terms``/``kb_stats``.

Dense retrieval (bot/knowledge/dense.py) keeps one unit vector per chunk in ``kb_vectors`` as ``real[]``
(pgvector is not packaged for the PostgreSQL 15 of Debian bookworm), and :meth:`nearest` ranks the bases'
vectors by their dot product with the question's in SQL: an exact scan, fine for tens of thousands of chunks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from bot.knowledge.base import BaseSummary, Chunk, Document, Passage, Source
from bot.knowledge.text import (
    MIN_SCORE,
    LexicalSearch,
    Stats,
    body,
    candidate,
    candidate_limit,
    candidate_terms,
    rank,
    ranked,
    settle,
    terms,
)
from bot.store.postgres.store import PostgresStore

#: ISO 639-1 codes -> PostgreSQL's built-in text search configurations (snowball stemmers); others: simple.
CONFIGURATIONS: dict[str, str] = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "da": "danish", "nl": "dutch",
    "en": "english", "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "hi": "hindi",
    "hu": "hungarian", "id": "indonesian", "ga": "irish", "it": "italian", "lt": "lithuanian", "ne": "nepali",
    "no": "norwegian", "nb": "norwegian", "pt": "portuguese", "ro": "romanian", "ru": "russian",
    "sr": "serbian", "es": "spanish", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}

_DOC_COLUMNS = "base, doc, title, content_hash, mime, blob, pages, url, synced_at"


def configuration(language: str) -> str:
    """The text search configuration for a base's ``language`` (ISO 639-1, or a configuration's own name)."""
    code = language.strip().lower()
    if code in CONFIGURATIONS.values():
        return code
    return CONFIGURATIONS.get(code.split("-")[0].split("_")[0], "simple")


def _tsquery(words: Sequence[str]) -> str:
    """``'a' | 'b'``: any of the words (each quoted, so none is read as an operator)."""
    return " | ".join("'" + w.replace("'", "''").replace("\\", "\\\\") + "'" for w in words)


class PostgresKnowledge(LexicalSearch):
    """See the module docstring. ``store``: an opened :class:`PostgresStore`; ``languages``: base -> ISO code."""

    def __init__(self, store: PostgresStore, *, min_score: float = MIN_SCORE,
                 languages: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.min_score = min_score
        self.languages = dict(languages or {})
        self._clock = clock

    def _config(self, base: str) -> str:
        return configuration(self.languages.get(base, ""))

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.store.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()  # type: ignore[arg-type]

    @staticmethod
    async def _ensure_base(conn: AsyncConnection[Any], base: str, now: float) -> None:
        await conn.execute("INSERT INTO kb_bases (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           (base, now))

    # -- bases and sources ----------------------------------------------------------------

    async def add_sources(self, base: str, sources: Sequence[Source]) -> None:
        async with self.store.pool.connection() as conn, conn.transaction():
            await self._ensure_base(conn, base, self._clock())
            for s in sources:
                await conn.execute("INSERT INTO kb_sources (base, location, kind, added_at) VALUES (%s, %s, %s, %s)"
                                   " ON CONFLICT DO NOTHING", (base, s.location, s.kind, self._clock()))

    async def sources(self, base: str) -> list[Source]:
        rows = await self._rows("SELECT location, kind FROM kb_sources WHERE base = %s ORDER BY id",
                                (base,))
        return [Source(base, location, kind) for location, kind in rows]

    async def remove_source(self, base: str, location: str) -> bool:
        async with self.store.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM kb_sources WHERE base = %s AND location = %s", (base, location))
            return cur.rowcount > 0

    async def documents(self, base: str) -> list[Document]:
        rows = await self._rows(f"SELECT {_DOC_COLUMNS} FROM kb_documents WHERE base = %s ORDER BY doc", (base,))
        return [Document(*row) for row in rows]

    async def bases(self) -> list[BaseSummary]:
        rows = await self._rows(
            "SELECT b.name, (SELECT count(*) FROM kb_documents d WHERE d.base = b.name),"
            " (SELECT count(*) FROM kb_chunks c WHERE c.base = b.name),"
            " (SELECT max(synced_at) FROM kb_documents d WHERE d.base = b.name) FROM kb_bases b ORDER BY b.name")
        return [BaseSummary(name, docs, chunks, tuple(await self.sources(name)), synced)
                for name, docs, chunks, synced in rows]

    # -- documents ------------------------------------------------------------------------

    @staticmethod
    async def _drop(conn: AsyncConnection[Any], where: str, params: Sequence[Any]) -> int:
        """Remove the documents matching ``where`` (on ``kb_documents d``), their chunks and statistics."""
        await conn.execute(
            "WITH gone AS (SELECT unnest(c.terms) AS term FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
            f" WHERE {where}), n AS (SELECT term, count(*) AS k FROM gone GROUP BY term)"
            " UPDATE kb_terms t SET df = t.df - n.k FROM n WHERE t.term = n.term", params)  # type: ignore[arg-type]
        await conn.execute("DELETE FROM kb_terms WHERE df <= 0")
        await conn.execute(
            "WITH s AS (SELECT count(*) AS chunks, coalesce(sum(c.length), 0) AS length FROM kb_chunks c"
            f" JOIN kb_documents d ON d.id = c.document_id WHERE {where})"
            " UPDATE kb_stats SET value = value - CASE name WHEN 'chunks' THEN s.chunks ELSE s.length END FROM s",
            params)  # type: ignore[arg-type]
        cur = await conn.execute(f"DELETE FROM kb_documents d WHERE {where}", params)  # type: ignore[arg-type]
        return cur.rowcount

    async def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        d = document
        config = self._config(d.base)
        rows = []
        df: Counter[str] = Counter()
        for position, chunk in enumerate(chunks):
            found = terms(body(d.title, chunk.heading, chunk.text))
            distinct = sorted(set(found))
            df.update(distinct)
            rows.append((chunk, position, len(found), distinct, " ".join(found)))
        async with self.store.pool.connection() as conn, conn.transaction():
            await self._ensure_base(conn, d.base, self._clock())
            await self._drop(conn, "d.base = %s AND d.doc = %s", (d.base, d.doc))
            cur = await conn.execute(
                f"INSERT INTO kb_documents ({_DOC_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (d.base, d.doc, d.title, d.content_hash, d.mime, d.blob, d.pages, d.url, d.synced_at or self._clock()))
            row = await cur.fetchone()
            assert row is not None
            doc_id = row[0]
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO kb_chunks (document_id, base, page, heading, text, position, length, terms, language,"
                    " tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::regconfig,"
                    " to_tsvector(%s::regconfig, %s) || to_tsvector('simple', %s))",
                    [(doc_id, d.base, c.page, c.heading, c.text, pos, n, distinct, config, config, joined, joined)
                     for c, pos, n, distinct, joined in rows])
            ordered = sorted(df.items())
            await conn.execute(
                "INSERT INTO kb_terms (term, df) SELECT * FROM unnest(%s::text[], %s::bigint[])"
                " ON CONFLICT (term) DO UPDATE SET df = kb_terms.df + excluded.df",
                ([t for t, _ in ordered], [n for _, n in ordered]))
            await conn.execute(
                "UPDATE kb_stats SET value = value + CASE name WHEN 'chunks' THEN %s ELSE %s END",
                (len(rows), sum(r[2] for r in rows)))

    async def remove_documents(self, base: str, docs: Sequence[str]) -> int:
        async with self.store.pool.connection() as conn, conn.transaction():
            return await self._drop(conn, "d.base = %s AND d.doc = ANY(%s)", (base, list(docs)))

    async def remove_base(self, base: str) -> bool:
        async with self.store.pool.connection() as conn, conn.transaction():
            await self._drop(conn, "d.base = %s", (base,))
            cur = await conn.execute("DELETE FROM kb_bases WHERE name = %s", (base,))
            return cur.rowcount > 0

    # -- search ---------------------------------------------------------------------------

    async def _lexical(self, bases: Sequence[str], query: str, qterms: list[str], k: int,
                       min_score: float) -> list[Passage]:
        async with self.store.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT term, df FROM kb_terms WHERE term = ANY(%s) UNION ALL SELECT '\x01' || name, value FROM kb_stats",
                (list(qterms),))).fetchall()
            found = dict(rows)
            stats = Stats(int(found.pop("\x01chunks", 0)), int(found.pop("\x01length", 0)), found)
            qterms = settle(qterms, stats)
            words = candidate_terms(qterms, stats)
            if not words:
                return []
            configs = sorted({self._config(b) for b in bases} | {"simple"})
            order = "ORDER BY ts_rank(c.tsv, q.q) DESC, c.id" if ranked(words, stats) else ""
            tsquery = " || ".join("to_tsquery(%s::regconfig, %s)" for _ in configs)
            params: list[Any] = [x for config in configs for x in (config, _tsquery(words))]
            candidates = await (await conn.execute(
                f"WITH q AS (SELECT {tsquery} AS q) SELECT c.base, d.doc, d.title, c.text, c.page, c.heading, d.url,"
                " d.blob, d.mime FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id, q"
                f" WHERE c.tsv @@ q.q AND c.base = ANY(%s) {order} LIMIT %s",
                (*params, list(bases), candidate_limit(k)))).fetchall()  # type: ignore[arg-type]
        return rank(qterms, (candidate(*row) for row in candidates), stats, k, min_score)

    # -- dense retrieval (bot/knowledge/dense.py) -----------------------------------------

    async def missing_vectors(self, base: str, model: str, limit: int) -> list[tuple[int, str]]:
        rows = await self._rows(
            "SELECT c.id, d.title, c.heading, c.text FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
            " WHERE c.base = %s AND NOT EXISTS (SELECT 1 FROM kb_vectors v WHERE v.chunk_id = c.id AND v.model = %s)"
            " ORDER BY c.id LIMIT %s", (base, model, limit))
        return [(cid, body(title, heading, text)) for cid, title, heading, text in rows]

    async def put_vectors(self, model: str, vectors: Sequence[tuple[int, Sequence[float]]]) -> None:
        async with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO kb_vectors (chunk_id, model, vector) SELECT id, %s, %s::real[] FROM kb_chunks"
                " WHERE id = %s ON CONFLICT (chunk_id) DO UPDATE SET model = excluded.model, vector = excluded.vector",
                [(model, list(v), cid) for cid, v in vectors])

    async def nearest(self, bases: Sequence[str], model: str, vector: Sequence[float], n: int) -> list[Passage]:
        if not bases or n <= 0:
            return []
        rows = await self._rows(
            "SELECT c.base, d.doc, d.title, c.text, c.page, c.heading, d.url, d.blob, d.mime, s.sim FROM kb_vectors v"
            " JOIN kb_chunks c ON c.id = v.chunk_id JOIN kb_documents d ON d.id = c.document_id,"
            " LATERAL (SELECT sum(a * b) AS sim FROM unnest(v.vector, %s::real[]) AS t (a, b)) s"
            " WHERE v.model = %s AND c.base = ANY(%s) AND cardinality(v.vector) = %s"
            " ORDER BY s.sim DESC, c.id LIMIT %s", (list(vector), model, list(bases), len(vector), n))
        return [Passage(base=b, doc=doc, title=title, text=text, page=page, heading=heading, url=url, blob=blob,
                        mime=mime, score=round(float(sim), 4))
                for b, doc, title, text, page, heading, url, blob, mime, sim in rows]


__all__ = ["CONFIGURATIONS", "PostgresKnowledge", "configuration"]
