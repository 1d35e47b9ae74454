"""Persistence: the :class:`Store` seam (``base``), an in-memory store (``memory``) and SQLite (``sqlite``).

Every implementation passes the same contract tests (``tests/test_store.py``).
"""

from bot.store.base import (
    IMPLICIT_KINDS,
    PENDING_STATES,
    AnswerMeta,
    Conversation,
    ConversationSummary,
    Feedback,
    FeedbackKind,
    ForgetReport,
    Kind,
    Mode,
    NewFeedback,
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
    "IMPLICIT_KINDS",
    "PENDING_STATES",
    "AnswerMeta",
    "Conversation",
    "ConversationSummary",
    "Feedback",
    "FeedbackKind",
    "ForgetReport",
    "Kind",
    "MemoryStore",
    "Mode",
    "NewFeedback",
    "NewMessage",
    "Role",
    "SQLiteStore",
    "State",
    "Store",
    "StoredAttachment",
    "StoredMessage",
    "checked_sha256",
    "is_store_error",
    "migrate",
    "sha256_of",
]
