"""The operator inbox's quality view: answers rated 👎 and drafts an agent corrected, with what was asked, and
how much feedback came in per day (the API the page's Quality tab reads; same bearer token as the inbox).

- ``GET /api/operator/quality/items?persona=&platform=&since=&until=&limit=``: 👎 answers and ``edited`` /
  ``discarded`` drafts, newest first, each with the question (and its images), the answer, the comment, what the
  agent sent instead (``value``) and the earlier turns (``earlier``, oldest first, for the page to fold away);
- ``GET /api/operator/quality/daily?days=30&persona=&platform=``: per UTC day of the last ``days`` (every day,
  days without feedback at zero): 👍 ``up``, 👎 ``down``, ``corrected`` (edited + discarded) and
  ``handoff_after_answer``.

``since`` and ``until`` are UTC dates (``YYYY-MM-DD``), ``until`` included. Anything malformed is a 400.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from adapters.common.http import BadRequest
from adapters.common.transcript import message_json

if TYPE_CHECKING:
    from bot.store import Feedback, Store, StoredMessage

#: What needs a look: an answer a user rated down, a draft an agent rewrote or threw away.
ITEM_KINDS = ("down", "edited", "discarded")
#: The chart's series and the feedback kinds each one counts.
SERIES: dict[str, tuple[str, ...]] = {"up": ("up",), "down": ("down",), "corrected": ("edited", "discarded"),
                                      "handoff_after_answer": ("handoff_after_answer",)}
#: Earlier turns sent with each item (the page shows them folded).
EARLIER_TURNS = 6
MAX_LIMIT = 200
MAX_DAYS = 366
_NAME = re.compile(r"[\w.:@-]{1,100}\Z")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _name(request: Request, param: str) -> str | None:
    """A persona or platform filter: absent or empty is no filter; anything but a plain name is a 400."""
    value = request.query_params.get(param, "")
    if not value:
        return None
    if not _NAME.match(value):
        raise BadRequest(f"{param}: expected a name (letters, digits, . : @ _ -), at most 100 characters")
    return value


def _day(request: Request, param: str) -> date | None:
    value = request.query_params.get(param, "")
    if not value:
        return None
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{param}: expected a date as YYYY-MM-DD") from None


def _int(request: Request, param: str, default: int, high: int) -> int:
    value = request.query_params.get(param, "")
    if not value:
        return default
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= high:
        raise BadRequest(f"{param}: expected a whole number from 1 to {high}")
    return int(value)


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _files(message: dict[str, Any]) -> dict[str, Any]:
    # only stored files have a SHA-256 the operator file route can serve
    message["files"] = [f for f in message["files"] if f["sha256"]]
    return message


async def _item(store: Store, f: Feedback, messages: dict[int, StoredMessage], sources: dict[int, tuple[str, ...]],
                ) -> dict[str, Any] | None:
    answer = messages.get(f.message_id)
    if answer is None:  # purged between the two reads
        return None
    question = messages.get(answer.reply_to) if answer.reply_to is not None else None
    earlier: list[StoredMessage] = []
    if question is not None:
        earlier = await store.history(f.key, since=0, before=question.id, limit=EARLIER_TURNS)
    return {
        "id": f.id, "kind": f.kind, "at": f.created_at, "comment": f.comment, "value": f.value, "user": f.user,
        "persona": f.persona, "model": f.model, "platform": f.key.platform, "conversation": str(f.key),
        "question": _files(message_json(question)) if question is not None else None,
        "answer": {**message_json(answer), "sources": list(sources.get(answer.id, ()))},
        "earlier": [_files(message_json(m)) for m in earlier],
    }


async def items(store: Store, request: Request) -> Response:
    """See the module docstring."""
    persona, platform = _name(request, "persona"), _name(request, "platform")
    since, until = _day(request, "since"), _day(request, "until")
    limit = _int(request, "limit", 50, MAX_LIMIT)
    if since is not None and until is not None and until < since:
        raise BadRequest("until is before since")
    found = await store.feedback(
        since=_midnight(since) if since else 0.0, until=_midnight(until + timedelta(days=1)) if until else None,
        kinds=ITEM_KINDS, platform=platform, persona=persona, newest_first=True, limit=limit)
    answers = {f.message_id for f in found}
    messages = {m.id: m for m in await store.messages_by_id(list(answers))}
    questions = [m.reply_to for m in messages.values() if m.reply_to is not None]
    messages.update({m.id: m for m in await store.messages_by_id(questions)})
    sources = {mid: meta.sources for mid, meta in (await store.answer_meta(list(answers))).items()}
    out = [item for f in found if (item := await _item(store, f, messages, sources)) is not None]
    return JSONResponse({"items": out})


async def daily(store: Store, request: Request, *, now: float | None = None) -> Response:
    """See the module docstring."""
    persona, platform = _name(request, "persona"), _name(request, "platform")
    days = _int(request, "days", 30, MAX_DAYS)
    today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
    first = today - timedelta(days=days - 1)
    kinds = {kind: series for series, members in SERIES.items() for kind in members}
    rows = await store.feedback_per_day(since=_midnight(first), until=_midnight(today + timedelta(days=1)),
                                        kinds=list(kinds), platform=platform, persona=persona)
    counts = {(first + timedelta(days=i)).isoformat(): dict.fromkeys(SERIES, 0) for i in range(days)}
    for day, kind, n in rows:
        if day in counts:
            counts[day][kinds[kind]] += n
    return JSONResponse({"series": list(SERIES), "days": [{"day": day, **c} for day, c in counts.items()]})


__all__ = ["ITEM_KINDS", "SERIES", "daily", "items"]
