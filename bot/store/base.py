"""The store seam: conversations, messages, attachments (stored once by SHA-256), processed platform
events, platform message ids and usage counters.

Message states: ``received`` (stored, not yet picked up) -> ``answering`` -> ``answered`` | ``failed`` |
``cancelled``; ``held`` for messages a person answers (the conversation was handed off). A message is
stored before it is processed, in the same transaction that remembers its platform event id, so a
platform's retry is a duplicate only once the message is safely stored; messages left ``received`` or
``answering`` by a crash are returned by :meth:`Store.pending` at start-up, with the platform messages
the dead process had already created for their answers (``drafts``).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from bot.types import NO_ROUTE, Attachment, ConversationKey

Role = Literal["user", "assistant"]
Kind = Literal["chat", "command", "notice"]
#: ``held``: received while the conversation waits for a human; a person answers it, not the bot.
#: ``superseded``: answered, then asked again ("regenerate"): it and its answer leave the context.
#: ``comment``: the user's words about an answer they rated down (asked for once), kept as the rating's comment,
#: not a question.
State = Literal["received", "answering", "answered", "failed", "cancelled", "held", "superseded", "comment"]
Mode = Literal["bot", "human"]
PENDING_STATES: tuple[str, ...] = ("received", "answering")

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_sha256(value: str) -> str:
    """``value`` when it is a SHA-256 as the store writes it (64 lowercase hex digits); ValueError otherwise.

    Attachment ids end up in file paths and URLs: nothing else may pass.
    """
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"not a SHA-256 hex digest: {value!r:.80}")
    return value


#: Seconds an unused attachment is kept: an upload is stored a moment before the message that refers to it.
ORPHAN_GRACE = 3600.0



# The errors a store raises when its database is unavailable for a moment (locked, restarting, unreachable):
# an adapter retries what it was storing rather than confirming it. A store module adds its driver's errors.
STORE_ERRORS: list[type[BaseException]] = [sqlite3.Error, OSError]


def is_store_error(exc: BaseException) -> bool:
    """Did ``exc`` come from the database being unavailable (worth retrying), rather than from a bug?"""
    return isinstance(exc, tuple(STORE_ERRORS))


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    position: int
    ref: str
    filename: str = ""
    mime: str = ""
    size: int | None = None
    sha256: str | None = None  # set by the store once the bytes are saved

    def as_attachment(self) -> Attachment:
        return Attachment(self.ref, self.filename, self.mime, self.size)


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
    #: user messages: the platform's id of the message; assistant messages: the first of ``platform_ids``.
    platform_message_id: str | None = None
    #: assistant messages: every platform message the reply spans.
    platform_ids: tuple[str, ...] = ()
    #: user messages being answered: the platform messages created so far for the answer.
    drafts: tuple[str, ...] = ()
    route: Mapping[str, str] = field(default_factory=lambda: NO_ROUTE)
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
    #: how the platform names the user (their newest message's sender name): people are named in the inbox
    name: str = ""
    #: a small number per platform, given by the store when the conversation is created and never reused
    #: (the inbox calls a web visitor, who has no name, "Visitor 3")
    number: int = 0
    #: the person (an operator) who answered or took the conversation last, and when; it counts only while
    #: newer than ``handoff_at`` (a new handoff waits for a person again)
    operator: str = ""
    operator_at: float | None = None

    @property
    def operator_has_it(self) -> bool:
        """Handed off, and a person has answered (or taken it) since."""
        return (self.mode == "human" and bool(self.operator) and self.operator_at is not None
                and self.operator_at >= (self.handoff_at or 0.0))


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
    platform_ids: Sequence[str] = ()
    event_id: str | None = None
    route: Mapping[str, str] = field(default_factory=lambda: NO_ROUTE)
    reply_to: int | None = None

    @property
    def all_platform_ids(self) -> tuple[str, ...]:
        ids = tuple(self.platform_ids)
        if self.platform_message_id and self.platform_message_id not in ids:
            ids = (self.platform_message_id, *ids)
        return ids


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation as a list of conversations shows it: the user's newest message and when it came."""

    conversation: Conversation
    last_at: float
    last_text: str


#: Feedback on an answer. Explicit: ``up``/``down`` (a thumb), ``csat`` (a helpdesk's satisfaction rating,
#: ``value`` 1-5), ``sent_as_is``/``edited``/``discarded`` (an agent and a drafted answer; ``value``: what the
#: agent sent). Implicit (what users did, kept apart): ``regenerated`` (the answer lost; ``value``: the id of the
#: question asked anew), ``handoff_after_answer`` and ``reset_after_answer``.
FeedbackKind = Literal["up", "down", "csat", "sent_as_is", "edited", "discarded", "regenerated",
                       "handoff_after_answer", "reset_after_answer"]
IMPLICIT_KINDS: frozenset[str] = frozenset({"regenerated", "handoff_after_answer", "reset_after_answer"})


@dataclass(frozen=True, slots=True)
class AnswerMeta:
    """What produced an answer, stored with it: the persona, the model, and the knowledge passages it cited
    (``base/document#page`` labels)."""

    persona: str = ""
    model: str = ""
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewFeedback:
    """Feedback to store on the answer ``message_id``. ``event_id``: the platform's id of the press (a
    callback query, a webhook delivery): stored once per platform, a redelivery is not a second press."""

    message_id: int
    kind: FeedbackKind
    user: str = ""
    comment: str = ""
    value: str = ""
    event_id: str | None = None
    persona: str = ""
    model: str = ""

    @property
    def signal(self) -> str:
        return "implicit" if self.kind in IMPLICIT_KINDS else "explicit"


@dataclass(frozen=True, slots=True)
class Feedback:
    """Stored feedback, with the answer's conversation and what produced the answer."""

    id: int
    message_id: int
    key: ConversationKey
    kind: FeedbackKind
    signal: str
    user: str = ""
    comment: str = ""
    value: str = ""
    persona: str = ""
    model: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ForgetReport:
    conversations: int = 0
    messages: int = 0
    attachment_files: int = 0


@runtime_checkable
class Store(Protocol):
    """What the conversation manager needs from persistence. ``tests/test_store.py`` holds the contract."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def conversation(self, key: ConversationKey) -> Conversation: ...
    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation: ...
    async def add_message(self, key: ConversationKey, message: NewMessage) -> int: ...
    async def add_incoming(self, key: ConversationKey, message: NewMessage) -> int | None:
        """Store a user's message and remember its platform event id (``message.event_id``, per platform) in
        one transaction. None when the event was stored before (a platform's retry or redelivery)."""
        ...
    async def message(self, message_id: int) -> StoredMessage: ...
    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None: ...
    async def start_answering(self, message_id: int, key: ConversationKey, **fields: object) -> Conversation:
        """A turn begins: ``message_id`` becomes ``answering`` and the conversation ``key`` takes ``fields`` (as
        :meth:`update_conversation`; none: unchanged), in one transaction. Returns the conversation."""
        ...
    async def set_platform_ids(self, message_id: int, ids: Sequence[str]) -> None:
        """The platform messages a stored reply became, once it was delivered (a delivery the outbox retried)."""
        ...
    async def set_drafts(self, message_id: int, ids: Sequence[str]) -> None:
        """Record the platform messages created so far for the answer to ``message_id``."""
        ...
    async def finish(
        self,
        message_id: int,
        state: State,
        *,
        reply: str | None = None,
        kind: Kind = "chat",
        reply_platform_ids: Sequence[str] = (),
        error: str | None = None,
    ) -> int | None:
        """Set the final state of a user message and store its reply, atomically."""
        ...
    async def history(self, key: ConversationKey, *, since: int, before: int, limit: int | None = None,
                      upto: int | None = None) -> list[StoredMessage]:
        """Chat turns of the context, oldest first: answered user messages with ids in [since, before) and
        their answers (an answer can be newer than ``before``: a question asked while the previous one was
        being answered still sees that answer). With ``limit``, only the newest ``limit`` rows; with
        ``upto``, only rows older than that id (to read further back, a page at a time)."""
        ...
    async def pending(self) -> list[StoredMessage]: ...
    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        """The newest ``limit`` messages of a conversation, every role, kind and state, oldest first."""
        ...
    async def find_by_platform_id(self, platform: str, chat: str, platform_id: str) -> StoredMessage | None:
        """The stored message (a user's, or a reply spanning it) the platform knows as ``platform_id``."""
        ...
    async def check(self) -> None:
        """Raise when the store cannot be written (readiness probe)."""
        ...
    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str: ...
    async def save_blob(self, data: bytes, mime: str = "") -> str:
        """Keep bytes by SHA-256 before any message refers to them (an upload that any replica must be able to
        read once the message is stored); returns the SHA-256."""
        ...
    async def attachment_data(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``; FileNotFoundError when absent, ValueError for a malformed id."""
        ...
    async def last_message_id(self) -> int: ...
    async def forget(self, key: ConversationKey) -> ForgetReport: ...
    async def purge(self, older_than: float) -> ForgetReport: ...
    async def record_usage(self, user: str, kind: str, amount: float, at: float) -> None:
        """Count ``amount`` of ``kind`` (messages, images, video seconds) for ``user`` at time ``at``."""
        ...
    async def usage(self, user: str, kind: str, since: float) -> tuple[float, float | None]:
        """Total of ``kind`` for ``user`` since ``since``, and the time of the oldest record counted."""
        ...
    async def stash(self, bucket: str, item: str, payload: str) -> None:
        """Keep one piece of a message that arrives in pieces (a Telegram album's photos), durably, until the
        adapter has them all; storing the same item again is a no-op (a redelivered update)."""
        ...
    async def stashed(self, prefix: str) -> dict[str, list[tuple[str, str]]]:
        """Every bucket whose name starts with ``prefix``: its items and payloads, in the order stored."""
        ...
    async def drop_stash(self, bucket: str, items: Sequence[str] | None = None) -> None:
        """Drop ``items`` of ``bucket`` (the pieces the caller read and handled), or the whole bucket: a
        piece stashed after the caller read the bucket stays."""
        ...
    async def drop_stale_stash(self, prefix: str, before: float) -> int:
        """Drop the buckets whose name starts with ``prefix`` and whose newest piece was stashed before
        ``before`` (pieces nobody came back for); how many."""
        ...
    async def list_conversations(self, *, mode: Mode, limit: int = 100) -> list[ConversationSummary]:
        """Conversations in ``mode``: ``human`` ones oldest handoff first (who has waited longest), ``bot``
        ones with the newest activity first (only among recent messages)."""
        ...
    async def record_answer(self, message_id: int, meta: AnswerMeta) -> None:
        """Keep what produced the answer ``message_id`` (its persona, model and cited passages)."""
        ...
    async def answer_meta(self, message_ids: Sequence[int]) -> dict[int, AnswerMeta]:
        """What produced each of these answers (those recorded)."""
        ...
    async def add_feedback(self, feedback: NewFeedback) -> int | None:
        """Store feedback on an answer; None when its ``event_id`` was stored before on this platform (a
        redelivered press) or the answer is gone."""
        ...
    async def set_feedback_comment(self, feedback_id: int, comment: str) -> None: ...
    async def feedback(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                       platform: str | None = None, persona: str | None = None, newest_first: bool = False,
                       limit: int | None = None) -> list[Feedback]:
        """Stored feedback created in [since, until), of ``kinds`` (none: all), oldest first unless
        ``newest_first``."""
        ...
    async def feedback_per_day(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                               platform: str | None = None, persona: str | None = None,
                               ) -> list[tuple[str, str, int]]:
        """How much feedback of each kind was created in [since, until) on each UTC day, counted by the
        database (a month of feedback is not read row by row): ``(YYYY-MM-DD, kind, count)`` by day, then
        kind; days and kinds without feedback are absent. Filters as :meth:`feedback`."""
        ...
    async def messages_by_id(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        """The stored messages of ``message_ids`` that exist, oldest first (read in batches)."""
        ...
    async def forgotten(self) -> set[tuple[str, str]]:
        """``(platform, user id)`` of every user whose conversation was forgotten: they never leave in a training
        export, whatever they wrote since."""
        ...


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
    "Mode",
    "NewFeedback",
    "NewMessage",
    "Role",
    "State",
    "Store",
    "StoredAttachment",
    "StoredMessage",
    "checked_sha256",
    "sha256_of",
]
