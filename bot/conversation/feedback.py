"""Feedback on answers: what adapters record when a user presses 👍/👎 (or a helpdesk reports a rating, or an
agent used a drafted answer), the implicit signals the manager sees itself, and the optional comment a 👎
asks for.

Drafts (agent-assist): when an agent answers the customer after the bot drafted an answer, the newest draft of
the conversation is judged once against what the agent sent (:func:`draft_outcome`): ``sent_as_is``,
``edited`` (the agent's text kept in ``value``: the corrected answer the export uses) or ``discarded`` (the
agent's text kept too; none when the conversation was closed without a reply). The agent's first reply after a
draft decides it; a draft a newer draft replaced before any reply is not judged.

Ratings of a whole conversation (a helpdesk's CSAT survey) go on every answer of the bot in it since the
previous rating of that conversation (:meth:`FeedbackDesk.rate_conversation`).

Every piece is stored with the answer (its conversation, persona and model, see
:class:`~bot.store.base.AnswerMeta`) and counted in ``internvl_bot_feedback_total{kind,platform,persona}``.
A platform's redelivered press carries the same event id: the store keeps it once and it is counted once.

The comment: after a 👎 the adapter asks "what was wrong?" once; the user's next plain text message in that
conversation (within :data:`COMMENT_WINDOW` seconds) is stored as the rating's comment, not answered as a
question. Who is being asked is kept in the store's stash (it survives a restart) and mirrored in memory, so
the intake of every other message costs no database read.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable

from bot.ops.metrics import Metrics
from bot.store import AnswerMeta, FeedbackKind, NewFeedback, Store, StoredMessage
from bot.types import ConversationKey

log = logging.getLogger(__name__)

#: Seconds after a 👎 during which the user's next message is taken as its comment.
COMMENT_WINDOW = 600.0
COMMENT_BUCKET = "feedback:comment:"
#: Longest comment kept (a comment is a sentence or two, not a document).
COMMENT_CHARS = 2000


#: An agent's reply at least this similar to the draft (difflib's ratio of the whitespace-normalised texts)
#: is the draft sent as is (a trailing space, a fixed typo); at least :data:`EDITED_AT`, the draft edited;
#: below, the agent wrote something else.
SENT_AS_IS_AT = 0.98
EDITED_AT = 0.3


def _bucket(key: ConversationKey, user: str) -> str:
    return f"{COMMENT_BUCKET}{key}|{user}"


def draft_outcome(draft: str, sent: str | None) -> FeedbackKind:
    """What the agent did with ``draft``, judged from what they ``sent`` (None: nothing, the conversation
    was closed): ``sent_as_is``, ``edited`` or ``discarded``, by :data:`SENT_AS_IS_AT` / :data:`EDITED_AT`."""
    if not sent or not sent.strip():
        return "discarded"
    ratio = difflib.SequenceMatcher(None, " ".join(draft.split()), " ".join(sent.split()), autojunk=False).ratio()
    return "sent_as_is" if ratio >= SENT_AS_IS_AT else "edited" if ratio >= EDITED_AT else "discarded"


def _is_answer(m: StoredMessage) -> bool:
    return m.role == "assistant" and m.kind == "chat" and m.reply_to is not None and m.state == "answered"


class FeedbackDesk:
    """Records feedback on answers; see the module docstring."""

    def __init__(self, store: Store, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.metrics = metrics
        self._clock = clock
        #: (conversation, user) -> (feedback id, asked at): comments awaited, mirrored from the stash
        self._asking: dict[tuple[ConversationKey, str], tuple[int, float]] = {}

    async def start(self) -> None:
        """Comments a previous run was waiting for (a restart between the 👎 and the comment)."""
        for bucket, items in (await self.store.stashed(COMMENT_BUCKET)).items():
            where, _, user = bucket[len(COMMENT_BUCKET):].rpartition("|")
            for item, payload in items:
                try:
                    self._asking[(ConversationKey.parse(where), user)] = (int(item), float(payload))
                except ValueError:
                    await self.store.drop_stash(bucket)

    async def answer_for(self, key: ConversationKey, platform_id: str) -> StoredMessage | None:
        """The bot's answer the platform knows as ``platform_id`` in ``key``'s chat; None when it is not one (a
        notice, a command's reply) or is gone (forgotten, purged)."""
        found = await self.store.find_by_platform_id(key.platform, key.chat, platform_id)
        if found is None or found.role != "assistant" or found.kind != "chat" or found.reply_to is None:
            return None
        return found

    async def record(self, answer: StoredMessage, kind: FeedbackKind, *, user: str = "", event_id: str | None = None,
                     comment: str = "", value: str = "") -> int | None:
        """Store ``kind`` on ``answer`` with what produced it; its id, or None for a redelivered event."""
        meta = (await self.store.answer_meta([answer.id])).get(answer.id) or AnswerMeta()
        fid = await self.store.add_feedback(NewFeedback(
            answer.id, kind, user=user, comment=comment[:COMMENT_CHARS], value=value, event_id=event_id,
            persona=meta.persona, model=meta.model))
        if fid is not None:
            self.metrics.feedback.labels(kind, answer.key.platform, meta.persona or "-").inc()
            log.info("feedback %s on answer %d of %s", kind, answer.id, answer.key)
        return fid

    async def after_answer(self, msg: StoredMessage, kind: FeedbackKind) -> int | None:
        """An implicit signal: ``msg`` (a request for a person, ``/reset``) came right after an answer of the
        bot — the newest message before it is that answer. Recorded on the answer; None when it was not."""
        earlier = [m for m in await self.store.transcript(msg.key, limit=6) if m.id < msg.id]
        if not earlier:
            return None
        last = earlier[-1]
        if last.role != "assistant" or last.kind != "chat" or last.reply_to is None or last.state != "answered":
            return None
        return await self.record(last, kind, user=msg.sender_id, event_id=f"{kind}:{msg.id}")

    async def draft_used(self, key: ConversationKey, sent: str | None, *, user: str = "",
                         seen: Callable[[StoredMessage], bool] | None = None) -> int | None:
        """An agent answered in ``key`` (``sent``), or closed it without answering (None): the newest draft
        of the bot there is judged (see the module docstring), once — a later reply, a redelivery, finds it
        judged. ``seen``, when given, keeps only the drafts the agent could have seen when they replied (a
        platform that may deliver an old reply again after the bot drafted anew: that reply must find its own
        draft, judged already, not the newer one). Its feedback id; None when there is no draft or it was
        judged before."""
        drafts = [m for m in await self.store.transcript(key, limit=50)
                  if _is_answer(m) and (seen is None or seen(m))]
        if not drafts:
            return None
        draft = drafts[-1]
        kind = draft_outcome(draft.text, sent)
        return await self.record(draft, kind, user=user, event_id=f"draft:{draft.id}",
                                 value=(sent or "").strip() if kind != "sent_as_is" else "")

    async def rate_conversation(self, key: ConversationKey, kind: FeedbackKind, value: str, *, event_id: str,
                                asked_at: float | None = None, user: str = "", comment: str = "") -> list[int]:
        """A rating of the whole conversation (a CSAT survey, ``event_id`` the survey's, posted at
        ``asked_at``): stored on every answer of the bot in ``key`` given before the survey was posted and
        newer than the answers an earlier rating of ``kind`` went on. The ids of the feedback stored; none for
        a redelivered rating (its answers carry it already; the survey's time keeps answers given since out)."""
        earlier = [f.message_id for f in await self.store.feedback(kinds=[kind], platform=key.platform)
                   if f.key == key]
        newest_rated = max(earlier, default=0)
        stored = []
        for answer in await self.store.transcript(key):
            if _is_answer(answer) and answer.id > newest_rated and (asked_at is None or answer.created_at <= asked_at):
                fid = await self.record(answer, kind, user=user, event_id=f"{event_id}:{answer.id}", value=value,
                                        comment=comment)
                if fid is not None:
                    stored.append(fid)
        return stored

    async def ask_comment(self, key: ConversationKey, user: str, feedback_id: int) -> None:
        """Take ``user``'s next message in ``key`` as the comment of ``feedback_id`` (a 👎)."""
        now = self._clock()
        await self.store.drop_stash(_bucket(key, user))
        await self.store.stash(_bucket(key, user), str(feedback_id), repr(now))
        self._asking[(key, user)] = (feedback_id, now)

    def awaits_comment(self, key: ConversationKey, user: str) -> bool:
        asked = self._asking.get((key, user))
        return asked is not None and self._clock() - asked[1] <= COMMENT_WINDOW

    async def take_comment(self, key: ConversationKey, user: str, text: str) -> bool:
        """Store ``text`` as the comment awaited from ``user`` in ``key``; False when none is awaited (or it
        waited too long: then the message is a question again)."""
        asked = self._asking.pop((key, user), None)
        if asked is None:
            return False
        await self.store.drop_stash(_bucket(key, user))
        if self._clock() - asked[1] > COMMENT_WINDOW:
            return False
        await self.store.set_feedback_comment(asked[0], text.strip()[:COMMENT_CHARS])
        return True

    async def forget_comment(self, key: ConversationKey, user: str) -> None:
        """The user went on with something else (a command, a file): no comment is awaited any more."""
        if self._asking.pop((key, user), None) is not None:
            await self.store.drop_stash(_bucket(key, user))


__all__ = ["COMMENT_WINDOW", "EDITED_AT", "SENT_AS_IS_AT", "FeedbackDesk", "draft_outcome"]
