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
    }


def transcript_json(rows: list[StoredMessage]) -> list[dict[str, Any]]:
    return [message_json(r) for r in rows]
