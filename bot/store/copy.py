"""``internvl-bot migrate --to postgres``: copy a SQLite store into PostgreSQL, idempotently.

Everything is copied with its ids — conversations, messages (pending ones stay pending: a replica answers
them), attachments (the files themselves go into the ``blobs`` table), processed platform events (a
platform's redelivery after the move is still recognised), platform message ids, usage counters and
stashed pieces. Rows already copied are left as they are, so a copy that stopped half-way is simply run
again.

The knowledge bases (``kb_*``) follow: each base's sources (with their kind: ``--ocr`` is remembered), and
each document with its chunks written through PostgreSQL's own knowledge store (bot/knowledge/postgres.py), so
its full-text index, term statistics and language configuration (``knowledge.bases.<name>.language``) are
PostgreSQL's; then the chunks' embedding vectors. A document already there with the same content hash is
left as it is (its missing vectors are still copied); the originals they show are among the ``blobs``. A message id that PostgreSQL already holds for a different message means the database is in use
by another store: the copy stops with an error instead of mixing the two.

The SQLite file is opened read-only; stop the service first (``serve`` with SQLite is one process).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

BATCH = 500


@dataclass
class CopyReport:
    copied: dict[str, int] = field(default_factory=dict)  # table: rows new in PostgreSQL
    present: dict[str, int] = field(default_factory=dict)  # table: rows that were already there
    missing_files: list[str] = field(default_factory=list)  # attachments whose file was gone

    def line(self) -> str:
        parts = [f"{table} {self.copied.get(table, 0)} new, {self.present.get(table, 0)} already there"
                 for table in (*TABLES, *KNOWLEDGE_TABLES)]
        missing = f"; {len(self.missing_files)} attachment file(s) missing" if self.missing_files else ""
        return "; ".join(parts) + missing


# table, columns, conflict target, columns holding JSON text in SQLite (jsonb in PostgreSQL)
TABLES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "conversations": (("id", "platform", "chat", "thread", "persona", "language", "last_language", "context_start",
                       "created_at", "updated_at", "mode", "handoff_at", "name", "number", "operator", "operator_at"),
                      "(id)", ()),
    "messages": (("id", "conversation_id", "role", "kind", "text", "state", "sender_id", "sender_name", "locale",
                  "platform_message_id", "platform_ids", "drafts", "route", "event_id", "reply_to", "error",
                  "created_at", "updated_at"), "(id)", ("platform_ids", "drafts", "route")),
    "blobs": (("sha256", "mime", "size", "data", "created_at"), "(sha256)", ()),
    "message_attachments": (("message_id", "position", "ref", "filename", "mime", "size", "sha256"),
                            "(message_id, position)", ()),
    "events": (("platform", "event_id", "created_at"), "(platform, event_id)", ()),
    "platform_refs": (("platform", "chat", "platform_id", "message_id"), "(platform, chat, platform_id)", ()),
    "usage": (("id", "user", "kind", "amount", "at"), "(id)", ()),
    "stash": (("bucket", "item", "payload", "at"), "(bucket, item)", ()),
}


#: What the knowledge copy counts in the report (bases come with their sources and documents).
KNOWLEDGE_TABLES = ("kb_sources", "kb_documents", "kb_chunks", "kb_vectors")


def _sqlite_rows(conn: sqlite3.Connection, table: str, columns: Sequence[str], files: Path,
                 report: CopyReport) -> Iterator[list[tuple[Any, ...]]]:
    """The SQLite table's rows in batches (``blobs`` comes from ``attachments`` and the files)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({'attachments' if table == 'blobs' else table})")}
    if not have:
        return
    if table == "blobs":
        cursor = conn.execute("SELECT sha256, mime, size, path, created_at FROM attachments ORDER BY sha256")
    else:
        # a store from before conversation numbers: its row ids are unique numbers too
        select = ", ".join(f'"{c}"' if c in have else "rowid" if (table, c) == ("conversations", "number") else "NULL"
                           for c in columns)
        order = "id" if "id" in have else "rowid" if table not in ("platform_refs", "stash") else "1"
        cursor = conn.execute(f"SELECT {select} FROM {table} ORDER BY {order}")
    while rows := cursor.fetchmany(50 if table == "blobs" else BATCH):
        if table == "blobs":
            batch = []
            for sha, mime, size, path, created in rows:
                try:
                    data = (files / path).read_bytes()
                except OSError:
                    report.missing_files.append(sha)
                    continue
                batch.append((sha, mime, size, data, created))
            yield batch
        else:
            yield [tuple(row) for row in rows]


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise ConfigError(f"no SQLite store at {path} (store.path / data_dir)")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


async def copy_sqlite_to_postgres(sqlite_path: Path, files: Path, url: str, *,
                                  languages: Mapping[str, str] | None = None) -> CopyReport:
    """See the module docstring. ``files``: the SQLite store's attachments directory; ``languages``: base ->
    ISO code of its documents (``knowledge.bases.<name>.language``), for PostgreSQL's stemming."""
    from psycopg.types.json import Jsonb

    from bot.store.postgres.store import PostgresStore

    source = await asyncio.to_thread(_open_read_only, sqlite_path)
    target = PostgresStore(url)
    await target.open()  # creates the schema (migrations) when the database is new
    report = CopyReport()
    try:
        for table, (columns, conflict, json_columns) in TABLES.items():
            quoted = ", ".join(f'"{c}"' for c in columns)
            values = ", ".join("%s" for _ in columns)
            key = columns[0]
            sql = (f"INSERT INTO {table} ({quoted}) VALUES ({values}) ON CONFLICT {conflict} DO NOTHING"
                   + (f' RETURNING "{key}"' if table in ("messages", "usage") else ""))
            json_at = [columns.index(c) for c in json_columns]
            batches = _sqlite_rows(source, table, columns, files, report)
            while True:
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    break
                rows = []
                for row in batch:
                    row = list(row)
                    for i in json_at:
                        row[i] = Jsonb(json.loads(row[i])) if row[i] else None
                    rows.append(tuple(row))
                new = await _insert(target, table, sql, rows)
                report.copied[table] = report.copied.get(table, 0) + new
                report.present[table] = report.present.get(table, 0) + len(rows) - new
        async with target.pool.connection() as conn:
            for table in ("messages", "usage"):  # ids copied as they were: the sequences continue after them
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                                   f" GREATEST((SELECT max(id) FROM {table}), 1))")
            # and the conversation numbers continue after the copied ones
            await conn.execute("INSERT INTO counters (name, value) SELECT 'conversations:' || platform, max(number)"
                               " FROM conversations WHERE number IS NOT NULL GROUP BY platform ON CONFLICT (name)"
                               " DO UPDATE SET value = GREATEST(counters.value, excluded.value)")
        await _copy_knowledge(source, target, languages or {}, report)
    finally:
        source.close()
        await target.close()
    return report


async def _insert(target: Any, table: str, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """Insert one batch in one transaction; the number of rows that were new. A message or usage id already
    taken by a different row stops the copy (the database belongs to another store)."""
    async with target.pool.connection() as conn, conn.transaction():
        new = 0
        async with conn.cursor() as cur:
            await cur.executemany(sql, rows, returning=table in ("messages", "usage"))
            if table not in ("messages", "usage"):
                return cur.rowcount if cur.rowcount >= 0 else 0
            inserted: set[Any] = set()
            while True:
                row = await cur.fetchone()
                if row is not None:
                    inserted.add(row[0])
                if not cur.nextset():
                    break
            new = len(inserted)
        already = [row for row in rows if row[0] not in inserted]
        if already:
            if table == "messages":
                check = "SELECT id, conversation_id, created_at FROM messages WHERE id = ANY(%s)"
                wanted = {(r[0], r[1], r[16]) for r in already}
            else:
                check = 'SELECT id, "user", at FROM usage WHERE id = ANY(%s)'
                wanted = {(r[0], r[1], r[4]) for r in already}
            found = {tuple(r) for r in await (await conn.execute(check, ([r[0] for r in already],))).fetchall()}
            if wanted - found:
                raise ConfigError(f"the PostgreSQL database already holds other {table} with the same ids: copy into "
                                  "a new, empty database (or the one an earlier copy of this store went to)")
        return new


def _count(report: CopyReport, table: str, new: int, present: int) -> None:
    report.copied[table] = report.copied.get(table, 0) + new
    report.present[table] = report.present.get(table, 0) + present


async def _copy_knowledge(source: sqlite3.Connection, target: Any, languages: Mapping[str, str],
                          report: CopyReport) -> None:
    """The knowledge bases of ``source`` into ``target`` (see the module docstring); nothing for a store from
    before them."""
    from bot.knowledge.base import Chunk, Document, Source
    from bot.knowledge.postgres import PostgresKnowledge

    def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return source.execute(sql, params).fetchall()

    tables = {r[0] for r in await asyncio.to_thread(rows, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "kb_documents" not in tables:
        return
    index = PostgresKnowledge(target, languages=languages)
    bases = [r[0] for r in await asyncio.to_thread(
        rows, "SELECT name FROM kb_bases UNION SELECT base FROM kb_sources UNION SELECT base FROM kb_documents")]
    for base in sorted(bases):
        stored = await asyncio.to_thread(rows, "SELECT location, kind FROM kb_sources WHERE base = ? ORDER BY rowid",
                                         (base,))
        there = {s.location for s in await index.sources(base)}
        await index.add_sources(base, [Source(base, location, kind) for location, kind in stored])
        _count(report, "kb_sources", sum(1 for loc, _ in stored if loc not in there),
               sum(1 for loc, _ in stored if loc in there))
        copied = {d.doc: d.content_hash for d in await index.documents(base)}
        documents = await asyncio.to_thread(
            rows, "SELECT id, doc, title, content_hash, mime, blob, pages, url, synced_at FROM kb_documents"
                  " WHERE base = ? ORDER BY doc", (base,))
        for doc_id, doc, title, digest, mime, blob, pages, url, synced in documents:
            chunks = await asyncio.to_thread(
                rows, "SELECT id, text, page, heading FROM kb_chunks WHERE document_id = ? ORDER BY position",
                (doc_id,))
            if copied.get(doc) == digest:
                _count(report, "kb_documents", 0, 1)
                _count(report, "kb_chunks", 0, len(chunks))
            else:  # new, or changed since an earlier copy: replaced whole, as kb sync would
                await index.put_document(Document(base, doc, title, digest, mime, blob, pages, url, synced),
                                         [Chunk(text, page, heading) for _, text, page, heading in chunks])
                _count(report, "kb_documents", 1, 0)
                _count(report, "kb_chunks", len(chunks), 0)
            vectors = await asyncio.to_thread(
                rows, "SELECT c.position, v.model, v.vector FROM kb_vectors v JOIN kb_chunks c ON c.id = v.chunk_id"
                      " WHERE c.document_id = ? ORDER BY c.position", (doc_id,)) \
                if "kb_vectors" in tables else []  # a store from before dense retrieval
            if vectors:
                new = await _copy_vectors(index, target, base, doc, vectors)
                _count(report, "kb_vectors", new, len(vectors) - new)


async def _copy_vectors(index: Any, target: Any, base: str, doc: str,
                        vectors: Sequence[tuple[int, str, bytes]]) -> int:
    """One document's embeddings (chunk position, model, float32 bytes) onto its chunks in ``target``, those
    not there yet; how many were copied."""
    import numpy as np

    async with target.pool.connection() as conn:
        ids = dict(await (await conn.execute(
            "SELECT c.position, c.id FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id"
            " WHERE d.base = %s AND d.doc = %s", (base, doc))).fetchall())
        have = {(r[0], r[1]) for r in await (await conn.execute(
            "SELECT v.chunk_id, v.model FROM kb_vectors v WHERE v.chunk_id = ANY(%s)",
            (list(ids.values()),))).fetchall()}
    missing: dict[str, list[tuple[int, list[float]]]] = {}
    for position, model, vector in vectors:
        chunk_id = ids.get(position)
        if chunk_id is not None and (chunk_id, model) not in have:
            missing.setdefault(model, []).append((chunk_id, np.frombuffer(vector, dtype=np.float32).tolist()))
    for model, batch in missing.items():
        await index.put_vectors(model, batch)
    return sum(len(batch) for batch in missing.values())
