""":class:`~bot.store.base.Store` on a SQLite file: sqlite-utils, WAL mode, append-only named migrations.

Attachment bytes live under ``<files_dir>/ab/cd/<sha256>``; hashing, writing and reading them run in a
thread (a file can be 20 MB). Database calls are synchronous inside the async methods: each is one short
transaction on a local file (tens of microseconds in WAL mode), cheaper than a thread hop, with one
connection. Checkpoints — copying the WAL back into the database file, with two fsyncs — run in a thread
of their own on a second connection, not inside whichever commit crosses SQLite's threshold (that took up
to 10 ms on the event loop every thousand pages).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import sqlite_utils

from bot.store.base import (
    ORPHAN_GRACE,
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
from bot.types import NO_ROUTE, ConversationKey

log = logging.getLogger(__name__)

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []
#: Conversations kept in memory (their rows are read at most once per cache miss).
CONVERSATION_CACHE = 4096
#: Transactions committed between two checkpoints in the checkpoint thread (a turn commits about three
#: times and writes 15-20 pages: about SQLite's own 1,000 pages).
CHECKPOINT_COMMITS = 150
#: WAL pages past which SQLite checkpoints inside a commit itself: only if the thread falls far behind.
CHECKPOINT_BACKSTOP_PAGES = 20_000


def migration(fn: Migration) -> Migration:
    """Register an append-only, named migration. Never edit or reorder one that has shipped."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["conversations"].create(
        {
            "id": str, "platform": str, "chat": str, "thread": str, "persona": str, "language": str,
            "last_language": str, "context_start": int, "created_at": float, "updated_at": float,
        },
        pk="id",
        not_null={"platform", "chat", "thread", "context_start", "created_at"},
        defaults={"thread": "", "context_start": 0},
    )
    db["messages"].create(
        {
            "id": int, "conversation_id": str, "role": str, "kind": str, "text": str, "state": str,
            "sender_id": str, "sender_name": str, "locale": str, "platform_message_id": str,
            "event_id": str, "reply_to": int, "error": str, "created_at": float, "updated_at": float,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null={"conversation_id", "role", "kind", "text", "state", "created_at"},
    )
    db["messages"].create_index(["conversation_id", "id"])
    db["messages"].create_index(["state"])
    db["messages"].create_index(["created_at"])
    db["attachments"].create(
        {"sha256": str, "mime": str, "size": int, "path": str, "created_at": float}, pk="sha256"
    )
    db["message_attachments"].create(
        {
            "message_id": int, "position": int, "ref": str, "filename": str, "mime": str, "size": int,
            "sha256": str,
        },
        pk=("message_id", "position"),
        foreign_keys=[("message_id", "messages", "id")],
    )
    db["message_attachments"].create_index(["sha256"])
    db["events"].create({"platform": str, "event_id": str, "created_at": float}, pk=("platform", "event_id"))
    db["events"].create_index(["created_at"])


@migration
def m002_handoff(db: sqlite_utils.Database) -> None:
    db["conversations"].add_column("mode", str, not_null_default="bot")
    db["conversations"].add_column("handoff_at", float)


@migration
def m003_platform_ids_routes_usage(db: sqlite_utils.Database) -> None:
    """Replies spanning several platform messages, drafts of answers in progress, adapters' routes, a lookup
    by platform message id, and per-user usage counters."""
    db["messages"].add_column("platform_ids", str)
    db["messages"].add_column("drafts", str)
    db["messages"].add_column("route", str)
    # A message's (first) platform id is found through this index; the further messages a long reply
    # spans, through platform_refs. WITHOUT ROWID: the key is the table.
    db.conn.execute("CREATE INDEX idx_messages_platform_message_id ON messages (platform_message_id)"
                    " WHERE platform_message_id IS NOT NULL")
    db.conn.execute(
        "CREATE TABLE platform_refs (platform TEXT NOT NULL, chat TEXT NOT NULL, platform_id TEXT NOT NULL,"
        " message_id INTEGER NOT NULL, PRIMARY KEY (platform, chat, platform_id)) WITHOUT ROWID"
    )
    db["platform_refs"].create_index(["message_id"])
    db.conn.execute(
        "UPDATE messages SET platform_ids = json_array(platform_message_id)"
        " WHERE role = 'assistant' AND platform_message_id IS NOT NULL"
    )
    db["usage"].create({"id": int, "user": str, "kind": str, "amount": float, "at": float}, pk="id")
    db["usage"].create_index(["user", "kind", "at"])
    db["usage"].create_index(["at"])


@migration
def m004_stash(db: sqlite_utils.Database) -> None:
    """Pieces of messages that arrive in pieces (albums), kept until the adapter has them all."""
    db.conn.execute(
        "CREATE TABLE stash (bucket TEXT NOT NULL, item TEXT NOT NULL, payload TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (bucket, item)) WITHOUT ROWID"
    )


@migration
def m005_waiting_conversations(db: sqlite_utils.Database) -> None:
    """The operator inbox lists handed-off conversations, oldest handoff first."""
    db.conn.execute("CREATE INDEX idx_conversations_waiting ON conversations (handoff_at) WHERE mode = 'human'")


@migration
def m006_conversation_names(db: sqlite_utils.Database) -> None:
    """The operator inbox names people: the platform's name for the user, a small number per platform (given
    from ``counters``, never reused), and the operator who answered last."""
    for column, kind in (("name", str), ("number", int), ("operator", str), ("operator_at", float)):
        db["conversations"].add_column(column, kind)
    db.conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    db.conn.execute(
        "UPDATE conversations SET number = n.rn FROM (SELECT id, row_number() OVER (PARTITION BY platform"
        " ORDER BY created_at, id) AS rn FROM conversations) AS n WHERE n.id = conversations.id")
    db.conn.execute("INSERT INTO counters (name, value) SELECT 'conversations:' || platform, MAX(number)"
                    " FROM conversations GROUP BY platform")
    db.conn.execute(
        "UPDATE conversations SET name = (SELECT m.sender_name FROM messages m WHERE m.conversation_id ="
        " conversations.id AND m.role = 'user' AND m.sender_name <> '' ORDER BY m.id DESC LIMIT 1)")


@migration
def m007_knowledge(db: sqlite_utils.Database) -> None:
    """Knowledge bases (bot/knowledge/sqlite.py): what ``kb add`` was given, the documents read, their chunks,
    two full-text indexes of the chunks — words (BM25, diacritics folded) and character trigrams for
    Chinese and Japanese, which put no spaces between words — and the term statistics every knowledge
    backend scores with. The FTS tables hold no copy of the text (``content=''``): the chunks table has it."""
    for sql in (
        "CREATE TABLE kb_bases (name TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE TABLE kb_sources (base TEXT NOT NULL, location TEXT NOT NULL, kind TEXT NOT NULL,"
        " added_at REAL NOT NULL, PRIMARY KEY (base, location))",
        "CREATE TABLE kb_documents (id INTEGER PRIMARY KEY, base TEXT NOT NULL, doc TEXT NOT NULL,"
        " title TEXT NOT NULL, content_hash TEXT NOT NULL, mime TEXT NOT NULL DEFAULT '',"
        " blob TEXT NOT NULL DEFAULT '', pages INTEGER, url TEXT NOT NULL DEFAULT '', synced_at REAL NOT NULL,"
        " UNIQUE (base, doc))",
        "CREATE INDEX kb_documents_blob ON kb_documents (blob) WHERE blob <> ''",
        "CREATE TABLE kb_chunks (id INTEGER PRIMARY KEY, document_id INTEGER NOT NULL REFERENCES kb_documents (id),"
        " base TEXT NOT NULL, page INTEGER, heading TEXT NOT NULL DEFAULT '', text TEXT NOT NULL,"
        " position INTEGER NOT NULL, length INTEGER NOT NULL, cjk INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX kb_chunks_document ON kb_chunks (document_id, position)",
        "CREATE VIRTUAL TABLE kb_fts USING fts5(body, content='', tokenize='unicode61 remove_diacritics 2')",
        "CREATE VIRTUAL TABLE kb_cjk USING fts5(body, content='', tokenize='trigram')",
        "CREATE TABLE kb_terms (term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE kb_stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO kb_stats (name, value) VALUES ('chunks', 0), ('length', 0)",
    ):
        db.conn.execute(sql)


@migration
def m009_feedback(db: sqlite_utils.Database) -> None:
    """Feedback on answers (thumbs, CSAT, agents' use of drafts, implicit signals), each platform event once;
    what produced each answer (persona, model, cited passages); and the users who had their conversation
    forgotten, whom no training export may contain."""
    for sql in (
        "CREATE TABLE answer_meta (message_id INTEGER PRIMARY KEY, persona TEXT NOT NULL DEFAULT '',"
        " model TEXT NOT NULL DEFAULT '', sources TEXT)",
        "CREATE TABLE feedback (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, conversation_id TEXT NOT NULL,"
        " platform TEXT NOT NULL, kind TEXT NOT NULL, signal TEXT NOT NULL, user TEXT NOT NULL DEFAULT '',"
        " comment TEXT NOT NULL DEFAULT '', value TEXT NOT NULL DEFAULT '', persona TEXT NOT NULL DEFAULT '',"
        " model TEXT NOT NULL DEFAULT '', event_id TEXT, created_at REAL NOT NULL)",
        "CREATE UNIQUE INDEX feedback_event ON feedback (platform, event_id) WHERE event_id IS NOT NULL",
        "CREATE INDEX feedback_message ON feedback (message_id)",
        "CREATE INDEX feedback_created ON feedback (created_at)",
        "CREATE TABLE forgotten (platform TEXT NOT NULL, user TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (platform, user)) WITHOUT ROWID",
    ):
        db.conn.execute(sql)


@migration
def m010_knowledge_vectors(db: sqlite_utils.Database) -> None:
    """Dense retrieval (bot/knowledge/dense.py): one unit vector per chunk and embedding model, float32 blobs
    (the layout sqlite-vec reads), dropped with their chunk by bot/knowledge/sqlite.py."""
    db.conn.execute("CREATE TABLE kb_vectors (chunk_id INTEGER PRIMARY KEY, model TEXT NOT NULL, vector BLOB NOT NULL)")


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations not yet applied, in order; return their names."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with _Tx(db.conn):
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
        applied.append(name)
    return applied


_MSG_COLUMNS = (
    "id, conversation_id, role, kind, text, state, sender_id, sender_name, locale, "
    "platform_message_id, reply_to, error, created_at, platform_ids, drafts, route"
)


def _json_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    try:
        loaded = json.loads(value)
    except ValueError:
        return ()
    return tuple(str(v) for v in loaded) if isinstance(loaded, list) else ()


def _json_map(value: str | None) -> Mapping[str, str]:
    if not value:
        return NO_ROUTE
    try:
        loaded = json.loads(value)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _dump(value: Sequence[str] | Mapping[str, str]) -> str | None:
    return json.dumps(list(value) if not isinstance(value, Mapping) else dict(value), ensure_ascii=False) \
        if value else None


class SQLiteStore:
    """The default store. See the module docstring.

    One class over 350 lines on purpose: it is the whole ``Store`` contract for one backend (about thirty
    methods, each a few statements), and they share one connection, its transactions and the conversation
    cache; split by topic, a turn's statements (the message, its conversation, its attachments) would sit in
    classes that must still share that state.
    """

    def __init__(self, path: str | os.PathLike[str], files_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.files_dir = Path(files_dir) if files_dir else self.path.parent / "attachments"
        self._clock = clock
        self._db: sqlite_utils.Database | None = None
        self._conv_cache: OrderedDict[ConversationKey, Conversation] = OrderedDict()
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._checkpointing: Future[None] | None = None
        self._commits = 0
        self.checkpoints = 0  # run by the thread (tests)

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("SQLiteStore used before open()")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        db = sqlite_utils.Database(conn)
        db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(db)
        conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_BACKSTOP_PAGES}")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._db = db

    async def close(self) -> None:
        if self._checkpointer is not None:
            running, self._checkpointing = self._checkpointing, None
            if running is not None:
                await asyncio.wrap_future(running)
            self._checkpointer.shutdown()
            self._checkpointer = None
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()  # before the main one: the last connection to close removes the WAL
            self._checkpoint_conn = None
        if self._db is not None:
            self._db.conn.close()
            self._db = None
        self._conv_cache.clear()

    def _tx(self) -> _Tx:
        return _Tx(self.db.conn, self._committed)

    def transaction(self) -> _Tx:
        """A write transaction on the store's connection, for tables kept beside the store's own (the
        knowledge bases', bot/knowledge/sqlite.py): ``with store.transaction(): ...``."""
        return self._tx()

    def _committed(self) -> None:
        """Every :data:`CHECKPOINT_COMMITS` transactions, a checkpoint in the thread (one at a time)."""
        self._commits += 1
        if self._commits < CHECKPOINT_COMMITS or self._checkpointer is None or (
                self._checkpointing is not None and not self._checkpointing.done()):
            return
        self._commits = 0
        self._checkpointing = self._checkpointer.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # PASSIVE: readers and writers go on meanwhile; what they still use is copied next time
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # SQLite's own checkpoint (the backstop) takes over
            log.warning("checkpointing %s failed: %s", self.path, exc)

    # -- conversations --------------------------------------------------------------------

    def _cache(self, conv: Conversation) -> Conversation:
        self._conv_cache[conv.key] = conv
        self._conv_cache.move_to_end(conv.key)
        while len(self._conv_cache) > CONVERSATION_CACHE:
            self._conv_cache.popitem(last=False)
        return conv

    def _conversation(self, key: ConversationKey) -> Conversation:
        cached = self._conv_cache.get(key)
        if cached is not None:
            self._conv_cache.move_to_end(key)
            return cached
        row = self.db.conn.execute(
            "SELECT persona, language, last_language, context_start, created_at, mode, handoff_at, name, number,"
            " operator, operator_at FROM conversations WHERE id = ?",
            (str(key),),
        ).fetchone()
        if row is None:
            now = self._clock()
            with self._tx():
                [(number,)] = self.db.conn.execute(
                    "INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET"
                    " value = value + 1 RETURNING value", (f"conversations:{key.platform}",)).fetchall()
                self.db.conn.execute(
                    "INSERT INTO conversations (id, platform, chat, thread, context_start, created_at, updated_at,"
                    " number) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                    (str(key), key.platform, key.chat, key.thread, now, now, number),
                )
            return self._cache(Conversation(key=key, created_at=now, number=number))
        return self._cache(Conversation(key, row[0], row[1], row[2], row[3] or 0, row[4], row[5] or "bot", row[6],
                                        row[7] or "", row[8] or 0, row[9] or "", row[10]))

    async def conversation(self, key: ConversationKey) -> Conversation:
        return self._conversation(key)

    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation:
        return self._update_conversation(key, fields)

    def _update_conversation(self, key: ConversationKey, fields: dict[str, object]) -> Conversation:
        conv = replace(self._conversation(key), **fields)  # type: ignore[arg-type]
        self.db.conn.execute(
            "UPDATE conversations SET persona = ?, language = ?, last_language = ?, context_start = ?,"
            " mode = ?, handoff_at = ?, name = ?, operator = ?, operator_at = ?, updated_at = ? WHERE id = ?",
            (conv.persona, conv.language, conv.last_language, conv.context_start, conv.mode, conv.handoff_at,
             conv.name, conv.operator, conv.operator_at, self._clock(), str(key)),
        )
        return self._cache(conv)

    # -- messages -------------------------------------------------------------------------

    def _insert_message(self, key: ConversationKey, m: NewMessage) -> int:
        now = self._clock()
        ids = m.all_platform_ids
        cur = self.db.conn.execute(
            "INSERT INTO messages (conversation_id, role, kind, text, state, sender_id, sender_name, locale,"
            " platform_message_id, platform_ids, route, event_id, reply_to, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (str(key), m.role, m.kind, m.text, m.state, m.sender_id, m.sender_name, m.locale,
             ids[0] if ids else None, _dump(ids) if m.role == "assistant" else None, _dump(m.route), m.event_id,
             m.reply_to, now, now),
        )
        mid = int(cur.lastrowid or 0)
        if m.attachments:
            self.db.conn.executemany(
                "INSERT INTO message_attachments (message_id, position, ref, filename, mime, size)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(mid, i, a.ref, a.filename, a.mime, a.size) for i, a in enumerate(m.attachments)],
            )
        if len(ids) > 1:
            self._refer(key, ids[1:], mid)
        return mid

    def _refer(self, key: ConversationKey, ids: Sequence[str], mid: int) -> None:
        if ids:
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO platform_refs (platform, chat, platform_id, message_id) VALUES (?, ?, ?, ?)",
                [(key.platform, key.chat, pid, mid) for pid in ids],
            )

    async def add_message(self, key: ConversationKey, message: NewMessage) -> int:
        self._conversation(key)
        with self._tx():
            return self._insert_message(key, message)

    async def add_incoming(self, key: ConversationKey, message: NewMessage) -> int | None:
        self._conversation(key)
        with self._tx():
            if message.event_id:
                cur = self.db.conn.execute(
                    "INSERT OR IGNORE INTO events (platform, event_id, created_at) VALUES (?, ?, ?)",
                    (key.platform, message.event_id, self._clock()),
                )
                if cur.rowcount != 1:
                    return None
            return self._insert_message(key, message)

    async def message(self, message_id: int) -> StoredMessage:
        row = self.db.conn.execute(f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise KeyError(message_id)
        return self._rows_to_messages([row])[0]

    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None:
        self.db.conn.execute(
            "UPDATE messages SET state = ?, error = ?, updated_at = ? WHERE id = ?",
            (state, error, self._clock(), message_id),
        )

    async def start_answering(self, message_id: int, key: ConversationKey, **fields: object) -> Conversation:
        if not fields:
            conv = self._conversation(key)
            await self.set_state(message_id, "answering")
            return conv
        try:
            with self._tx():  # one commit for both
                conv = self._update_conversation(key, fields)
                self.db.conn.execute("UPDATE messages SET state = 'answering', error = NULL, updated_at = ?"
                                     " WHERE id = ?", (self._clock(), message_id))
        except BaseException:
            self._conv_cache.pop(key, None)  # rolled back: what the cache took is read again
            raise
        return conv

    async def set_platform_ids(self, message_id: int, ids: Sequence[str]) -> None:
        with self._tx():
            row = self.db.conn.execute("SELECT conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None or not ids:
                return
            self.db.conn.execute(
                "UPDATE messages SET platform_message_id = ?, platform_ids = ?, updated_at = ? WHERE id = ?",
                (ids[0], _dump(tuple(ids)), self._clock(), message_id))
            self._refer(ConversationKey.parse(row[0]), ids[1:], message_id)

    async def set_drafts(self, message_id: int, ids: Sequence[str]) -> None:
        self.db.conn.execute("UPDATE messages SET drafts = ?, updated_at = ? WHERE id = ?",
                             (_dump(tuple(ids)), self._clock(), message_id))

    async def finish(self, message_id: int, state: State, *, reply: str | None = None, kind: Kind = "chat",
                     reply_platform_ids: Sequence[str] = (), error: str | None = None) -> int | None:
        with self._tx():
            rows = self.db.conn.execute(  # RETURNING: no second statement to find the conversation
                "UPDATE messages SET state = ?, error = ?, drafts = NULL, updated_at = ? WHERE id = ?"
                " RETURNING conversation_id",
                (state, error, self._clock(), message_id),
            ).fetchall()
            if reply is None:
                return None
            return self._insert_message(
                ConversationKey.parse(rows[0][0]),
                NewMessage(role="assistant", text=reply, kind=kind, state="answered",
                           platform_ids=tuple(reply_platform_ids), reply_to=message_id),
            )

    def _rows_to_messages(self, rows: Sequence[tuple]) -> list[StoredMessage]:
        ids = [r[0] for r in rows]
        atts: dict[int, list[StoredAttachment]] = {}
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start:chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            for a in self.db.conn.execute(
                "SELECT message_id, position, ref, filename, mime, size, sha256 FROM message_attachments"
                f" WHERE message_id IN ({marks}) ORDER BY message_id, position",
                chunk,
            ):
                atts.setdefault(a[0], []).append(StoredAttachment(*a[1:]))
        keys: dict[str, ConversationKey] = {}
        return [
            StoredMessage(
                id=r[0], key=keys.get(r[1]) or keys.setdefault(r[1], ConversationKey.parse(r[1])), role=r[2], kind=r[3], text=r[4], state=r[5],
                attachments=tuple(atts.get(r[0], ())), sender_id=r[6] or "", sender_name=r[7] or "",
                locale=r[8], platform_message_id=r[9], reply_to=r[10], error=r[11], created_at=r[12],
                platform_ids=_json_list(r[13]), drafts=_json_list(r[14]), route=_json_map(r[15]),
            )
            for r in rows
        ]

    async def history(self, key: ConversationKey, *, since: int, before: int, limit: int | None = None,
                      upto: int | None = None) -> list[StoredMessage]:
        rows = self.db.conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ? AND id >= ? AND id < ?"
            " AND kind = 'chat' AND ((role = 'user' AND state = 'answered' AND id < ?)"
            " OR (role = 'assistant' AND reply_to < ?)) ORDER BY id DESC LIMIT ?",
            (str(key), since, upto if upto is not None else 2**62, before, before, limit if limit else -1),
        ).fetchall()
        return self._rows_to_messages(rows[::-1])

    async def pending(self) -> list[StoredMessage]:
        rows = self.db.conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE role = 'user' AND state IN ('received', 'answering')"
            " ORDER BY id"
        ).fetchall()
        return self._rows_to_messages(rows)

    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        rows = self.db.conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
            (str(key), limit),
        ).fetchall()
        return self._rows_to_messages(rows[::-1])

    async def find_by_platform_id(self, platform: str, chat: str, platform_id: str) -> StoredMessage | None:
        conversation = f"{platform}:{chat}"
        found = None
        for mid, cid in self.db.conn.execute(
            "SELECT id, conversation_id FROM messages WHERE platform_message_id = ? ORDER BY id DESC",
            (platform_id,),
        ):
            if cid == conversation or cid.startswith(conversation + ":"):
                found = mid
                break
        if found is None:
            row = self.db.conn.execute(
                "SELECT message_id FROM platform_refs WHERE platform = ? AND chat = ? AND platform_id = ?",
                (platform, chat, platform_id),
            ).fetchone()
            found = row[0] if row else None
        if found is None:
            return None
        try:
            return await self.message(found)
        except KeyError:
            return None

    async def check(self) -> None:
        # BEGIN IMMEDIATE takes the write lock: fails when the file is read-only, the disk is gone
        # or another writer holds it past busy_timeout.
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")

    # -- attachments ----------------------------------------------------------------------

    def _blob_path(self, sha: str) -> Path:
        sha = checked_sha256(sha)
        return self.files_dir / sha[:2] / sha[2:4] / sha

    def _write_blob(self, data: bytes) -> str:
        sha = sha256_of(data)
        path = self._blob_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{os.getpid()}.{id(data)}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str:
        sha = await asyncio.to_thread(self._write_blob, data)
        with self._tx():
            self.db.conn.execute(
                "INSERT OR IGNORE INTO attachments (sha256, mime, size, path, created_at) VALUES (?, ?, ?, ?, ?)",
                (sha, mime, len(data), str(self._blob_path(sha).relative_to(self.files_dir)), self._clock()),
            )
            self.db.conn.execute(
                "UPDATE message_attachments SET sha256 = ?, size = ?, mime = COALESCE(NULLIF(mime, ''), ?)"
                " WHERE message_id = ? AND position = ?",
                (sha, len(data), mime, message_id, position),
            )
        return sha

    async def save_blob(self, data: bytes, mime: str = "") -> str:
        sha = await asyncio.to_thread(self._write_blob, data)
        self.db.conn.execute(
            "INSERT OR IGNORE INTO attachments (sha256, mime, size, path, created_at) VALUES (?, ?, ?, ?, ?)",
            (sha, mime, len(data), str(self._blob_path(sha).relative_to(self.files_dir)), self._clock()))
        return sha

    async def attachment_data(self, sha256: str) -> bytes:
        path = self._blob_path(sha256)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise FileNotFoundError(f"attachment {sha256} is not stored") from None

    async def last_message_id(self) -> int:
        row = self.db.conn.execute("SELECT MAX(id) FROM messages").fetchone()
        return int(row[0] or 0)

    # -- deleting -------------------------------------------------------------------------

    def _delete_messages(self, where: str, params: Sequence[object]) -> tuple[int, set[str]]:
        """Delete messages; their count and the attachments they used (stored, or ``blob:`` refs)."""
        ids = [r[0] for r in self.db.conn.execute(f"SELECT id FROM messages WHERE {where}", params)]
        used: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for sha, ref in self.db.conn.execute(
                    f"SELECT sha256, ref FROM message_attachments WHERE message_id IN ({marks})", chunk):
                used.update(x for x in (sha, ref[5:] if ref and ref.startswith("blob:") else None) if x)
            self.db.conn.execute(f"DELETE FROM message_attachments WHERE message_id IN ({marks})", chunk)
            self.db.conn.execute(f"DELETE FROM platform_refs WHERE message_id IN ({marks})", chunk)
            self.db.conn.execute(f"DELETE FROM feedback WHERE message_id IN ({marks})", chunk)
            self.db.conn.execute(f"DELETE FROM answer_meta WHERE message_id IN ({marks})", chunk)
            self.db.conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        return len(ids), used

    def _take_orphans(self, candidates: set[str]) -> list[str]:
        """Delete the attachment rows no message refers to any more — neither stored for one nor waiting to be
        read (``blob:<sha256>`` refs): those the deleted messages used, and any older than ``ORPHAN_GRACE``
        (an upload is stored a moment before its message). Return their SHA-256s."""
        unused = ("sha256 NOT IN (SELECT sha256 FROM message_attachments WHERE sha256 IS NOT NULL) AND 'blob:' ||"
                  " sha256 NOT IN (SELECT ref FROM message_attachments WHERE ref LIKE 'blob:%')"
                  # a knowledge base's originals (PDFs, images) are shown from their passages
                  " AND sha256 NOT IN (SELECT blob FROM kb_documents WHERE blob <> '')")
        orphans = {r[0] for r in self.db.conn.execute(
            f"SELECT sha256 FROM attachments WHERE created_at < ? AND {unused}", (self._clock() - ORPHAN_GRACE,))}
        listed = sorted(candidates)
        for start in range(0, len(listed), 500):
            chunk = listed[start:start + 500]
            orphans.update(r[0] for r in self.db.conn.execute(
                f"SELECT sha256 FROM attachments WHERE sha256 IN ({','.join('?' * len(chunk))}) AND {unused}", chunk))
        self.db.conn.executemany("DELETE FROM attachments WHERE sha256 = ?", [(sha,) for sha in orphans])
        return sorted(orphans)

    def _unlink(self, shas: Sequence[str]) -> int:
        removed = 0
        for sha in shas:
            try:
                self._blob_path(sha).unlink()
                removed += 1
            except (FileNotFoundError, ValueError):
                continue
        return removed

    async def forget(self, key: ConversationKey) -> ForgetReport:
        with self._tx():
            self.db.conn.execute(
                "INSERT OR IGNORE INTO forgotten (platform, user, at) SELECT DISTINCT ?, sender_id, ? FROM messages"
                " WHERE conversation_id = ? AND role = 'user' AND sender_id <> ''", (key.platform, self._clock(), str(key)))
            n, used = self._delete_messages("conversation_id = ?", (str(key),))
            convs = self.db.conn.execute("DELETE FROM conversations WHERE id = ?", (str(key),)).rowcount
            orphans = self._take_orphans(used)
        self._conv_cache.pop(key, None)
        return ForgetReport(convs, n, await asyncio.to_thread(self._unlink, orphans))

    async def purge(self, older_than: float) -> ForgetReport:
        with self._tx():
            n, used = self._delete_messages("created_at < ? AND state NOT IN ('received', 'answering')",
                                            (older_than,))
            gone = [
                r[0] for r in self.db.conn.execute(
                    "SELECT id FROM conversations WHERE created_at < ? AND id NOT IN"
                    " (SELECT DISTINCT conversation_id FROM messages)", (older_than,)
                )
            ]
            for cid in gone:
                self.db.conn.execute("DELETE FROM conversations WHERE id = ?", (cid,))
            self.db.conn.execute("DELETE FROM events WHERE created_at < ?", (older_than,))
            self.db.conn.execute("DELETE FROM usage WHERE at < ?", (older_than,))
            orphans = self._take_orphans(used)
        self._conv_cache.clear()
        return ForgetReport(len(gone), n, await asyncio.to_thread(self._unlink, orphans))

    # -- usage ----------------------------------------------------------------------------

    async def record_usage(self, user: str, kind: str, amount: float, at: float) -> None:
        with self._tx():
            self.db.conn.execute("INSERT INTO usage (user, kind, amount, at) VALUES (?, ?, ?, ?)",
                                 (user, kind, amount, at))
            # Windows are a day at most: older rows of this user and kind are never read again.
            self.db.conn.execute("DELETE FROM usage WHERE user = ? AND kind = ? AND at < ?",
                                 (user, kind, at - 2 * 86400))

    async def usage(self, user: str, kind: str, since: float) -> tuple[float, float | None]:
        row = self.db.conn.execute(
            "SELECT COALESCE(SUM(amount), 0), MIN(at) FROM usage WHERE user = ? AND kind = ? AND at >= ?",
            (user, kind, since),
        ).fetchone()
        return float(row[0]), row[1]


    # -- stash ----------------------------------------------------------------------------

    async def stash(self, bucket: str, item: str, payload: str) -> None:
        self.db.conn.execute("INSERT OR IGNORE INTO stash (bucket, item, payload, at) VALUES (?, ?, ?, ?)",
                             (bucket, item, payload, self._clock()))

    async def stashed(self, prefix: str) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        for bucket, item, payload in self.db.conn.execute(
            "SELECT bucket, item, payload FROM stash WHERE bucket LIKE ? ESCAPE '\\' ORDER BY at, item",
            (escaped + "%",),
        ):
            out.setdefault(bucket, []).append((item, payload))
        return out

    async def drop_stash(self, bucket: str, items: Sequence[str] | None = None) -> None:
        if items is None:
            self.db.conn.execute("DELETE FROM stash WHERE bucket = ?", (bucket,))
        else:
            with self._tx():
                self.db.conn.executemany("DELETE FROM stash WHERE bucket = ? AND item = ?",
                                         [(bucket, item) for item in items])

    async def drop_stale_stash(self, prefix: str, before: float) -> int:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._tx():
            stale = [r[0] for r in self.db.conn.execute(
                "SELECT bucket FROM stash WHERE bucket LIKE ? ESCAPE '\\' GROUP BY bucket HAVING MAX(at) < ?",
                (escaped, before))]
            self.db.conn.executemany("DELETE FROM stash WHERE bucket = ?", [(b,) for b in stale])
        return len(stale)

    async def list_conversations(self, *, mode: Mode, limit: int = 100) -> list[ConversationSummary]:
        if mode == "human":
            ids = [r[0] for r in self.db.conn.execute(
                "SELECT id FROM conversations WHERE mode = 'human' ORDER BY handoff_at, id LIMIT ?", (limit,))]
        else:
            # the newest activity among the last messages (a bounded scan by primary key, not the whole table)
            ids = [r[0] for r in self.db.conn.execute(
                "SELECT m.conversation_id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
                " WHERE m.id > (SELECT COALESCE(MAX(id), 0) - 5000 FROM messages) AND c.mode = 'bot'"
                " GROUP BY m.conversation_id ORDER BY MAX(m.id) DESC LIMIT ?", (limit,))]
        found = []
        for cid in ids:
            row = self.db.conn.execute(
                "SELECT created_at, text FROM messages WHERE conversation_id = ? AND role = 'user'"
                " ORDER BY id DESC LIMIT 1", (cid,)).fetchone()
            if row is not None:
                conv = self._conversation(ConversationKey.parse(cid))
                found.append(ConversationSummary(conv, row[0], row[1]))
        return found

    # -- feedback -------------------------------------------------------------------------

    async def record_answer(self, message_id: int, meta: AnswerMeta) -> None:
        self.db.conn.execute(
            "INSERT OR REPLACE INTO answer_meta (message_id, persona, model, sources) VALUES (?, ?, ?, ?)",
            (message_id, meta.persona, meta.model, _dump(meta.sources)))

    async def answer_meta(self, message_ids: Sequence[int]) -> dict[int, AnswerMeta]:
        out: dict[int, AnswerMeta] = {}
        ids = list(message_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for mid, persona, model, sources in self.db.conn.execute(
                    "SELECT message_id, persona, model, sources FROM answer_meta WHERE message_id IN"
                    f" ({','.join('?' * len(chunk))})", chunk):
                out[mid] = AnswerMeta(persona, model, _json_list(sources))
        return out

    async def add_feedback(self, feedback: NewFeedback) -> int | None:
        row = self.db.conn.execute("SELECT conversation_id FROM messages WHERE id = ?",
                                   (feedback.message_id,)).fetchone()
        if row is None:
            return None
        key = ConversationKey.parse(row[0])
        cur = self.db.conn.execute(
            "INSERT OR IGNORE INTO feedback (message_id, conversation_id, platform, kind, signal, user, comment, value,"
            " persona, model, event_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (feedback.message_id, row[0], key.platform, feedback.kind, feedback.signal, feedback.user,
             feedback.comment, feedback.value, feedback.persona, feedback.model, feedback.event_id, self._clock()))
        return cur.lastrowid if cur.rowcount == 1 else None

    async def set_feedback_comment(self, feedback_id: int, comment: str) -> None:
        self.db.conn.execute("UPDATE feedback SET comment = ? WHERE id = ?", (comment, feedback_id))

    async def feedback(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                       platform: str | None = None, persona: str | None = None, newest_first: bool = False,
                       limit: int | None = None) -> list[Feedback]:
        where, params = _feedback_where(since, until, kinds, platform, persona)
        rows = self.db.conn.execute(
            "SELECT id, message_id, conversation_id, kind, signal, user, comment, value, persona, model, created_at"
            f" FROM feedback WHERE {where} ORDER BY id {'DESC' if newest_first else ''} LIMIT ?",
            (*params, limit or -1)).fetchall()
        keys: dict[str, ConversationKey] = {}
        return [Feedback(r[0], r[1], keys.get(r[2]) or keys.setdefault(r[2], ConversationKey.parse(r[2])), *r[3:])
                for r in rows]

    async def feedback_per_day(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                               platform: str | None = None, persona: str | None = None,
                               ) -> list[tuple[str, str, int]]:
        where, params = _feedback_where(since, until, kinds, platform, persona)
        # feedback_created narrows the rows to the range; the grouping is over those only
        rows = self.db.conn.execute(
            f"SELECT date(created_at, 'unixepoch') AS day, kind, COUNT(*) FROM feedback WHERE {where}"
            " GROUP BY day, kind ORDER BY day, kind", params).fetchall()
        return [(day, kind, int(n)) for day, kind, n in rows]

    async def messages_by_id(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        ids = sorted(set(message_ids))
        out: list[StoredMessage] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            out.extend(self._rows_to_messages(self.db.conn.execute(
                f"SELECT {_MSG_COLUMNS} FROM messages WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id",
                chunk).fetchall()))
        return out

    async def forgotten(self) -> set[tuple[str, str]]:
        return {(r[0], r[1]) for r in self.db.conn.execute("SELECT platform, user FROM forgotten")}


def _feedback_where(since: float, until: float | None, kinds: Sequence[str], platform: str | None,
                    persona: str | None) -> tuple[str, list[object]]:
    """The WHERE clause (and its parameters) of the feedback filters :meth:`SQLiteStore.feedback` takes."""
    where, params = ["created_at >= ?"], [since]
    if until is not None:
        where.append("created_at < ?")
        params.append(until)
    if kinds:
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        params.extend(kinds)
    for column, value in (("platform", platform), ("persona", persona)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(where), params


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) on an autocommit connection; re-entrant.
    ``committed`` is called after each outermost commit."""

    def __init__(self, conn: sqlite3.Connection, committed: Callable[[], None] | None = None) -> None:
        self.conn = conn
        self.committed = committed
        self.outer = False

    def __enter__(self) -> _Tx:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        if self.committed is not None and not exc_type:
            self.committed()


__all__ = ["MIGRATIONS", "SQLiteStore", "migrate", "migration"]
