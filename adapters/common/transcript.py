"""A conversation's stored messages as JSON, the same for every page and API that shows them."""

from __future__ import annotations

from typing import Any

from adapters.common.markdown import HtmlFormat
from bot.store import StoredMessage

_html = HtmlFormat()


def message_json(row: StoredMessage) -> dict[str, Any]:
    """One stored message: who, what, its state, its attachments (names and SHA-256), and for the
    assistant's texts the Markdown rendered as safe HTML."""
    author = row.sender_name if row.role == "assistant" else ""
    return {
        "id": row.id, "role": row.role, "kind": row.kind, "state": row.state, "author": author, "text": row.text,
        "html": _html.render(row.text).text if row.role == "assistant" else "",
        "attachments": [a.filename or "file" for a in row.attachments],
        "files": [{"name": a.filename or "file", "mime": a.mime, "size": a.size, "sha256": a.sha256}
                  for a in row.attachments],
        "reply_to": row.reply_to, "at": row.created_at,
        # a page's button (New conversation, Talk to a person) sent it: the page shows what it did, not a bubble
        "button": row.route.get("via") == "button",
        # the outbox gave it up (bot/conversation/outbox.py): the operator sees it was never shown to the user
        "undelivered": row.state == "failed" and (row.error or "").startswith("not delivered"),
    }


def threaded(rows: list[StoredMessage]) -> list[StoredMessage]:
    """Rows in the order a chat shows them: each reply (answer, note, refusal) right after the message it
    answers, even when questions were queued and their answers stored later; the rest by id."""
    replies: dict[int, list[StoredMessage]] = {}
    present = {r.id for r in rows if r.role == "user"}
    for row in rows:
        if row.role == "assistant" and row.reply_to in present:
            replies.setdefault(row.reply_to, []).append(row)  # type: ignore[arg-type]
    out: list[StoredMessage] = []
    for row in rows:
        if row.role == "assistant" and row.reply_to in present:
            continue
        out.append(row)
        out.extend(replies.get(row.id, ()) if row.role == "user" else ())
    return out


def transcript_json(rows: list[StoredMessage]) -> list[dict[str, Any]]:
    """The rows, threaded; ``error`` marks the reply that says why a message failed (shown as an error)."""
    failed = {r.id for r in rows if r.role == "user" and r.state == "failed"}
    out = []
    for row in threaded(rows):
        item = message_json(row)
        item["error"] = row.role == "assistant" and row.kind == "notice" and row.reply_to in failed
        out.append(item)
    return out
