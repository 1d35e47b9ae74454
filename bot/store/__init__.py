"""Persistence: the :class:`Store` seam (``base``), an in-memory store (``memory``) and SQLite (``sqlite``).

Every implementation passes the same contract tests (``tests/test_store.py``).
"""

from bot.store.base import (
    PENDING_STATES,
    Conversation,
    ConversationSummary,
    ForgetReport,
    Kind,
    Mode,
    NewMessage,
    Role,
    State,
    Store,
    StoredAttachment,
    StoredMessage,
    checked_sha256,
    is_store_error,
    sha256_of,
)
from bot.store.memory import MemoryStore
from bot.store.sqlite import SQLiteStore, migrate

__all__ = [
    "PENDING_STATES", "Conversation", "ConversationSummary", "ForgetReport", "Kind", "MemoryStore", "Mode", "NewMessage", "Role",
    "SQLiteStore", "State", "Store", "StoredAttachment", "StoredMessage", "checked_sha256", "is_store_error", "migrate", "sha256_of",
]
