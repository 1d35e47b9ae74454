"""The model's Markdown, rendered for each platform behind one small interface.

A :class:`MarkdownFormat` turns Markdown into what one platform shows: safe HTML for the web chat,
text + entities for Telegram (``telegramify-markdown``), ``mrkdwn`` for Slack (``markdown-to-mrkdwn``),
plain text anywhere formatting is refused. Raw HTML in the Markdown is always shown as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from markdown_it import MarkdownIt

#: Code fences and inline code spans: their content is shown as written.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`)", re.S)
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def escape_raw_html(markdown: str) -> str:
    """Backslash-escape ``<`` that would start an HTML tag, outside code: the tag is then text."""
    parts = _CODE.split(markdown)
    return "".join(part if i % 2 else _TAG_START.sub(r"\\<", part) for i, part in enumerate(parts))


#: Slack's control characters (``&``, ``<``, ``>``), except an entity already escaped; and the quote markers at
#: a line's start, which are Markdown (a ``>`` alone starts nothing in Slack).
_SLACK_SPECIAL = re.compile(r"(?P<quote>^ {0,3}(?:> ?)+)|(?P<char>&(?!(?:amp|lt|gt);)|<|>)", re.M)
_SLACK_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape_slack(text: str, *, quotes: bool = True, line_start: bool = True) -> str:
    """``text`` with Slack's control characters escaped, so ``<!channel>`` or ``<@U…>`` that a user or the
    model wrote is shown, never parsed (no ping, no link). ``&amp;``, ``&lt;`` and ``&gt;`` stay as they are
    (Slack sends a user's ``&`` as ``&amp;``); with ``quotes``, so do ``>`` quote markers at line starts.
    ``line_start=False``: ``text`` continues a line (a streamed chunk), so its first character starts none."""
    def entity(match: re.Match[str]) -> str:
        quote = match.group("quote")
        if quote is not None:
            keep = quotes and (line_start or match.start() > 0)
            return quote if keep else quote.replace(">", "&gt;")
        return _SLACK_ENTITY[match.group("char")]

    return _SLACK_SPECIAL.sub(entity, text)


@dataclass(frozen=True, slots=True)
class Formatted:
    """A message ready for a platform: its text and, where the platform uses them, entities or a parse mode."""

    text: str
    entities: tuple[Any, ...] = field(default=())
    parse_mode: str | None = None


@runtime_checkable
class MarkdownFormat(Protocol):
    """Renders Markdown for one platform. ``render`` never raises on odd input."""

    name: str

    def render(self, markdown: str) -> Formatted: ...


class PlainFormat:
    """Markdown shown as written: the fallback when a platform refuses formatting."""

    name = "plain"

    def render(self, markdown: str) -> Formatted:
        return Formatted(markdown)


@lru_cache(maxsize=1)
def _markdown_it() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])


class HtmlFormat:
    """Markdown to HTML with raw HTML disabled (shown as text) and unsafe link schemes refused (web chat)."""

    name = "html"

    def render(self, markdown: str) -> Formatted:
        return Formatted(_markdown_it().render(markdown), parse_mode="html")


class TelegramFormat:
    """Markdown to Telegram text + ``MessageEntity`` list (no parse mode to get wrong), via telegramify-markdown.

    Entities are plain dicts in the Bot API's shape; lengths and offsets are in UTF-16 code units.
    """

    name = "telegram"

    def render(self, markdown: str) -> Formatted:
        import telegramify_markdown

        try:
            text, entities = telegramify_markdown.convert(escape_raw_html(markdown))
        except Exception:
            return Formatted(markdown)
        return Formatted(text, tuple(_entity_dict(e) for e in entities))


def _entity_dict(entity: Any) -> dict[str, Any]:
    data = {"type": entity.type, "offset": entity.offset, "length": entity.length}
    for extra in ("url", "language", "custom_emoji_id"):
        value = getattr(entity, extra, None)
        if value:
            data[extra] = value
    return data


class SlackFormat:
    """Markdown to Slack ``mrkdwn`` (``*bold*``, ``<url|text>``), via markdown-to-mrkdwn. The text is escaped
    first (:func:`escape_slack`): only the links the conversion makes are Slack syntax."""

    name = "slack"

    def render(self, markdown: str) -> Formatted:
        from markdown_to_mrkdwn import SlackMarkdownConverter

        markdown = escape_slack(markdown)
        try:
            text = SlackMarkdownConverter().convert(markdown)
        except Exception:
            text = markdown
        return Formatted(text, parse_mode="mrkdwn")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (Telegram counts message length and entity offsets this way)."""
    return len(text.encode("utf-16-le")) // 2


def cut_utf16(text: str, limit: int) -> str:
    """The longest prefix of ``text`` within ``limit`` UTF-16 code units, never half a surrogate pair."""
    if utf16_len(text) <= limit:
        return text
    units = text.encode("utf-16-le")[:limit * 2]
    return units.decode("utf-16-le", errors="ignore")
