"""In-memory :class:`~bot.store.base.Store`: the same behaviour as SQLite, nothing survives the process."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.store.base import (
    ORPHAN_GRACE,
    PENDING_STATES,
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
from bot.types import ConversationKey

if TYPE_CHECKING:
    from bot.knowledge.memory import MemoryKnowledge


class MemoryStore:
    """In-memory store for tests, the bench and scripts. Passes the same contract tests as the others."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self.conversations: dict[ConversationKey, Conversation] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_at: dict[str, float] = {}
        self.events: set[tuple[str, str]] = set()
        self.refs: dict[tuple[str, str, str], int] = {}
        self.usage_rows: list[tuple[str, str, float, float]] = []
        self.stashes: dict[str, dict[str, str]] = {}
        self.stash_at: dict[str, float] = {}  # bucket -> when its newest piece came
        self.counters: dict[str, int] = {}  # platform -> the last conversation number given
        self.answers: dict[int, AnswerMeta] = {}
        self.feedback_rows: dict[int, Feedback] = {}
        self.feedback_events: set[tuple[str, str]] = set()
        self.forgotten_users: set[tuple[str, str]] = set()
        self._feedback_ids = itertools.count(1)
        # the knowledge bases kept beside this store (bot.knowledge.open_index), whose originals stay stored
        self.knowledge: MemoryKnowledge | None = None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def conversation(self, key: ConversationKey) -> Conversation:
        if key not in self.conversations:
            number = self.counters[key.platform] = self.counters.get(key.platform, 0) + 1
            self.conversations[key] = Conversation(key=key, created_at=self._clock(), number=number)
        return self.conversations[key]

    async def update_conversation(self, key: ConversationKey, **fields: object) -> Conversation:
        fields.pop("number", None)  # the store gives numbers, as the databases do
        conv = replace(await self.conversation(key), **fields)  # type: ignore[arg-type]
        self.conversations[key] = conv
        return conv

    async def add_message(self, key: ConversationKey, message: NewMessage) -> int:
        await self.conversation(key)
        mid = next(self._ids)
        ids = message.all_platform_ids
        self.messages[mid] = StoredMessage(
            id=mid, key=key, role=message.role, kind=message.kind, text=message.text, state=message.state,
            attachments=tuple(StoredAttachment(i, a.ref, a.filename, a.mime, a.size)
                              for i, a in enumerate(message.attachments)),
            sender_id=message.sender_id, sender_name=message.sender_name, locale=message.locale,
            platform_message_id=ids[0] if ids else None, platform_ids=ids if message.role == "assistant" else (),
            route=message.route, reply_to=message.reply_to, created_at=self._clock(),
        )
        for pid in ids:
            self.refs[(key.platform, key.chat, pid)] = mid
        return mid

    async def add_incoming(self, key: ConversationKey, message: NewMessage) -> int | None:
        if message.event_id:
            event = (key.platform, message.event_id)
            if event in self.events:
                return None
            self.events.add(event)
        return await self.add_message(key, message)

    async def message(self, message_id: int) -> StoredMessage:
        return self.messages[message_id]

    async def set_state(self, message_id: int, state: State, *, error: str | None = None) -> None:
        self.messages[message_id] = replace(self.messages[message_id], state=state, error=error)

    async def start_answering(self, message_id: int, key: ConversationKey, **fields: object) -> Conversation:
        conv = await self.update_conversation(key, **fields) if fields else await self.conversation(key)
        await self.set_state(message_id, "answering")
        return conv

    async def set_platform_ids(self, message_id: int, ids: Sequence[str]) -> None:
        msg = self.messages.get(message_id)
        if msg is None or not ids:
            return
        self.messages[message_id] = replace(msg, platform_message_id=ids[0], platform_ids=tuple(ids))
        for pid in ids:
            self.refs[(msg.key.platform, msg.key.chat, pid)] = message_id

    async def set_drafts(self, message_id: int, ids: Sequence[str]) -> None:
        self.messages[message_id] = replace(self.messages[message_id], drafts=tuple(ids))

    async def finish(self, message_id: int, state: State, *, reply: str | None = None, kind: Kind = "chat",
                     reply_platform_ids: Sequence[str] = (), error: str | None = None) -> int | None:
        msg = self.messages[message_id]
        self.messages[message_id] = replace(msg, state=state, error=error, drafts=())
        if reply is None:
            return None
        return await self.add_message(msg.key, NewMessage(
            role="assistant", text=reply, kind=kind, state="answered", platform_ids=tuple(reply_platform_ids),
            reply_to=message_id))

    async def history(self, key: ConversationKey, *, since: int, before: int, limit: int | None = None,
                      upto: int | None = None) -> list[StoredMessage]:
        out = [
            m for mid, m in sorted(self.messages.items())
            if m.key == key and since <= mid and (upto is None or mid < upto) and m.kind == "chat"
            and ((m.role == "user" and m.state == "answered" and mid < before)
                 or (m.role == "assistant" and m.reply_to is not None and m.reply_to < before))
        ]
        return out[-limit:] if limit else out

    async def pending(self) -> list[StoredMessage]:
        return [m for _, m in sorted(self.messages.items()) if m.role == "user" and m.state in PENDING_STATES]

    async def transcript(self, key: ConversationKey, *, limit: int = 200) -> list[StoredMessage]:
        return [m for _, m in sorted(self.messages.items()) if m.key == key][-limit:]

    async def find_by_platform_id(self, platform: str, chat: str, platform_id: str) -> StoredMessage | None:
        mid = self.refs.get((platform, chat, platform_id))
        return self.messages.get(mid) if mid is not None else None

    async def check(self) -> None:
        return None

    async def save_attachment(self, message_id: int, position: int, data: bytes, mime: str = "") -> str:
        sha = sha256_of(data)
        self.blobs.setdefault(sha, data)
        self.blob_at.setdefault(sha, self._clock())
        msg = self.messages[message_id]
        atts = tuple(
            replace(a, sha256=sha, size=len(data), mime=a.mime or mime) if a.position == position else a
            for a in msg.attachments
        )
        self.messages[message_id] = replace(msg, attachments=atts)
        return sha

    async def save_blob(self, data: bytes, mime: str = "") -> str:
        sha = sha256_of(data)
        self.blobs.setdefault(sha, data)
        self.blob_at.setdefault(sha, self._clock())
        return sha

    async def attachment_data(self, sha256: str) -> bytes:
        try:
            return self.blobs[checked_sha256(sha256)]
        except KeyError:
            raise FileNotFoundError(f"attachment {sha256} is not stored") from None

    async def last_message_id(self) -> int:
        return max(self.messages, default=0)

    async def forget(self, key: ConversationKey) -> ForgetReport:
        doomed = [mid for mid, m in self.messages.items() if m.key == key]
        used = self._used(doomed)
        self.forgotten_users.update((key.platform, self.messages[mid].sender_id) for mid in doomed
                                    if self.messages[mid].role == "user" and self.messages[mid].sender_id)
        for mid in doomed:
            del self.messages[mid]
        self._drop_refs(set(doomed))
        convs = 1 if self.conversations.pop(key, None) else 0
        return ForgetReport(convs, len(doomed), self._drop_orphans(used))

    async def purge(self, older_than: float) -> ForgetReport:
        doomed = [
            mid for mid, m in self.messages.items() if m.created_at < older_than and m.state not in PENDING_STATES
        ]
        used = self._used(doomed)
        for mid in doomed:
            del self.messages[mid]
        self._drop_refs(set(doomed))
        live = {m.key for m in self.messages.values()}
        empty = [k for k, c in self.conversations.items() if k not in live and c.created_at < older_than]
        for k in empty:
            del self.conversations[k]
        self.usage_rows = [row for row in self.usage_rows if row[3] >= older_than]
        return ForgetReport(len(empty), len(doomed), self._drop_orphans(used))

    def _drop_refs(self, ids: set[int]) -> None:
        for ref in [ref for ref, mid in self.refs.items() if mid in ids]:
            del self.refs[ref]
        for mid in ids:
            self.answers.pop(mid, None)
        for fid in [fid for fid, f in self.feedback_rows.items() if f.message_id in ids]:
            del self.feedback_rows[fid]

    def _used(self, ids: Sequence[int]) -> set[str]:
        """The blobs messages use: stored for them, or ``blob:<sha256>`` refs not read yet."""
        return {x for mid in ids for a in self.messages[mid].attachments
                for x in (a.sha256, a.ref[5:] if a.ref.startswith("blob:") else None) if x}

    def _drop_orphans(self, candidates: set[str]) -> int:
        """Blobs no message uses: those the deleted messages used, and any older than ``ORPHAN_GRACE``."""
        used = self._used(list(self.messages))
        if self.knowledge is not None:
            used |= self.knowledge.blobs()
        cutoff = self._clock() - ORPHAN_GRACE
        orphans = [sha for sha in self.blobs if sha not in used and (sha in candidates or self.blob_at[sha] < cutoff)]
        for sha in orphans:
            del self.blobs[sha]
            del self.blob_at[sha]
        return len(orphans)

    async def record_usage(self, user: str, kind: str, amount: float, at: float) -> None:
        horizon = at - 2 * 86400
        self.usage_rows = [row for row in self.usage_rows if row[3] >= horizon]
        self.usage_rows.append((user, kind, amount, at))

    async def usage(self, user: str, kind: str, since: float) -> tuple[float, float | None]:
        rows = [row for row in self.usage_rows if row[0] == user and row[1] == kind and row[3] >= since]
        return sum(row[2] for row in rows), min((row[3] for row in rows), default=None)

    async def stash(self, bucket: str, item: str, payload: str) -> None:
        if item not in self.stashes.setdefault(bucket, {}):
            self.stashes[bucket][item] = payload
            self.stash_at[bucket] = self._clock()

    async def stashed(self, prefix: str) -> dict[str, list[tuple[str, str]]]:
        return {bucket: list(items.items()) for bucket, items in self.stashes.items() if bucket.startswith(prefix)}

    async def drop_stash(self, bucket: str, items: Sequence[str] | None = None) -> None:
        if items is not None:
            kept = self.stashes.get(bucket, {})
            for item in items:
                kept.pop(item, None)
            if kept:
                return
        self.stashes.pop(bucket, None)
        self.stash_at.pop(bucket, None)

    async def drop_stale_stash(self, prefix: str, before: float) -> int:
        stale = [b for b in self.stashes if b.startswith(prefix) and self.stash_at.get(b, 0.0) < before]
        for bucket in stale:
            await self.drop_stash(bucket)
        return len(stale)

    async def list_conversations(self, *, mode: Mode, limit: int = 100) -> list[ConversationSummary]:
        last: dict[ConversationKey, StoredMessage] = {}
        newest: dict[ConversationKey, int] = {}
        for message in self.messages.values():  # ids ascend: the newest wins
            newest[message.key] = message.id
            if message.role == "user":
                last[message.key] = message
        found = [ConversationSummary(conv, last[key].created_at, last[key].text)
                 for key, conv in self.conversations.items() if conv.mode == mode and key in last]
        if mode == "human":
            found.sort(key=lambda s: (s.conversation.handoff_at or 0.0, str(s.conversation.key)))
        else:
            found.sort(key=lambda s: -newest[s.conversation.key])
        return found[:limit]

    # -- feedback -------------------------------------------------------------------------

    async def record_answer(self, message_id: int, meta: AnswerMeta) -> None:
        if message_id in self.messages:
            self.answers[message_id] = meta

    async def answer_meta(self, message_ids: Sequence[int]) -> dict[int, AnswerMeta]:
        return {mid: self.answers[mid] for mid in message_ids if mid in self.answers}

    async def add_feedback(self, feedback: NewFeedback) -> int | None:
        answer = self.messages.get(feedback.message_id)
        if answer is None:
            return None
        if feedback.event_id:
            event = (answer.key.platform, feedback.event_id)
            if event in self.feedback_events:
                return None
            self.feedback_events.add(event)
        fid = next(self._feedback_ids)
        self.feedback_rows[fid] = Feedback(
            fid, feedback.message_id, answer.key, feedback.kind, feedback.signal, feedback.user, feedback.comment,
            feedback.value, feedback.persona, feedback.model, self._clock())
        return fid

    async def set_feedback_comment(self, feedback_id: int, comment: str) -> None:
        if feedback_id in self.feedback_rows:
            self.feedback_rows[feedback_id] = replace(self.feedback_rows[feedback_id], comment=comment)

    async def feedback(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                       platform: str | None = None, persona: str | None = None, newest_first: bool = False,
                       limit: int | None = None) -> list[Feedback]:
        found = [f for _, f in sorted(self.feedback_rows.items(), reverse=newest_first)
                 if f.created_at >= since and (until is None or f.created_at < until)
                 and (not kinds or f.kind in kinds) and (platform is None or f.key.platform == platform)
                 and (persona is None or f.persona == persona)]
        return found[:limit] if limit else found

    async def feedback_per_day(self, *, since: float = 0.0, until: float | None = None, kinds: Sequence[str] = (),
                               platform: str | None = None, persona: str | None = None,
                               ) -> list[tuple[str, str, int]]:
        counts = Counter(
            (datetime.fromtimestamp(f.created_at, UTC).date().isoformat(), f.kind)
            for f in await self.feedback(since=since, until=until, kinds=kinds, platform=platform, persona=persona))
        return [(day, kind, n) for (day, kind), n in sorted(counts.items())]

    async def messages_by_id(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        return [self.messages[mid] for mid in sorted(set(message_ids)) if mid in self.messages]

    async def forgotten(self) -> set[tuple[str, str]]:
        return set(self.forgotten_users)
