"""Persistence: conversations, messages, attachments (stored once by SHA-256) and processed events.

:class:`SQLiteStore` is the real store (sqlite-utils, WAL mode, append-only named migrations);
:class:`MemoryStore` is the in-memory implementation with the same behaviour, used by tests and the
bench. Both pass the same contract tests (``tests/test_store.py``).

Message states: ``received`` (stored, not yet picked up) -> ``answering`` -> ``answered`` |
``failed`` | ``cancelled``. A message is stored before it is processed; messages left in
``received`` or ``answering`` by a crash are returned by :meth:`Store.pending` at start-up.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import sqlite_utils

from bot.types import Attachment, ConversationKey

Role = Literal["user", "assistant"]
Kind = Literal["chat", "command", "notice"]
#: ``held``: received while the conversation waits for a human; a person answers it, not the bot.
State = Literal["received", "answering", "answered", "failed", "cancelled", "held"]
Mode = Literal["bot", "human"]
PENDING_STATES: tuple[str, ...] = ("received", "answering")


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    position: int
    ref: str
    filename: str = ""
    mime: str = ""
    size: int | None = None
    sha256: str | None = None

    def as_attachment(self) -> Attachment:
        return Attachment(self.ref, self.filename, self.mime, self.size, self.sha256)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    key: ConversationKey
    role: Role
    kind: Kind
    text: str
    state: State
    attachments: tuple[StoredAttachment, ...] = ()
    sender_id: str = ""
    sender_name: str = ""
    locale: str | None = None
    platform_message_id: str | None = None
    reply_to: int | None = None
    error: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Conversation:
    key: ConversationKey
    persona: str | None = None
    language: str | None = None  # pinned with /lang
    last_language: str | None = None
    context_start: int = 0  # messages with a smaller id are outside the context (/reset)
    created_at: float = 0.0
    mode: Mode = "bot"  # "human": handed off; the bot keeps the messages but does not answer
    handoff_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: Role
    text: str
    kind: Kind = "chat"
    state: State = "received"
    attachments: Sequence[Attachment] = ()
    sender_id: str = ""
    sender_name: str = ""
    locale: str | None = None
    platform_message_id: str | None = None
    event_id: str | None = None
    reply_to: int | None = None


@dataclass(frozen=True, slots=True)
class ForgetReport:
    conversations: int = 0
    messages: int = 0
    attachment_files: int = 0


_UNSET: object = object()


@runtime_checkable
class Store(Protocol):
    """What the conversation manager needs from persistence."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def remember_event(self, platform: str, event_id: str) -> bool:
        """Record a processed platform event id; False when it was seen before (a retry)."""
        ...
    async def conversation(self, key: ConversationKey) -> Conversation: ...
    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation: ...
    async def add_message(self, key: ConversationKey, message: NewMessage) -> int: ...
    async def message(self, message_id: int) -> StoredMessage: ...
    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None: ...
    async def finish(
        self,
        message_id: int,
        state: State,
        *,
        reply: str | None = None,
        kind: Kind = "chat",
        reply_platform_id: str | None = None,
        error: str | None = None,
    ) -> int | None:
        """Set the final state of a user message and store its reply, atomically."""
        ...
    async def history(self, key: ConversationKey, *, since: int, before: int) -> list[StoredMessage]:
        """Chat turns of the context: answered user messages and their answers, ids in [since, before)."""
        ...
    async def pending(self) -> list[StoredMessage]: ...
    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, every role, kind and state, oldest first."""
        ...
    async def check(self) -> None:
        """Raise when the store cannot be written (readiness probe)."""
        ...
    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str: ...
    async def attachment_data(self, sha256: str) -> bytes: ...
    async def last_message_id(self) -> int: ...
    async def forget(self, key: ConversationKey) -> ForgetReport: ...
    async def purge(self, older_than: float) -> ForgetReport: ...


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# In-memory implementation


class MemoryStore:
    """In-memory :class:`Store`. Same behaviour as :class:`SQLiteStore`, nothing survives the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self.conversations: dict[ConversationKey, Conversation] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.blobs: dict[str, bytes] = {}
        self.events: set[tuple[str, str]] = set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def remember_event(self, platform: str, event_id: str) -> bool:
        if (platform, event_id) in self.events:
            return False
        self.events.add((platform, event_id))
        return True

    async def conversation(self, key: ConversationKey) -> Conversation:
        if key not in self.conversations:
            self.conversations[key] = Conversation(key=key, created_at=self._clock())
        return self.conversations[key]

    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation:
        conv = replace(await self.conversation(key), **fields)  # type: ignore[arg-type]
        self.conversations[key] = conv
        return conv

    async def add_message(self, key: ConversationKey, message: NewMessage) -> int:
        await self.conversation(key)
        mid = next(self._ids)
        self.messages[mid] = StoredMessage(
            id=mid,
            key=key,
            role=message.role,
            kind=message.kind,
            text=message.text,
            state=message.state,
            attachments=tuple(
                StoredAttachment(i, a.ref, a.filename, a.mime, a.size, a.sha256)
                for i, a in enumerate(message.attachments)
            ),
            sender_id=message.sender_id,
            sender_name=message.sender_name,
            locale=message.locale,
            platform_message_id=message.platform_message_id,
            reply_to=message.reply_to,
            created_at=self._clock(),
        )
        return mid

    async def message(self, message_id: int) -> StoredMessage:
        return self.messages[message_id]

    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None:
        self.messages[message_id] = replace(self.messages[message_id], state=state, error=error)

    async def finish(
        self,
        message_id: int,
        state: State,
        *,
        reply: str | None = None,
        kind: Kind = "chat",
        reply_platform_id: str | None = None,
        error: str | None = None,
    ) -> int | None:
        msg = self.messages[message_id]
        self.messages[message_id] = replace(msg, state=state, error=error)
        if reply is None:
            return None
        return await self.add_message(
            msg.key,
            NewMessage(
                role="assistant", text=reply, kind=kind, state="answered",
                platform_message_id=reply_platform_id, reply_to=message_id,
            ),
        )

    async def history(self, key: ConversationKey, *, since: int, before: int) -> list[StoredMessage]:
        out = [
            m for mid, m in sorted(self.messages.items())
            if m.key == key and since <= mid < before and m.kind == "chat"
            and (m.role == "assistant" or m.state == "answered")
        ]
        return out

    async def pending(self) -> list[StoredMessage]:
        return [m for _, m in sorted(self.messages.items()) if m.role == "user" and m.state in PENDING_STATES]

    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        return [m for _, m in sorted(self.messages.items()) if m.key == key][-limit:]

    async def check(self) -> None:
        return None

    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str:
        sha = sha256_of(data)
        self.blobs.setdefault(sha, data)
        msg = self.messages[message_id]
        atts = tuple(
            replace(a, sha256=sha, size=len(data), mime=a.mime or mime) if a.position == position else a
            for a in msg.attachments
        )
        self.messages[message_id] = replace(msg, attachments=atts)
        return sha

    async def attachment_data(self, sha256: str) -> bytes:
        try:
            return self.blobs[sha256]
        except KeyError:
            raise FileNotFoundError(f"attachment {sha256} is not stored") from None

    async def last_message_id(self) -> int:
        return max(self.messages, default=0)

    async def forget(self, key: ConversationKey) -> ForgetReport:
        doomed = [mid for mid, m in self.messages.items() if m.key == key]
        for mid in doomed:
            del self.messages[mid]
        convs = 1 if self.conversations.pop(key, None) else 0
        return ForgetReport(convs, len(doomed), self._drop_orphans())

    async def purge(self, older_than: float) -> ForgetReport:
        doomed = [
            mid for mid, m in self.messages.items() if m.created_at < older_than and m.state not in PENDING_STATES
        ]
        for mid in doomed:
            del self.messages[mid]
        live = {m.key for m in self.messages.values()}
        empty = [k for k, c in self.conversations.items() if k not in live and c.created_at < older_than]
        for k in empty:
            del self.conversations[k]
        return ForgetReport(len(empty), len(doomed), self._drop_orphans())

    def _drop_orphans(self) -> int:
        used = {a.sha256 for m in self.messages.values() for a in m.attachments if a.sha256}
        orphans = [sha for sha in self.blobs if sha not in used]
        for sha in orphans:
            del self.blobs[sha]
        return len(orphans)


# ---------------------------------------------------------------------------------------------
# SQLite implementation

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


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


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the migrations not yet applied, in order; return their names."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    done = {row["name"] for row in db["_migrations"].rows}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
        applied.append(name)
    return applied


_MSG_COLUMNS = (
    "id, conversation_id, role, kind, text, state, sender_id, sender_name, locale, "
    "platform_message_id, reply_to, error, created_at"
)


class SQLiteStore:
    """:class:`Store` on a SQLite file (WAL). Attachment bytes live under ``<files_dir>/ab/cd/<sha256>``.

    Calls are synchronous inside the async methods: each is one short transaction on a local file
    (tens of microseconds in WAL mode), cheaper than a thread hop, and keeps one connection.
    """

    def __init__(self, path: str | os.PathLike[str], files_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.files_dir = Path(files_dir) if files_dir else self.path.parent / "attachments"
        self._clock = clock
        self._db: sqlite_utils.Database | None = None
        self._conv_cache: dict[ConversationKey, Conversation] = {}

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
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None
        self._conv_cache.clear()

    def _tx(self) -> _Tx:
        return _Tx(self.db.conn)

    async def remember_event(self, platform: str, event_id: str) -> bool:
        cur = self.db.conn.execute(
            "INSERT OR IGNORE INTO events (platform, event_id, created_at) VALUES (?, ?, ?)",
            (platform, event_id, self._clock()),
        )
        return cur.rowcount == 1

    async def conversation(self, key: ConversationKey) -> Conversation:
        cached = self._conv_cache.get(key)
        if cached is not None:
            return cached
        row = self.db.conn.execute(
            "SELECT persona, language, last_language, context_start, created_at, mode, handoff_at"
            " FROM conversations WHERE id = ?",
            (str(key),),
        ).fetchone()
        if row is None:
            now = self._clock()
            self.db.conn.execute(
                "INSERT OR IGNORE INTO conversations (id, platform, chat, thread, context_start, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 0, ?, ?)",
                (str(key), key.platform, key.chat, key.thread, now, now),
            )
            conv = Conversation(key=key, created_at=now)
        else:
            conv = Conversation(key, row[0], row[1], row[2], row[3] or 0, row[4], row[5] or "bot", row[6])
        self._conv_cache[key] = conv
        return conv

    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation:
        conv = replace(await self.conversation(key), **fields)  # type: ignore[arg-type]
        self.db.conn.execute(
            "UPDATE conversations SET persona = ?, language = ?, last_language = ?, context_start = ?,"
            " mode = ?, handoff_at = ?, updated_at = ? WHERE id = ?",
            (conv.persona, conv.language, conv.last_language, conv.context_start, conv.mode, conv.handoff_at,
             self._clock(), str(key)),
        )
        self._conv_cache[key] = conv
        return conv

    def _insert_message(self, key: ConversationKey, m: NewMessage) -> int:
        now = self._clock()
        cur = self.db.conn.execute(
            "INSERT INTO messages (conversation_id, role, kind, text, state, sender_id, sender_name, locale,"
            " platform_message_id, event_id, reply_to, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (str(key), m.role, m.kind, m.text, m.state, m.sender_id, m.sender_name, m.locale,
             m.platform_message_id, m.event_id, m.reply_to, now, now),
        )
        mid = int(cur.lastrowid or 0)
        if m.attachments:
            self.db.conn.executemany(
                "INSERT INTO message_attachments (message_id, position, ref, filename, mime, size, sha256)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(mid, i, a.ref, a.filename, a.mime, a.size, a.sha256) for i, a in enumerate(m.attachments)],
            )
        return mid

    async def add_message(self, key: ConversationKey, message: NewMessage) -> int:
        await self.conversation(key)
        with self._tx():
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

    async def finish(
        self,
        message_id: int,
        state: State,
        *,
        reply: str | None = None,
        kind: Kind = "chat",
        reply_platform_id: str | None = None,
        error: str | None = None,
    ) -> int | None:
        with self._tx():
            self.db.conn.execute(
                "UPDATE messages SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                (state, error, self._clock(), message_id),
            )
            if reply is None:
                return None
            row = self.db.conn.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            return self._insert_message(
                ConversationKey.parse(row[0]),
                NewMessage(role="assistant", text=reply, kind=kind, state="answered",
                           platform_message_id=reply_platform_id, reply_to=message_id),
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
        return [
            StoredMessage(
                id=r[0], key=ConversationKey.parse(r[1]), role=r[2], kind=r[3], text=r[4], state=r[5],
                attachments=tuple(atts.get(r[0], ())), sender_id=r[6] or "", sender_name=r[7] or "",
                locale=r[8], platform_message_id=r[9], reply_to=r[10], error=r[11], created_at=r[12],
            )
            for r in rows
        ]

    async def history(self, key: ConversationKey, *, since: int, before: int) -> list[StoredMessage]:
        rows = self.db.conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE conversation_id = ? AND id >= ? AND id < ?"
            " AND kind = 'chat' AND (role = 'assistant' OR state = 'answered') ORDER BY id",
            (str(key), since, before),
        ).fetchall()
        return self._rows_to_messages(rows)

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

    async def check(self) -> None:
        # BEGIN IMMEDIATE takes the write lock: fails when the file is read-only, the disk is gone
        # or another writer holds it past busy_timeout.
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")

    def _blob_path(self, sha: str) -> Path:
        return self.files_dir / sha[:2] / sha[2:4] / sha

    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str:
        sha = sha256_of(data)
        path = self._blob_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        with self._tx():
            self.db.conn.execute(
                "INSERT OR IGNORE INTO attachments (sha256, mime, size, path, created_at) VALUES (?, ?, ?, ?, ?)",
                (sha, mime, len(data), str(path.relative_to(self.files_dir)), self._clock()),
            )
            self.db.conn.execute(
                "UPDATE message_attachments SET sha256 = ?, size = ?, mime = COALESCE(NULLIF(mime, ''), ?)"
                " WHERE message_id = ? AND position = ?",
                (sha, len(data), mime, message_id, position),
            )
        return sha

    async def attachment_data(self, sha256: str) -> bytes:
        try:
            return self._blob_path(sha256).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"attachment {sha256} is not stored") from None

    async def last_message_id(self) -> int:
        row = self.db.conn.execute("SELECT MAX(id) FROM messages").fetchone()
        return int(row[0] or 0)

    def _delete_messages(self, where: str, params: Sequence[object]) -> int:
        ids = [r[0] for r in self.db.conn.execute(f"SELECT id FROM messages WHERE {where}", params)]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            self.db.conn.execute(f"DELETE FROM message_attachments WHERE message_id IN ({marks})", chunk)
            self.db.conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
        return len(ids)

    def _take_orphans(self) -> list[str]:
        """Delete the attachment rows no message refers to any more; return their SHA-256s."""
        orphans = [
            r[0] for r in self.db.conn.execute(
                "SELECT sha256 FROM attachments WHERE sha256 NOT IN"
                " (SELECT sha256 FROM message_attachments WHERE sha256 IS NOT NULL)"
            )
        ]
        self.db.conn.executemany("DELETE FROM attachments WHERE sha256 = ?", [(sha,) for sha in orphans])
        return orphans

    def _unlink(self, shas: Sequence[str]) -> int:
        removed = 0
        for sha in shas:
            try:
                self._blob_path(sha).unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def forget(self, key: ConversationKey) -> ForgetReport:
        with self._tx():
            n = self._delete_messages("conversation_id = ?", (str(key),))
            convs = self.db.conn.execute("DELETE FROM conversations WHERE id = ?", (str(key),)).rowcount
            orphans = self._take_orphans()
        self._conv_cache.pop(key, None)
        return ForgetReport(convs, n, self._unlink(orphans))

    async def purge(self, older_than: float) -> ForgetReport:
        with self._tx():
            n = self._delete_messages("created_at < ? AND state NOT IN ('received', 'answering')", (older_than,))
            gone = [
                r[0] for r in self.db.conn.execute(
                    "SELECT id FROM conversations WHERE created_at < ? AND id NOT IN"
                    " (SELECT DISTINCT conversation_id FROM messages)", (older_than,)
                )
            ]
            for cid in gone:
                self.db.conn.execute("DELETE FROM conversations WHERE id = ?", (cid,))
            self.db.conn.execute("DELETE FROM events WHERE created_at < ?", (older_than,))
            orphans = self._take_orphans()
        self._conv_cache.clear()
        return ForgetReport(len(gone), n, self._unlink(orphans))


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``) on an autocommit connection; re-entrant."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
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


__all__ = [
    "PENDING_STATES", "Conversation", "ForgetReport", "MemoryStore", "NewMessage", "SQLiteStore", "Store",
    "StoredAttachment", "StoredMessage", "migrate", "sha256_of",
]
