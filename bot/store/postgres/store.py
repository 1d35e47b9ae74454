""":class:`~bot.store.base.Store` on PostgreSQL, for several replicas sharing one database.

psycopg 3 with its async connection pool: no call blocks the event loop. Everything replicas share is in
the database — conversations, messages, processed platform events, usage counters, stashed pieces and the
attachments themselves (table ``blobs``, stored once by SHA-256) — so replicas share nothing else.
Nothing about a conversation is cached in the process: another replica may change it at any moment.

Migrations are named and append-only like SQLite's; several replicas starting at once run them safely,
one after the other, under a transaction-level advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from bot.errors import StartupError
from bot.ops.logs import register_secret
from bot.store.base import (
    ORPHAN_GRACE,
    STORE_ERRORS,
    AnswerMeta,
    Conversation,
    ConversationSummary,
    Feedback,
    ForgetReport,
    Kind,
    Mode,
    NewFeedback,
    NewMessage,
    State,
    StoredAttachment,
    StoredMessage,
    checked_sha256,
    sha256_of,
)
from bot.store.postgres.queue import ClaimQueries
from bot.types import NO_ROUTE, ConversationKey

STORE_ERRORS.extend([psycopg.Error, PoolTimeout])

log = logging.getLogger(__name__)

#: The advisory lock migrations run under (any constant the application owns).
MIGRATION_LOCK = 0x696E7476  # "intv"

MIGRATIONS: list[tuple[str, str]] = [
    ("p001_initial", """
CREATE TABLE conversations (
    id text PRIMARY KEY, platform text NOT NULL, chat text NOT NULL, thread text NOT NULL DEFAULT '',
    persona text, language text, last_language text, context_start bigint NOT NULL DEFAULT 0,
    created_at double precision NOT NULL, updated_at double precision,
    mode text NOT NULL DEFAULT 'bot', handoff_at double precision);
CREATE INDEX conversations_waiting ON conversations (handoff_at) WHERE mode = 'human';
CREATE TABLE messages (
    id bigserial PRIMARY KEY, conversation_id text NOT NULL REFERENCES conversations (id),
    role text NOT NULL, kind text NOT NULL, text text NOT NULL, state text NOT NULL,
    sender_id text, sender_name text, locale text, platform_message_id text,
    platform_ids jsonb, drafts jsonb, route jsonb, event_id text, reply_to bigint, error text,
    created_at double precision NOT NULL, updated_at double precision);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
CREATE INDEX messages_pending ON messages (conversation_id, id) WHERE role = 'user' AND state IN ('received', 'answering');
CREATE INDEX messages_created ON messages (created_at);
CREATE INDEX messages_platform_id ON messages (platform_message_id) WHERE platform_message_id IS NOT NULL;
CREATE TABLE blobs (
    sha256 text PRIMARY KEY, mime text, size bigint NOT NULL, data bytea NOT NULL,
    created_at double precision NOT NULL);
CREATE TABLE message_attachments (
    message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE, position integer NOT NULL,
    ref text, filename text, mime text, size bigint, sha256 text, PRIMARY KEY (message_id, position));
CREATE INDEX message_attachments_sha ON message_attachments (sha256);
CREATE TABLE events (
    platform text NOT NULL, event_id text NOT NULL, created_at double precision NOT NULL,
    PRIMARY KEY (platform, event_id));
CREATE INDEX events_created ON events (created_at);
CREATE TABLE platform_refs (
    platform text NOT NULL, chat text NOT NULL, platform_id text NOT NULL, message_id bigint NOT NULL,
    PRIMARY KEY (platform, chat, platform_id));
CREATE INDEX platform_refs_message ON platform_refs (message_id);
CREATE TABLE usage (
    id bigserial PRIMARY KEY, "user" text NOT NULL, kind text NOT NULL, amount double precision NOT NULL,
    at double precision NOT NULL);
CREATE INDEX usage_user ON usage ("user", kind, at);
CREATE INDEX usage_at ON usage (at);
CREATE TABLE stash (
    bucket text NOT NULL, item text NOT NULL, payload text NOT NULL, at double precision NOT NULL,
    PRIMARY KEY (bucket, item));
CREATE TABLE claims (
    conversation_id text PRIMARY KEY, replica text NOT NULL, token bigint NOT NULL,
    lease_until double precision NOT NULL);
"""),
    # the operator inbox names people: the platform's name for the user, a small number per platform (from
    # counters, never reused), and the operator who answered last
    ("p002_conversation_names", """
ALTER TABLE conversations ADD COLUMN name text, ADD COLUMN number bigint, ADD COLUMN operator text,
    ADD COLUMN operator_at double precision;
CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
UPDATE conversations c SET number = n.rn FROM (SELECT id, row_number() OVER (PARTITION BY platform
    ORDER BY created_at, id) AS rn FROM conversations) n WHERE n.id = c.id;
INSERT INTO counters (name, value) SELECT 'conversations:' || platform, max(number) FROM conversations
    GROUP BY platform;
UPDATE conversations c SET name = (SELECT m.sender_name FROM messages m WHERE m.conversation_id = c.id
    AND m.role = 'user' AND m.sender_name <> '' ORDER BY m.id DESC LIMIT 1);
"""),
    # knowledge bases (bot/knowledge/postgres.py): each chunk's search vector in its base's text search
    # configuration and in 'simple' (the fallback: any language, CJK character pairs), one GIN index; its
    # distinct terms, so that removing it updates the term statistics every backend scores with
    ("p003_knowledge", """
CREATE TABLE kb_bases (name text PRIMARY KEY, created_at double precision NOT NULL);
CREATE TABLE kb_sources (
    id bigserial, base text NOT NULL REFERENCES kb_bases (name) ON DELETE CASCADE, location text NOT NULL, kind text NOT NULL,
    added_at double precision NOT NULL, PRIMARY KEY (base, location));
CREATE TABLE kb_documents (
    id bigserial PRIMARY KEY, base text NOT NULL REFERENCES kb_bases (name) ON DELETE CASCADE, doc text NOT NULL,
    title text NOT NULL, content_hash text NOT NULL, mime text NOT NULL DEFAULT '', blob text NOT NULL DEFAULT '',
    pages integer, url text NOT NULL DEFAULT '', synced_at double precision NOT NULL, UNIQUE (base, doc));
CREATE INDEX kb_documents_blob ON kb_documents (blob) WHERE blob <> '';
CREATE TABLE kb_chunks (
    id bigserial PRIMARY KEY, document_id bigint NOT NULL REFERENCES kb_documents (id) ON DELETE CASCADE,
    base text NOT NULL, page integer, heading text NOT NULL DEFAULT '', text text NOT NULL,
    position integer NOT NULL, length integer NOT NULL, terms text[] NOT NULL,
    language regconfig NOT NULL DEFAULT 'simple', tsv tsvector NOT NULL);
CREATE INDEX kb_chunks_document ON kb_chunks (document_id, position);
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
CREATE TABLE kb_terms (term text PRIMARY KEY, df bigint NOT NULL);
CREATE TABLE kb_stats (name text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO kb_stats (name, value) VALUES ('chunks', 0), ('length', 0);
"""),
    # feedback on answers, each platform event once; what produced each answer; the users forgotten, whom no
    # training export may contain (rows of a deleted message go with it)
    ("p005_feedback", """
CREATE TABLE answer_meta (
    message_id bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE, persona text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '', sources jsonb);
CREATE TABLE feedback (
    id bigserial PRIMARY KEY, message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    conversation_id text NOT NULL, platform text NOT NULL, kind text NOT NULL, signal text NOT NULL,
    "user" text NOT NULL DEFAULT '', comment text NOT NULL DEFAULT '', value text NOT NULL DEFAULT '',
    persona text NOT NULL DEFAULT '', model text NOT NULL DEFAULT '', event_id text,
    created_at double precision NOT NULL);
CREATE UNIQUE INDEX feedback_event ON feedback (platform, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX feedback_message ON feedback (message_id);
CREATE INDEX feedback_created ON feedback (created_at);
CREATE TABLE forgotten (
    platform text NOT NULL, "user" text NOT NULL, at double precision NOT NULL, PRIMARY KEY (platform, "user"));
"""),
    # dense retrieval (bot/knowledge/dense.py): one unit vector per chunk and embedding model, as real[] (the
    # pgvector extension is not installable on this project's PostgreSQL 15 hosts: Debian bookworm lacks it)
    ("p006_knowledge_vectors", """
CREATE TABLE kb_vectors (
    chunk_id bigint PRIMARY KEY REFERENCES kb_chunks (id) ON DELETE CASCADE, model text NOT NULL,
    vector real[] NOT NULL);
"""),
]

_MSG_COLUMNS = (
    "id, conversation_id, role, kind, text, state, sender_id, sender_name, locale, "
    "platform_message_id, reply_to, error, created_at, platform_ids, drafts, route"
)


def _json(value: Sequence[str] | Mapping[str, str]) -> Jsonb | None:
    if not value:
        return None
    return Jsonb(dict(value) if isinstance(value, Mapping) else list(value))


def _list(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _map(value: Any) -> Mapping[str, str]:
    if not value:
        return NO_ROUTE
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


async def migrate(conn: AsyncConnection[Any]) -> list[str]:
    """Apply the migrations not yet applied, under the advisory lock; return their names."""
    applied = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name text PRIMARY KEY, applied_at double "
                           "precision NOT NULL)")
        done = {row[0] for row in await (await conn.execute("SELECT name FROM _migrations")).fetchall()}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            await conn.execute(sql)  # type: ignore[arg-type]
            await conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, %s)", (name, time.time()))
            applied.append(name)
    return applied


# TCP keepalives: a connection to a database that vanished (no FIN) is noticed within about 25 s.
KEEPALIVES: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
# The same on the server's side, for the election's connection: the server notices a replica whose machine
# vanished and releases its lock. (A pooler such as PgBouncer refuses ``options``: then it goes without.)
SERVER_KEEPALIVES = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"


class PostgresStore(ClaimQueries):
    """See the module docstring. ``url``: ``postgresql://user:password@host:5432/db``.

    Over 350 lines on purpose, as :class:`~bot.store.sqlite.SQLiteStore`: the whole ``Store`` contract for one
    backend, sharing one pool and its transactions (the claim scheduler's queries are apart, in ``queue``).
    """

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, min_size: int = 2,
                 max_size: int = 10, open_timeout: float = 30.0) -> None:
        self.url = url
        with contextlib.suppress(ValueError):
            register_secret(unquote(urlsplit(url).password or "") or None)  # never in a log line
        self._clock = clock
        self._min, self._max = min_size, max_size
        self._open_timeout = open_timeout
        self._pool: AsyncConnectionPool | None = None
        self._listeners: set[asyncio.Task[None]] = set()

    @property
    def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise RuntimeError("PostgresStore used before open()")
        return self._pool

    async def open(self) -> None:
        # check=: a connection broken while idle in the pool (the database restarted) is replaced, not handed out
        pool = AsyncConnectionPool(self.url, min_size=self._min, max_size=self._max, open=False,
                                   kwargs={"autocommit": True, **KEEPALIVES},
                                   check=AsyncConnectionPool.check_connection)
        try:
            await pool.open(wait=True, timeout=self._open_timeout)
            async with pool.connection() as conn:
                await migrate(conn)
        except PoolTimeout:
            await pool.close()
            where = urlsplit(self.url)
            raise StartupError(f"store: cannot reach PostgreSQL at {where.hostname}:{where.port or 5432}{where.path} "
                               f"within {self._open_timeout:.0f} s (is it running, and are the user and password "
                               "right?)") from None
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        for task in list(self._listeners):
            task.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        self._listeners.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- between replicas -----------------------------------------------------------------

    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """NOTIFY every replica listening on ``channel``: the payloads arrive together and in order (one
        transaction), each under PostgreSQL's 8,000-byte limit."""
        async with self.pool.connection() as conn, conn.transaction():
            for payload in payloads:
                await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def listen(self, channel: str, callback: Callable[[str], None], *, ready: asyncio.Event | None = None) -> None:
        """Call ``callback(payload)`` for each notification on ``channel``, on a connection of its own that
        is opened again when it breaks (a missed notification is covered by the caller's polling)."""

        async def run() -> None:
            while True:
                try:
                    conn = await AsyncConnection.connect(self.url, autocommit=True, **KEEPALIVES)
                    async with conn:
                        await conn.execute(f'LISTEN "{channel}"')
                        if ready is not None:
                            ready.set()
                        async for note in conn.notifies():
                            callback(note.payload)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("listening on %s: %s; listening again in 1 s", channel, exc)
                    await asyncio.sleep(1)

        self._listeners.add(asyncio.create_task(run(), name=f"listen {channel}"))

    def elect(self, name: str, lead: Callable[[], Awaitable[None]], *, retry: float = 2.0) -> asyncio.Task[None]:
        """Run ``lead()`` while this process holds the advisory lock ``name``: one replica of all at a time
        (Telegram allows one long poll per bot). The lock lives as long as a connection of its own: when the
        holder dies its connection closes, PostgreSQL releases the lock and another replica — they try every
        ``retry`` seconds — takes over. The holder checks its connection as often; when the connection is
        lost, ``lead()`` is cancelled (someone else may hold the lock by then). The task ends when ``lead()``
        returns."""

        async def run() -> None:
            waiting_logged = False
            server_side = True
            while True:
                try:
                    conn = await AsyncConnection.connect(self.url, autocommit=True, **KEEPALIVES,
                                                         **({"options": SERVER_KEEPALIVES} if server_side else {}))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if server_side:
                        server_side = False  # a pooler in between may refuse the options: try without
                        continue
                    log.warning("election %r: cannot connect (%s); trying again in %.0f s", name, exc, retry)
                    await asyncio.sleep(retry)
                    continue
                async with conn:
                    row = await (await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,))).fetchone()
                    if not (row and row[0]):
                        if not waiting_logged:
                            log.info("election %r: another replica leads; taking over if it stops", name)
                            waiting_logged = True
                        await conn.close()
                        await asyncio.sleep(retry)
                        continue
                    log.info("election %r: this replica leads", name)
                    waiting_logged = False
                    leading = asyncio.create_task(lead(), name=f"leading {name}")
                    try:
                        while not leading.done():
                            await asyncio.wait({leading}, timeout=retry)
                            if not leading.done():
                                # still connected: still holding the lock
                                await asyncio.wait_for(conn.execute("SELECT 1"), timeout=max(retry * 2, 5))
                    except asyncio.CancelledError:
                        leading.cancel()
                        await asyncio.gather(leading, return_exceptions=True)
                        raise
                    except Exception as exc:
                        log.warning("election %r: connection lost (%s): no longer leading", name, exc)
                        leading.cancel()
                        await asyncio.gather(leading, return_exceptions=True)
                        await asyncio.sleep(retry * 2)  # a replica with a healthy connection goes first
                        continue
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (name,))
                    leading.result()
                    return

        return asyncio.create_task(run(), name=f"election {name}")

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()  # type: ignore[arg-type]

    async def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchone()  # type: ignore[arg-type]

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.pool.connection() as conn:
            return (await conn.execute(sql, params)).rowcount  # type: ignore[arg-type]

    # -- conversations --------------------------------------------------------------------

    async def _conversation(self, conn: AsyncConnection[Any], key: ConversationKey) -> Conversation:
        select = ("SELECT persona, language, last_language, context_start, created_at, mode, handoff_at, name, number,"
                  " operator, operator_at FROM conversations WHERE id = %s")
        row = await (await conn.execute(select, (str(key),))).fetchone()
        if row is None:
            # looked up first: a number is taken only for a new conversation (two replicas creating the same
            # one at once leave a gap, never a repeat)
            now = self._clock()
            await conn.execute(
                "WITH n AS (INSERT INTO counters (name, value) VALUES (%s, 1) ON CONFLICT (name) DO UPDATE"
                " SET value = counters.value + 1 RETURNING value)"
                " INSERT INTO conversations (id, platform, chat, thread, created_at, updated_at, number)"
                " SELECT %s, %s, %s, %s, %s, %s, value FROM n ON CONFLICT (id) DO NOTHING",
                (f"conversations:{key.platform}", str(key), key.platform, key.chat, key.thread, now, now))
            row = await (await conn.execute(select, (str(key),))).fetchone()
        assert row is not None
        return Conversation(key, row[0], row[1], row[2], int(row[3] or 0), row[4], row[5] or "bot", row[6],
                            row[7] or "", int(row[8] or 0), row[9] or "", row[10])

    async def conversation(self, key: ConversationKey) -> Conversation:
        async with self.pool.connection() as conn:
            return await self._conversation(conn, key)

    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation:
        async with self.pool.connection() as conn, conn.transaction():
            return await self._update_conversation(conn, key, fields)

    async def _update_conversation(self, conn: AsyncConnection[Any], key: ConversationKey,
                                   fields: dict[str, object]) -> Conversation:
        await self._conversation(conn, key)
        await conn.execute("SELECT 1 FROM conversations WHERE id = %s FOR UPDATE", (str(key),))
        conv = replace(await self._conversation(conn, key), **fields)  # type: ignore[arg-type]
        await conn.execute(
            "UPDATE conversations SET persona = %s, language = %s, last_language = %s, context_start = %s,"
            " mode = %s, handoff_at = %s, name = %s, operator = %s, operator_at = %s, updated_at = %s WHERE id = %s",
            (conv.persona, conv.language, conv.last_language, conv.context_start, conv.mode, conv.handoff_at,
             conv.name, conv.operator, conv.operator_at, self._clock(), str(key)))
        return conv

    # -- messages -------------------------------------------------------------------------

    async def _insert(self, conn: AsyncConnection[Any], key: ConversationKey, m: NewMessage) -> int:
        now = self._clock()
        ids = m.all_platform_ids
        row = await (await conn.execute(
            "INSERT INTO messages (conversation_id, role, kind, text, state, sender_id, sender_name, locale,"
            " platform_message_id, platform_ids, route, event_id, reply_to, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (str(key), m.role, m.kind, m.text, m.state, m.sender_id, m.sender_name, m.locale,
             ids[0] if ids else None, _json(ids) if m.role == "assistant" else None, _json(m.route), m.event_id,
             m.reply_to, now, now))).fetchone()
        assert row is not None
        mid = int(row[0])
        if m.attachments:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO message_attachments (message_id, position, ref, filename, mime, size)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    [(mid, i, a.ref, a.filename, a.mime, a.size) for i, a in enumerate(m.attachments)])
        if len(ids) > 1:
            await self._refer(conn, key, ids[1:], mid)
        return mid

    async def _refer(self, conn: AsyncConnection[Any], key: ConversationKey, ids: Sequence[str], mid: int) -> None:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO platform_refs (platform, chat, platform_id, message_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (platform, chat, platform_id) DO UPDATE SET message_id = excluded.message_id",
                [(key.platform, key.chat, pid, mid) for pid in ids])

    async def add_message(self, key: ConversationKey, message: NewMessage) -> int:
        async with self.pool.connection() as conn, conn.transaction():
            await self._conversation(conn, key)
            return await self._insert(conn, key, message)

    async def add_incoming(self, key: ConversationKey, message: NewMessage) -> int | None:
        async with self.pool.connection() as conn, conn.transaction():
            await self._conversation(conn, key)
            if message.event_id:
                cur = await conn.execute(
                    "INSERT INTO events (platform, event_id, created_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING", (key.platform, message.event_id, self._clock()))
                if cur.rowcount != 1:
                    return None
            return await self._insert(conn, key, message)

    async def message(self, message_id: int) -> StoredMessage:
        rows = await self._messages(f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = %s", (message_id,))
        if not rows:
            raise KeyError(message_id)
        return rows[0]

    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None:
        await self._run("UPDATE messages SET state = %s, error = %s, updated_at = %s WHERE id = %s",
                        (state, error, self._clock(), message_id))

    async def start_answering(self, message_id: int, key: ConversationKey, **fields: object) -> Conversation:
        async with self.pool.connection() as conn, conn.transaction():
            conv = await (self._update_conversation(conn, key, fields) if fields else self._conversation(conn, key))
            await conn.execute("UPDATE messages SET state = 'answering', error = NULL, updated_at = %s WHERE id = %s",
                               (self._clock(), message_id))
        return conv

    async def set_platform_ids(self, message_id: int, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "UPDATE messages SET platform_message_id = %s, platform_ids = %s, updated_at = %s WHERE id = %s"
                " RETURNING conversation_id", (ids[0], _json(tuple(ids)), self._clock(), message_id))).fetchone()
            if row is not None and len(ids) > 1:
                await self._refer(conn, ConversationKey.parse(row[0]), ids[1:], message_id)

    async def set_drafts(self, message_id: int, ids: Sequence[str]) -> None:
        await self._run("UPDATE messages SET drafts = %s, updated_at = %s WHERE id = %s",
                        (_json(tuple(ids)), self._clock(), message_id))

    async def finish(self, message_id: int, state: State, *, reply: str | None = None, kind: Kind = "chat",
                     reply_platform_ids: Sequence[str] = (), error: str | None = None) -> int | None:
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                "UPDATE messages SET state = %s, error = %s, drafts = NULL, updated_at = %s WHERE id = %s"
                " RETURNING conversation_id", (state, error, self._clock(), message_id))).fetchone()
            if reply is None or row is None:
                return None
            return await self._insert(conn, ConversationKey.parse(row[0]), NewMessage(
                role="assistant", text=reply, kind=kind, state="answered", platform_ids=tuple(reply_platform_ids),
                reply_to=message_id))

    async def _messages(self, sql: str, params: Sequence[Any] = ()) -> list[StoredMessage]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(sql, params)).fetchall()  # type: ignore[arg-type]
            ids = [r[0] for r in rows]
            atts: dict[int, list[StoredAttachment]] = {}
            if ids:
                for a in await (await conn.execute(
                        "SELECT message_id, position, ref, filename, mime, size, sha256 FROM message_attachments"
                        " WHERE message_id = ANY(%s) ORDER BY message_id, position", (ids,))).fetchall():
                    atts.setdefault(a[0], []).append(StoredAttachment(*a[1:]))
        keys: dict[str, ConversationKey] = {}
        return [
            StoredMessage(
                id=r[0], key=keys.get(r[1]) or keys.setdefault(r[1], ConversationKey.parse(r[1])), role=r[2],
                kind=r[3], text=r[4], state=r[5], attachments=tuple(atts.get(r[0], ())), sender_id=r[6] or "",
                sender_name=r[7] or "", locale=r[8], platform_message_id=r[9], reply_to=r[10], error=r[11],
                created_at=r[12], platform_ids=_list(r[13]), drafts=_list(r[14]), route=_map(r[15]),
            )
            for r in rows
        ]

    async def history(self, key: ConversationKey, *, since: int, before: int, limit: int | None = None,
                      upto: int | None = None) -> list[StoredMessage]:
        rows = await self._messages(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = %s AND id >= %s AND id < %s"
            " AND kind = 'chat' AND ((role = 'user' AND state = 'answered' AND id < %s)"
            " OR (role = 'assistant' AND reply_to < %s)) ORDER BY id DESC LIMIT %s",
            (str(key), since, upto if upto is not None else 2**62, before, before, limit))
        return rows[::-1]

    async def pending(self) -> list[StoredMessage]:
        return await self._messages(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE role = 'user' AND state IN ('received', 'answering')"
            " ORDER BY id")

    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        rows = await self._messages(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = %s ORDER BY id DESC LIMIT %s",
            (str(key), limit))
        return rows[::-1]

    async def find_by_platform_id(self, platform: str, chat: str, platform_id: str) -> StoredMessage | None:
        conversation = f"{platform}:{chat}"
        found = None
        for mid, cid in await self._rows(
                "SELECT id, conversation_id FROM messages WHERE platform_message_id = %s ORDER BY id DESC",
                (platform_id,)):
            if cid == conversation or cid.startswith(conversation + ":"):
                found = mid
                break
        if found is None:
            row = await self._one("SELECT message_id FROM platform_refs WHERE platform = %s AND chat = %s"
                                  " AND platform_id = %s", (platform, chat, platform_id))
            found = row[0] if row else None
        if found is None:
            return None
        try:
            return await self.message(found)
        except KeyError:
            return None

    async def check(self) -> None:
        """A write that is rolled back: fails when the database is unreachable or read-only."""
        async with asyncio.timeout(5), self.pool.connection() as conn, conn.transaction(force_rollback=True):
            await conn.execute("INSERT INTO stash (bucket, item, payload, at) VALUES ('readyz', 'x', '', 0)"
                               " ON CONFLICT DO NOTHING")

    # -- attachments ----------------------------------------------------------------------

    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str:
        sha = await asyncio.to_thread(sha256_of, data) if len(data) > 1 << 20 else sha256_of(data)
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO blobs (sha256, mime, size, data, created_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (sha256) DO NOTHING", (sha, mime, len(data), data, self._clock()))
            await conn.execute(
                "UPDATE message_attachments SET sha256 = %s, size = %s, mime = COALESCE(NULLIF(mime, ''), %s)"
                " WHERE message_id = %s AND position = %s", (sha, len(data), mime, message_id, position))
        return sha

    async def save_blob(self, data: bytes, mime: str = "") -> str:
        sha = await asyncio.to_thread(sha256_of, data) if len(data) > 1 << 20 else sha256_of(data)
        await self._run("INSERT INTO blobs (sha256, mime, size, data, created_at) VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (sha256) DO NOTHING", (sha, mime, len(data), data, self._clock()))
        return sha

    async def attachment_data(self, sha256: str) -> bytes:
        row = await self._one("SELECT data FROM blobs WHERE sha256 = %s", (checked_sha256(sha256),))
        if row is None:
            raise FileNotFoundError(f"attachment {sha256} is not stored")
        return bytes(row[0])

    async def last_message_id(self) -> int:
        row = await self._one("SELECT COALESCE(MAX(id), 0) FROM messages")
        return int(row[0]) if row else 0

    # -- deleting -------------------------------------------------------------------------

    @staticmethod
    async def _used(conn: AsyncConnection[Any], where: str, params: Sequence[Any]) -> list[str]:
        """The attachments the messages matching ``where`` use (stored, or ``blob:`` refs not read yet)."""
        rows = await (await conn.execute(
            f"SELECT a.sha256, a.ref FROM message_attachments a JOIN messages m ON m.id = a.message_id WHERE {where}",
            params)).fetchall()  # type: ignore[arg-type]
        return sorted({x for sha, ref in rows for x in (sha, ref[5:] if ref and ref.startswith("blob:") else None)
                       if x})

    async def _drop_orphans(self, conn: AsyncConnection[Any], candidates: list[str]) -> int:
        """Blobs no message uses — neither stored for one nor waiting to be read (``blob:<sha256>`` refs): those
        the deleted messages used, and any older than ``ORPHAN_GRACE`` (an upload is stored a moment before its
        message)."""
        cur = await conn.execute(
            "DELETE FROM blobs b WHERE (created_at < %s OR sha256 = ANY(%s)) AND NOT EXISTS (SELECT 1 FROM"
            " message_attachments a WHERE a.sha256 = b.sha256 OR a.ref = 'blob:' || b.sha256)"
            # a knowledge base's originals (PDFs, images) are shown from their passages
            " AND NOT EXISTS (SELECT 1 FROM kb_documents k WHERE k.blob = b.sha256)",
            (self._clock() - ORPHAN_GRACE, candidates))
        return cur.rowcount

    async def forget(self, key: ConversationKey) -> ForgetReport:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                'INSERT INTO forgotten (platform, "user", at) SELECT DISTINCT %s, sender_id, %s::double precision'
                " FROM messages WHERE conversation_id = %s AND role = 'user' AND sender_id <> '' ON CONFLICT DO NOTHING",
                (key.platform, self._clock(), str(key)))
            used = await self._used(conn, "m.conversation_id = %s", (str(key),))
            await conn.execute("DELETE FROM platform_refs WHERE message_id IN"
                               " (SELECT id FROM messages WHERE conversation_id = %s)", (str(key),))
            n = (await conn.execute("DELETE FROM messages WHERE conversation_id = %s", (str(key),))).rowcount
            convs = (await conn.execute("DELETE FROM conversations WHERE id = %s", (str(key),))).rowcount
            files = await self._drop_orphans(conn, used)
        return ForgetReport(convs, n, files)

    async def purge(self, older_than: float) -> ForgetReport:
        async with self.pool.connection() as conn, conn.transaction():
            where = "created_at < %s AND state NOT IN ('received', 'answering')"
            used = await self._used(conn, "m.created_at < %s AND m.state NOT IN ('received', 'answering')",
                                    (older_than,))
            await conn.execute(f"DELETE FROM platform_refs WHERE message_id IN (SELECT id FROM messages WHERE {where})",
                               (older_than,))
            n = (await conn.execute(f"DELETE FROM messages WHERE {where}", (older_than,))).rowcount
            convs = (await conn.execute(
                "DELETE FROM conversations c WHERE created_at < %s AND NOT EXISTS"
                " (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)", (older_than,))).rowcount
            await conn.execute("DELETE FROM events WHERE created_at < %s", (older_than,))
            await conn.execute("DELETE FROM usage WHERE at < %s", (older_than,))
            files = await self._drop_orphans(conn, used)
        return ForgetReport(convs, n, files)

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, user: str, kind: str, amount: float, at: float) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute('INSERT INTO usage ("user", kind, amount, at) VALUES (%s, %s, %s, %s)',
                               (user, kind, amount, at))
            await conn.execute('DELETE FROM usage WHERE "user" = %s AND kind = %s AND at < %s',
                               (user, kind, at - 2 * 86400))

    async def usage(self, user: str, kind: str, since: float) -> tuple[float, float | None]:
        row = await self._one('SELECT COALESCE(SUM(amount), 0), MIN(at) FROM usage WHERE "user" = %s AND kind = %s'
                              " AND at >= %s", (user, kind, since))
        assert row is not None
        return float(row[0]), row[1]

    # -- stash ----------------------------------------------------------------------------

    async def stash(self, bucket: str, item: str, payload: str) -> None:
        await self._run("INSERT INTO stash (bucket, item, payload, at) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (bucket, item, payload, self._clock()))

    async def stashed(self, prefix: str) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for bucket, item, payload in await self._rows(
                "SELECT bucket, item, payload FROM stash WHERE starts_with(bucket, %s) ORDER BY at, item", (prefix,)):
            out.setdefault(bucket, []).append((item, payload))
        return out

    async def drop_stash(self, bucket: str, items: Sequence[str] | None = None) -> None:
        if items is None:
            await self._run("DELETE FROM stash WHERE bucket = %s", (bucket,))
        else:
            await self._run("DELETE FROM stash WHERE bucket = %s AND item = ANY(%s)", (bucket, list(items)))

    async def drop_stale_stash(self, prefix: str, before: float) -> int:
        rows = await self._rows(
            "WITH stale AS (SELECT bucket FROM stash WHERE starts_with(bucket, %s) GROUP BY bucket HAVING MAX(at) < %s),"
            " gone AS (DELETE FROM stash s USING stale WHERE s.bucket = stale.bucket RETURNING s.bucket)"
            " SELECT count(DISTINCT bucket) FROM gone", (prefix, before))
        return int(rows[0][0]) if rows else 0

    async def list_conversations(self, *, mode: Mode, limit: int = 100) -> list[ConversationSummary]:
        if mode == "human":
            ids = [r[0] for r in await self._rows(
                "SELECT id FROM conversations WHERE mode = 'human' ORDER BY handoff_at, id LIMIT %s", (limit,))]
        else:
            ids = [r[0] for r in await self._rows(
                "SELECT m.conversation_id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.id > (SELECT COALESCE(MAX(id), 0) - 5000 FROM messages) AND c.mode = 'bot'"
                " GROUP BY m.conversation_id ORDER BY MAX(m.id) DESC LIMIT %s", (limit,))]
        found = []
        for cid in ids:
            row = await self._one("SELECT created_at, text FROM messages WHERE conversation_id = %s AND role = 'user'"
                                  " ORDER BY id DESC LIMIT 1", (cid,))
            if row is not None:
                found.append(ConversationSummary(await self.conversation(ConversationKey.parse(cid)), row[0], row[1]))
        return found

    # -- feedback -------------------------------------------------------------------------

    async def record_answer(self, message_id: int, meta: AnswerMeta) -> None:
        await self._run(
            "INSERT INTO answer_meta (message_id, persona, model, sources) SELECT id, %s, %s, %s FROM messages"
            " WHERE id = %s ON CONFLICT (message_id) DO UPDATE SET persona = excluded.persona, model = excluded.model,"
            " sources = excluded.sources", (meta.persona, meta.model, _json(meta.sources), message_id))

    async def answer_meta(self, message_ids: Sequence[int]) -> dict[int, AnswerMeta]:
        rows = await self._rows("SELECT message_id, persona, model, sources FROM answer_meta WHERE message_id = ANY(%s)",
                                (list(message_ids),))
        return {int(r[0]): AnswerMeta(r[1], r[2], _list(r[3])) for r in rows}

    async def add_feedback(self, feedback: NewFeedback) -> int | None:
        row = await self._one(
            'INSERT INTO feedback (message_id, conversation_id, platform, kind, signal, "user", comment, value,'
            " persona, model, event_id, created_at) SELECT id, conversation_id, split_part(conversation_id, ':', 1),"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s FROM messages WHERE id = %s ON CONFLICT DO NOTHING RETURNING id",
            (feedback.kind, feedback.signal, feedback.user, feedback.comment, feedback.value, feedback.persona,
             feedback.model, feedback.event_id, self._clock(), feedback.message_id))
        return int(row[0]) if row else None

    async def set_feedback_comment(self, feedback_id: int, comment: str) -> None:
        await self._run("UPDATE feedback SET comment = %s WHERE id = %s", (comment, feedback_id))

    async def feedback(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                       platform: str | None = None, persona: str | None = None, newest_first: bool = False,
                       limit: int | None = None) -> list[Feedback]:
        where, params = _feedback_where(since, until, kinds, platform, persona)
        rows = await self._rows(
            'SELECT id, message_id, conversation_id, kind, signal, "user", comment, value, persona, model, created_at'
            f" FROM feedback WHERE {where} ORDER BY id {'DESC' if newest_first else ''} LIMIT %s",
            (*params, limit))
        keys: dict[str, ConversationKey] = {}
        return [Feedback(int(r[0]), int(r[1]), keys.get(r[2]) or keys.setdefault(r[2], ConversationKey.parse(r[2])),
                         *r[3:]) for r in rows]

    async def feedback_per_day(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                               platform: str | None = None, persona: str | None = None,
                               ) -> list[tuple[str, str, int]]:
        where, params = _feedback_where(since, until, kinds, platform, persona)
        rows = await self._rows(
            "SELECT to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, kind, count(*)"
            f" FROM feedback WHERE {where} GROUP BY day, kind ORDER BY day, kind", tuple(params))
        return [(day, kind, int(n)) for day, kind, n in rows]

    async def messages_by_id(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        ids = sorted(set(message_ids))
        out: list[StoredMessage] = []
        for start in range(0, len(ids), 2000):
            out.extend(await self._messages(f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = ANY(%s) ORDER BY id",
                                            (ids[start:start + 2000],)))
        return out

    async def forgotten(self) -> set[tuple[str, str]]:
        return {(r[0], r[1]) for r in await self._rows('SELECT platform, "user" FROM forgotten')}


def _feedback_where(since: float, until: float | None, kinds: Sequence[str], platform: str | None,
                    persona: str | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) of the feedback filters :meth:`PostgresStore.feedback` takes."""
    where, params = ["created_at >= %s"], [since]
    if until is not None:
        where.append("created_at < %s")
        params.append(until)
    if kinds:
        where.append("kind = ANY(%s)")
        params.append(list(kinds))
    for column, value in (("platform", platform), ("persona", persona)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    return " AND ".join(where), params


__all__ = ["MIGRATIONS", "PostgresStore", "migrate"]
