"""A protocol-faithful Telegram Bot API server for tests, served by uvicorn on 127.0.0.1 inside the test's loop.

It speaks the wire protocol python-telegram-bot speaks (checked against PTB 22.8): ``POST /bot<token>/<method>``
with form, multipart or JSON bodies, ``{"ok": ..., "result"|"error_code"/"description"/"parameters"}``
answers, and ``GET /file/bot<token>/<file_path>`` downloads. The users' side (``push_update``,
``user_message``, ``callback``, ``load_payload``) produces updates shaped like Telegram's, delivered by
``getUpdates`` long polling or POSTed to a webhook. What the users see (``chat``, ``drafts``,
``chat_actions``, ...) is recorded, and faults (``fail``, ``delay``, ``duplicate_next``, flood control)
can be injected. Every state change wakes ``wait_for``, so tests never sleep.

Example::

    async with FakeTelegram() as tg, telegram.Bot(tg.token, base_url=tg.base_url,
                                                   base_file_url=tg.base_file_url) as bot:
        tg.push_update(tg.user_message(private(111), UserSpec(111), text="hi"))
        (update,) = await bot.get_updates()
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import json
import math
import mimetypes
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.serving import serve_asgi

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads" / "telegram"
"""Where the recorded update payloads live (``load_payload`` reads them)."""

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024
"""``getFile`` refuses files over 20 MB (the cloud Bot API's limit)."""

# Update types Telegram leaves out unless allowed_updates names them (Bot API, getUpdates/allowed_updates).
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})
_ENTITY_TYPES = frozenset({
    "mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number", "bold", "italic",
    "underline", "strikethrough", "spoiler", "blockquote", "expandable_blockquote", "code", "pre",
    "text_link", "text_mention", "custom_emoji", "date_time",
})
_BUTTON_ACTIONS = frozenset({
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text", "callback_game", "pay",
})
_SCOPES = frozenset({
    "default", "all_private_chats", "all_group_chats", "all_chat_administrators", "chat",
    "chat_administrators", "chat_member",
})
_MESSAGE_KEYS = ("message", "edited_message", "channel_post", "edited_channel_post", "business_message")

# Form fields arrive as strings: Telegram decodes each by its declared type. PTB JSON-encodes every
# non-string value (telegram/request/_requestparameter.py, RequestParameter.json_value).
_JSON_FIELDS = frozenset({
    "reply_markup", "entities", "caption_entities", "reply_parameters", "link_preview_options",
    "allowed_updates", "commands", "scope", "media",
})
_INT_FIELDS = frozenset({
    "message_id", "offset", "limit", "draft_id", "message_thread_id", "reply_to_message_id",
    "max_connections", "cache_time", "user_id",
})
_BOOL_FIELDS = frozenset({
    "drop_pending_updates", "allow_sending_without_reply", "show_alert", "disable_notification",
    "protect_content", "disable_web_page_preview", "disable_content_type_detection",
})

# Flood control counts what users see as a new or changed message. Chat actions and drafts are not
# counted: Telegram documents no limit for them (drafts can get their own, opt-in, FloodLimits.drafts_per_second).
_COUNTED = frozenset({
    "sendMessage", "sendDocument", "sendPhoto", "editMessageText", "editMessageCaption",
    "editMessageReplyMarkup",
})

_TOKEN_RE = re.compile(r"\d+:[A-Za-z0-9_-]+")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")

_FILE_ID_PREFIX = {
    "photos": "AgACAgIAAxkBAAI", "documents": "BQACAgIAAxkBAAI", "videos": "BAACAgIAAxkBAAI",
    "voice": "AwACAgIAAxkBAAI", "video_notes": "DQACAgIAAxkBAAI", "animations": "CgACAgIAAxkBAAI",
    "stickers": "CAACAgIAAxkBAAI", "thumbnails": "AAMCAgADGQEAAg",
}

_NGINX_PAGE = ("<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n<center><h1>{status} {phrase}"
               "</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n")
_DESCRIPTIONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden: bot was blocked by the user", 404: "Not Found",
    409: "Conflict", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message")
# Not confirmed against the real server (sendMessageDraft is new); the status is what matters to PTB.
DRAFT_NOT_PRIVATE = "Bad Request: message drafts can be sent only to private chats"
DRAFT_ID_INVALID = "Bad Request: draft_id must be non-zero"


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class UserSpec:
    """A Telegram user (or another bot) on the users' side."""

    id: int
    first_name: str = "Ana"
    username: str = ""
    language_code: str = "en"
    is_bot: bool = False
    last_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The Bot API ``User`` object, leaving out empty optional fields as Telegram does."""
        data: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.last_name:
            data["last_name"] = self.last_name
        if self.username:
            data["username"] = self.username
        if self.language_code and not self.is_bot:
            data["language_code"] = self.language_code
        return data


@dataclass(frozen=True, slots=True)
class ChatSpec:
    """A chat: ``private`` (id = the user's id), ``group``, or ``supergroup`` (``is_forum`` for topics)."""

    id: int
    type: str = "private"
    title: str = ""
    is_forum: bool = False
    username: str = ""
    first_name: str = ""

    def to_dict(self, user: UserSpec | None = None) -> dict[str, Any]:
        """The Bot API ``Chat`` object; a private chat takes its names from ``user`` when not given."""
        data: dict[str, Any] = {"id": self.id}
        if self.type == "private":
            data["first_name"] = self.first_name or (user.first_name if user else "Ana")
            if self.username or (user and user.username):
                data["username"] = self.username or (user.username if user else "")
        else:
            data["title"] = self.title or "Test group"
            if self.username:
                data["username"] = self.username
        data["type"] = self.type
        if self.is_forum:
            data["is_forum"] = True
        return data


def private(chat_id: int = 111111111, first_name: str = "", username: str = "") -> ChatSpec:
    """A private chat with the user whose id is ``chat_id``."""
    return ChatSpec(chat_id, "private", first_name=first_name, username=username)


def group(chat_id: int = -1001234567890, title: str = "Test group", *, supergroup: bool = True) -> ChatSpec:
    """A group; supergroups (the default, ids -100…) are what almost every group is today."""
    return ChatSpec(chat_id, "supergroup" if supergroup else "group", title=title)


def forum(chat_id: int = -1009876543210, title: str = "Test forum") -> ChatSpec:
    """A supergroup with topics enabled."""
    return ChatSpec(chat_id, "supergroup", title=title, is_forum=True)


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Flood control, modelled on Telegram's published guidance (core.telegram.org/bots/faq).

    A chat gets a token bucket (``per_chat_per_second`` refill, ``per_chat_burst`` tokens); a group or
    supergroup also a sliding 60 s window of ``per_group_per_minute``; all chats together a sliding 1 s
    window of ``global_per_second``. Sends and edits count; chat actions do not; drafts only when
    ``drafts_per_second`` is set (their own bucket per chat). Refused calls do not use up allowance.
    """

    per_chat_per_second: float = 1.0
    per_chat_burst: int = 3
    per_group_per_minute: int = 20
    global_per_second: int = 30
    drafts_per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Upload:
    """A file part of a multipart request."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """The number of bytes uploaded."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Call:
    """One request the server answered: the method, its decoded parameters, the HTTP status and body."""

    method: str
    params: dict[str, Any]
    status: int
    time: float
    response: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SentDocument:
    """A file the bot sent (its name, bytes and MIME type as Telegram stored them)."""

    filename: str
    data: bytes = field(repr=False)
    mime: str


@dataclass
class BotMessage:
    """A message the bot sent, as the users see it now; ``history`` holds every version, current last."""

    message_id: int
    chat_id: int
    kind: str
    text: str | None = None
    entities: list[dict[str, Any]] = field(default_factory=list)
    parse_mode: str | None = None
    message_thread_id: int | None = None
    reply_to_message_id: int | None = None
    reply_markup: dict[str, Any] | None = None
    edits: int = 0
    history: list[str] = field(default_factory=list)
    deleted: bool = False
    document: SentDocument | None = None
    photo: SentDocument | None = None
    caption: str | None = None
    sent_text: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def buttons(self) -> list[list[dict[str, Any]]]:
        """The inline keyboard's rows (empty without one)."""
        return list((self.reply_markup or {}).get("inline_keyboard", []))


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST of an update to the webhook: the HTTP status, or ``None`` and the error."""

    update_id: int
    status: int | None
    error: str
    time: float


@dataclass
class _StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes = field(repr=False)
    size: int
    path: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Fault:
    method: str
    status: int
    times: int
    retry_after: int | None
    description: str | None


@dataclass
class _Delay:
    method: str
    seconds: float
    times: int


class _ApiError(Exception):
    def __init__(self, status: int, description: str, retry_after: int | None = None, html: bool = False):
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after
        self.html = html

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            data["parameters"] = {"retry_after": self.retry_after}
        return data


class _ClientGone(Exception):
    pass


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


# ------------------------------------------------------------------------------------------ formatting


def u16len(text: str) -> int:
    """Length in UTF-16 code units: the unit of entity offsets and lengths in the Bot API."""
    return len(text.encode("utf-16-le")) // 2


class _EntityError(Exception):
    pass


class _Builder:
    """Collects the plain text and entities a parser produces, offsets in UTF-16 code units."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.offset = 0
        self.entities: list[dict[str, Any]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.offset += u16len(text)

    def entity(self, kind: str, start: int, **extra: Any) -> None:
        if self.offset > start:
            self.entities.append({"offset": start, "length": self.offset - start, "type": kind, **extra})

    def result(self) -> tuple[str, list[dict[str, Any]]]:
        return "".join(self.parts), _sorted(self.entities)


def _sorted(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entities, key=lambda e: (e["offset"], -e["length"]))


_HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
    "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
    "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre", "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_HTML_ENTITY = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z]{2,8});")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_ATTR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def _unescape_html(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        body = match.group(1)
        try:
            if body.startswith(("#x", "#X")):
                return chr(int(body[2:], 16))
            if body.startswith("#"):
                return chr(int(body[1:]))
        except ValueError:  # beyond U+10FFFF
            return match.group(0)
        return _NAMED.get(body, match.group(0))

    return _HTML_ENTITY.sub(one, text)


def parse_html(src: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode (the tags of core.telegram.org/bots/api#html-style).

    Errors read like Telegram's: an unsupported tag (``<br>``, a bare ``<``), unclosed or mismatched
    tags; an unknown ``&name;`` stays literal as in TDLib. Raises ``_EntityError``.
    """
    out = _Builder()
    stack: list[dict[str, Any]] = []
    i, n = 0, len(src)

    def at(k: int) -> int:
        return len(src[:k].encode())

    while i < n:
        c = src[i]
        if c == "&":
            match = _HTML_ENTITY.match(src, i)
            if match and (not match.group(1)[0].isalpha() or match.group(1) in _NAMED):
                out.add(_unescape_html(match.group(0)))
                i = match.end()
            else:
                out.add("&")
                i += 1
        elif c == "<" and i + 1 < n and src[i + 1] == "/":
            end = src.find(">", i)
            if end < 0:
                raise _EntityError(f"Unclosed end tag at byte offset {at(i)}")
            name = src[i + 2:end].strip().lower()
            if not stack:
                raise _EntityError(f"Unexpected end tag at byte offset {at(i)}")
            top = stack.pop()
            if name != top["tag"]:
                raise _EntityError(f'Unmatched end tag at byte offset {at(i)}, expected "</{top["tag"]}>", '
                                   f'found "</{name}>"')
            _close_html(out, top, stack)
            i = end + 1
        elif c == "<":
            match = _TAG_NAME.match(src, i + 1)
            name = match.group(0).lower() if match else ""
            if name not in _HTML_TAGS:
                raise _EntityError(f'Unsupported start tag "{name}" at byte offset {at(i)}')
            k = i + 1 + len(name)
            attrs: dict[str, str] = {}
            while True:
                while k < n and src[k].isspace():
                    k += 1
                if k >= n:
                    raise _EntityError(f"Unclosed start tag at byte offset {at(i)}")
                if src[k] == ">":
                    break
                attr = _ATTR_NAME.match(src, k)
                if not attr:
                    raise _EntityError(f'Empty attribute name in the tag "{name}" at byte offset {at(i)}')
                k = attr.end()
                while k < n and src[k].isspace():
                    k += 1
                if k >= n or src[k] != "=":
                    if k < n and src[k] in "> " and attr.group(0).lower() == "expandable":
                        attrs["expandable"] = ""
                        continue
                    raise _EntityError(f'Expected equal sign in declaration of an attribute of the tag "{name}" '
                                       f"at byte offset {at(i)}")
                k += 1
                while k < n and src[k].isspace():
                    k += 1
                if k < n and src[k] in "\"'":
                    close = src.find(src[k], k + 1)
                    if close < 0:
                        raise _EntityError(f"Unclosed start tag at byte offset {at(i)}")
                    value, k = src[k + 1:close], close + 1
                else:
                    start = k
                    while k < n and not src[k].isspace() and src[k] != ">":
                        k += 1
                    value = src[start:k]
                attrs[attr.group(0).lower()] = _unescape_html(value)
            if name == "span" and attrs.get("class") != "tg-spoiler":
                raise _EntityError(f'Tag "span" must have class "tg-spoiler" at byte offset {at(i)}')
            stack.append({"tag": name, "offset": out.offset, "attrs": attrs, "language": None})
            i = k + 1
        else:
            out.add(c)
            i += 1
    if stack:
        raise _EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1]["tag"]}"')
    return out.result()


def _close_html(out: _Builder, top: dict[str, Any], stack: list[dict[str, Any]]) -> None:
    kind = _HTML_TAGS[top["tag"]]
    attrs = top["attrs"]
    if kind == "code" and stack and stack[-1]["tag"] == "pre":
        language = attrs.get("class", "")
        if language.startswith("language-"):
            stack[-1]["language"] = language[len("language-"):]
        return
    if kind == "pre":
        extra = {"language": top["language"]} if top["language"] else {}
        out.entity("pre", top["offset"], **extra)
    elif kind == "text_link":
        href = attrs.get("href", "")
        user = re.fullmatch(r"tg://user\?id=(\d+)", href)
        if user:
            out.entity("text_mention", top["offset"], user={"id": int(user.group(1)), "is_bot": False,
                                                            "first_name": ""})
        elif href:
            out.entity("text_link", top["offset"], url=href)
    elif kind == "blockquote":
        out.entity("expandable_blockquote" if "expandable" in attrs else "blockquote", top["offset"])
    elif kind == "custom_emoji":
        if attrs.get("emoji-id"):
            out.entity("custom_emoji", top["offset"], custom_emoji_id=attrs["emoji-id"])
    else:
        out.entity(kind, top["offset"])


_MD2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MD2_NAMES = {
    "bold": "Bold", "italic": "Italic", "underline": "Underline", "strikethrough": "Strikethrough",
    "spoiler": "Spoiler", "text_link": "TextUrl", "custom_emoji": "CustomEmoji", "code": "Code", "pre": "Pre",
}


def parse_markdown_v2(src: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's MarkdownV2 parse mode: every reserved character outside an entity must be escaped.

    ``Character '.' is reserved and must be escaped with the preceding '\\'`` is the error bots meet most.
    Supported: ``*bold* _italic_ __underline__ ~strike~ ||spoiler|| [text](url) ![e](tg://emoji?id=1)
    `code` ```lang\\npre``` `` and ``>`` quotes at line starts (not the ``**>`` expandable form).
    """
    out = _Builder()
    stack: list[dict[str, Any]] = []
    quote: int | None = None
    i, n = 0, len(src)

    def at(k: int) -> int:
        return len(src[:k].encode())

    def open_(kind: str, k: int, width: int) -> None:
        stack.append({"kind": kind, "offset": out.offset, "byte": at(k)})
        nonlocal i
        i = k + width

    while i < n:
        c = src[i]
        top = stack[-1]["kind"] if stack else None
        if c == "\\" and i + 1 < n and 0 < ord(src[i + 1]) <= 126:
            out.add(src[i + 1])
            i += 2
            continue
        if top in ("code", "pre"):
            if top == "pre" and src.startswith("```", i):
                entry = stack.pop()
                extra = {"language": entry["language"]} if entry.get("language") else {}
                out.entity("pre", entry["offset"], **extra)
                i += 3
            elif top == "code" and c == "`":
                out.entity("code", stack.pop()["offset"])
                i += 1
            else:
                out.add(c)
                i += 1
            continue
        if c == "\n":
            if quote is not None and not src.startswith(">", i + 1):
                if stack:
                    raise _EntityError(f"Can't find end of {_MD2_NAMES[stack[-1]['kind']]} entity at byte "
                                       f"offset {stack[-1]['byte']}")
                out.entity("blockquote", quote)
                quote = None
            out.add(c)
            i += 1
            continue
        if c not in _MD2_RESERVED:
            out.add(c)
            i += 1
            continue
        line_start = i == 0 or src[i - 1] == "\n"
        if c == ">" and line_start and not stack:
            if quote is None:
                quote = out.offset
            i += 1
        elif c == "_" and src.startswith("__", i) and top == "underline":
            out.entity("underline", stack.pop()["offset"])
            i += 2
        elif c == "_" and top == "italic":
            out.entity("italic", stack.pop()["offset"])
            i += 1
        elif c == "*" and top == "bold":
            out.entity("bold", stack.pop()["offset"])
            i += 1
        elif c == "~" and top == "strikethrough":
            out.entity("strikethrough", stack.pop()["offset"])
            i += 1
        elif c == "|" and src.startswith("||", i) and top == "spoiler":
            out.entity("spoiler", stack.pop()["offset"])
            i += 2
        elif c == "]" and top in ("text_link", "custom_emoji"):
            entry = stack.pop()
            i += 1
            if i < n and src[i] == "(":
                url, i = _md2_url(src, i + 1, at)
                if entry["kind"] == "custom_emoji":
                    emoji = re.fullmatch(r"tg://emoji\?id=(\d+)", url)
                    if emoji:
                        out.entity("custom_emoji", entry["offset"], custom_emoji_id=emoji.group(1))
                elif url:
                    out.entity("text_link", entry["offset"], url=url)
        elif c == "_":
            if src.startswith("__", i):
                open_("underline", i, 2)
            else:
                open_("italic", i, 1)
        elif c == "*":
            open_("bold", i, 1)
        elif c == "~":
            open_("strikethrough", i, 1)
        elif c == "|" and src.startswith("||", i):
            open_("spoiler", i, 2)
        elif c == "[":
            open_("text_link", i, 1)
        elif c == "!" and src.startswith("![", i):
            open_("custom_emoji", i, 2)
        elif c == "`" and src.startswith("```", i):
            newline = src.find("\n", i + 3)
            closing = src.find("```", i + 3)
            language = ""
            start = i + 3
            if newline >= 0 and (closing < 0 or newline < closing):
                candidate = src[i + 3:newline]
                if candidate and not any(ch.isspace() for ch in candidate):
                    language, start = candidate, newline + 1
                elif not candidate:
                    start = newline + 1
            stack.append({"kind": "pre", "offset": out.offset, "byte": at(i), "language": language})
            i = start
        elif c == "`":
            open_("code", i, 1)
        else:
            raise _EntityError(f"Character '{c}' is reserved and must be escaped with the preceding '\\'")
    if stack:
        raise _EntityError(f"Can't find end of {_MD2_NAMES[stack[-1]['kind']]} entity at byte offset "
                           f"{stack[-1]['byte']}")
    if quote is not None:
        out.entity("blockquote", quote)
    return out.result()


def _md2_url(src: str, i: int, at: Callable[[int], int]) -> tuple[str, int]:
    start, chars = i, []
    while i < len(src) and src[i] != ")":
        if src[i] == "\\" and i + 1 < len(src):
            i += 1
        chars.append(src[i])
        i += 1
    if i >= len(src):
        raise _EntityError(f"Can't find end of a URL at byte offset {at(start)}")
    return "".join(chars), i + 1


def parse_markdown(src: str) -> tuple[str, list[dict[str, Any]]]:
    """The legacy ``Markdown`` parse mode: ``*bold* _italic_ `code` ```pre``` [text](url)``, no nesting."""
    out = _Builder()
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "\\" and i + 1 < n and src[i + 1] in "_*`[":
            out.add(src[i + 1])
            i += 2
            continue
        if c not in "_*`[":
            out.add(c)
            i += 1
            continue
        byte = len(src[:i].encode())
        marker = "```" if src.startswith("```", i) else ("]" if c == "[" else c)
        width = 1 if c == "[" else len(marker)
        end = src.find(marker, i + width)
        if end < 0:
            raise _EntityError(f"Can't find end of the entity starting at byte offset {byte}")
        inner = src[i + width:end]
        start = out.offset
        out.add(inner)
        if c == "[":
            if src.startswith("(", end + 1) and ")" in src[end + 2:]:
                close = src.index(")", end + 2)
                out.entity("text_link", start, url=src[end + 2:close])
                i = close + 1
            else:
                i = end + 1
            continue
        kind = {"*": "bold", "_": "italic", "`": "code", "```": "pre"}[marker]
        out.entity(kind, start)
        i = end + len(marker)
    return out.result()


_AUTO = re.compile(
    r"(?P<url>https?://[^\s<>\"']+)"
    r"|(?P<mention>(?<![\w@/])@[A-Za-z][A-Za-z0-9_]{3,31}(?![\w@]))"
    r"|(?P<bot_command>(?<![\w/])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z][A-Za-z0-9_]{3,31})?(?![\w/]))"
    r"|(?P<hashtag>(?<![\w#])#\w*[^\W\d_]\w*)"
)


def detect_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram's server finds by itself: URLs, @mentions, /commands and #hashtags."""
    found = []
    for match in _AUTO.finditer(text):
        kind = match.lastgroup or "url"
        value = match.group(0)
        if kind == "url":
            value = value.rstrip(".,;:!?)]}'\"")
        found.append({"offset": u16len(text[:match.start()]), "length": u16len(value), "type": kind})
    return found


def _trim(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims leading and trailing spaces and newlines, moving entities along."""
    stripped = text.strip(" \t\r\n")
    left = u16len(text[:len(text) - len(text.lstrip(" \t\r\n"))])
    total = u16len(stripped)
    kept = []
    for entity in entities:
        start = max(0, entity["offset"] - left)
        end = min(total, entity["offset"] + entity["length"] - left)
        if end > start:
            kept.append({**entity, "offset": start, "length": end - start})
    return stripped, kept


def _check_entities(text: str, entities: Any) -> list[dict[str, Any]]:
    if not isinstance(entities, list):
        raise _bad("can't parse entities JSON object")
    total = u16len(text)
    checked = []
    for entity in entities:
        if not isinstance(entity, dict) or entity.get("type") not in _ENTITY_TYPES:
            raise _bad("can't parse MessageEntity: Unsupported type specified")
        offset, length = entity.get("offset"), entity.get("length")
        if not isinstance(offset, int) or not isinstance(length, int):
            raise _bad('can\'t parse MessageEntity: Field "offset" must be of type Number')
        if offset < 0 or length <= 0 or offset + length > total:
            raise _bad(f"can't parse entities: entity of type {entity['type']} at offset {offset} with length "
                       f"{length} is out of the text of {total} UTF-16 code units")
        if entity["type"] == "text_link" and not entity.get("url"):
            raise _bad('can\'t parse MessageEntity: Field "url" must be of type String')
        if entity["type"] == "text_mention" and not isinstance(entity.get("user"), dict):
            raise _bad('can\'t parse MessageEntity: Field "user" must be of type Object')
        if entity["type"] == "custom_emoji" and not entity.get("custom_emoji_id"):
            raise _bad('can\'t parse MessageEntity: Field "custom_emoji_id" must be of type String')
        checked.append(dict(entity))
    return _sorted(checked)


def _merge_auto(text: str, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = list(entities)
    for auto in detect_entities(text):
        start, end = auto["offset"], auto["offset"] + auto["length"]
        if all(end <= e["offset"] or start >= e["offset"] + e["length"] for e in entities):
            merged.append(auto)
    return _sorted(merged)


def format_text(raw: str | None, parse_mode: str | None, entities: Any) -> tuple[str, list[dict[str, Any]]]:
    """What Telegram shows for ``raw``: parsed by ``parse_mode`` (ignored when ``entities`` are given),
    trimmed, with the entities it detects itself added. Raises ``_ApiError`` 400 as Telegram does."""
    text = "" if raw is None else str(raw)
    if entities is not None:
        found = _check_entities(text, entities)
    elif parse_mode:
        parser = {"html": parse_html, "markdownv2": parse_markdown_v2, "markdown": parse_markdown}.get(
            str(parse_mode).lower())
        if parser is None:
            raise _bad("unsupported parse_mode")
        try:
            text, found = parser(text)
        except _EntityError as exc:
            raise _bad(f"can't parse entities: {exc}") from None
    else:
        found = []
    text, found = _trim(text, found)
    return text, _merge_auto(text, found)


# ------------------------------------------------------------------------------------------ the server


Handler = Callable[[dict[str, Any], Request], Awaitable[Any]]


class FakeTelegram:
    """A Telegram Bot API server on 127.0.0.1: give PTB ``base_url`` and ``base_file_url``.

    Use as ``async with FakeTelegram() as tg``. See the module docstring for the three sides
    (users, what users see, faults).
    """

    def __init__(self, token: str = "123456789:AAF-test-token_xyz", *, bot_id: int = 123456789,
                 username: str = "internvl_test_bot", flood_control: bool = False,
                 limits: FloodLimits | None = None, first_name: str = "InternVL Test Bot",
                 webhook_timeout: float = 2.0, webhook_retry_delay: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.bot_id = bot_id
        self.username = username
        self.first_name = first_name
        self.flood_control = flood_control
        self.limits = limits or FloodLimits()
        self.webhook_timeout = webhook_timeout
        self.webhook_retry_delay = webhook_retry_delay
        self._clock = clock
        self.url = ""
        self.base_url = ""
        self.base_file_url = ""
        # what the users see
        self.calls: list[Call] = []
        self.drafts: list[dict[str, Any]] = []
        self.chat_actions: list[dict[str, Any]] = []
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.answered_callbacks: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] | None = None
        self.webhook_attempts: list[WebhookAttempt] = []
        self.served_429 = 0
        self.filtered_updates: list[dict[str, Any]] = []
        self.polling = 0
        self.placeholders: dict[str, str] = {}
        # state
        self._pending: list[dict[str, Any]] = []
        self._resend: list[dict[str, Any]] = []
        self._allowed_updates: list[str] = []
        self._next_update_id = 500000001
        self._next_message_id: dict[int, int] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._blocked: set[int] = set()
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._threads: dict[int, set[int]] = {}
        self._bot_messages: dict[int, list[BotMessage]] = {}
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self._file_counter = 0
        self._open_callbacks: set[str] = set()
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._duplicates = 0
        self._duplicated: set[int] = set()
        self._poll_generation = 0
        self._buckets: dict[tuple[str, int], tuple[float, float]] = {}
        self._windows: dict[Any, deque[float]] = {}
        self._closing = False
        self._event = asyncio.Event()
        self._serving: contextlib.AbstractAsyncContextManager[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._handlers: dict[str, tuple[str, Handler]] = {
            name.lower(): (name, handler) for name, handler in {
                "getMe": self._get_me, "getUpdates": self._get_updates, "setWebhook": self._set_webhook,
                "deleteWebhook": self._delete_webhook, "getWebhookInfo": self._get_webhook_info,
                "setMyCommands": self._set_my_commands, "getMyCommands": self._get_my_commands,
                "deleteMyCommands": self._delete_my_commands, "sendMessage": self._send_message,
                "editMessageText": self._edit_message_text, "editMessageCaption": self._edit_message_caption,
                "editMessageReplyMarkup": self._edit_message_reply_markup, "deleteMessage": self._delete_message,
                "sendMessageDraft": self._send_message_draft, "sendChatAction": self._send_chat_action,
                "sendDocument": self._send_document, "sendPhoto": self._send_photo, "getFile": self._get_file,
                "answerCallbackQuery": self._answer_callback_query, "getChat": self._get_chat,
            }.items()
        }

    # ------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeTelegram:
        """Start the server (an ephemeral port) and the webhook sender."""
        app = Starlette(routes=[
            Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
            Route("/file/bot{token}/{path:path}", self._download, methods=["GET"]),
        ])
        self._serving = serve_asgi(app)
        self.url = await self._serving.__aenter__()
        self.base_url = f"{self.url}/bot"
        self.base_file_url = f"{self.url}/file/bot"
        self._client = httpx.AsyncClient()
        self._worker = asyncio.create_task(self._webhook_sender())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop: end long polls (empty answers), the webhook sender and the server."""
        self._closing = True
        self._bump()
        if self._worker:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._client:
            await self._client.aclose()
        if self._serving is not None:
            await self._serving.__aexit__(None, None, None)

    # --------------------------------------------------------------------------------- waiting

    def _bump(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def _until(self, predicate: Callable[[], bool], within: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while not predicate():
            event = self._event
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return predicate()
        return True

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
        """Return once ``predicate()`` is true; it is re-checked after every change of the server's state
        (every call answered, update pushed, webhook attempt). Raise ``TimeoutError`` after ``timeout``."""
        if await self._until(predicate, timeout):
            return
        recent = ", ".join(f"{c.method}:{c.status}" for c in self.calls[-12:]) or "none"
        chats = {chat_id: len(messages) for chat_id, messages in self._bot_messages.items()}
        name = getattr(predicate, "__name__", repr(predicate))
        raise TimeoutError(f"FakeTelegram.wait_for({name}) still false after {timeout}s; last calls: {recent}; "
                           f"bot messages per chat: {chats}; pending updates: {len(self._pending)}; "
                           f"webhook attempts: {[a.status for a in self.webhook_attempts[-6:]]}")

    # --------------------------------------------------------------------------------- the users' side

    def add_chat(self, chat: ChatSpec, user: UserSpec | None = None) -> None:
        """Make a chat known (Telegram answers "chat not found" for chats the bot has never seen)."""
        self._chats[chat.id] = chat.to_dict(user)
        self._bump()

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: sends to the chat get 403 "Forbidden: bot was blocked by the user"."""
        self._blocked.add(chat_id)
        self._bump()

    def add_file(self, data: bytes, *, size: int | None = None, path_hint: str = "file") -> tuple[str, str]:
        """Store a file as Telegram would; returns ``(file_id, file_unique_id)``.

        ``size`` overrides the announced ``file_size`` (a 50 MB video without 50 MB of bytes).
        ``path_hint`` is ``"folder/name.ext"`` or a bare name (folder ``documents``); the folder picks
        a realistic file_id prefix and the ``file_path`` is ``folder/stem_N.ext``.
        """
        stored = self._store_file(data, size=size, path_hint=path_hint)
        return stored.file_id, stored.file_unique_id

    def _store_file(self, data: bytes, *, size: int | None = None, path_hint: str = "file",
                    meta: dict[str, Any] | None = None) -> _StoredFile:
        folder, _, name = path_hint.rpartition("/")
        folder = folder or "documents"
        stem, dot, ext = name.partition(".")
        self._file_counter += 1
        n = self._file_counter
        prefix = _FILE_ID_PREFIX.get(folder, "BQACAgIAAxkBAAI")
        stored = _StoredFile(
            file_id=f"{prefix}{n:05d}{secrets.token_urlsafe(18)}",
            file_unique_id=f"AQAD{n:04d}{secrets.token_urlsafe(6)}",
            data=data, size=len(data) if size is None else size,
            path=f"{folder}/{stem or 'file'}_{n}{dot}{ext}", meta=dict(meta or {}),
        )
        self._files[stored.file_id] = stored
        self._files_by_path[stored.path] = stored
        return stored

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates, or for the webhook when one is set; returns its update_id.

        A missing update_id is assigned (monotonic). The chat and message become known (so the bot may
        answer and reply to it). Updates of a type that ``allowed_updates`` leaves out are never created,
        as on Telegram: they land in ``filtered_updates``.
        """
        update = copy.deepcopy(update)
        if "update_id" not in update:
            update = {"update_id": self._next_update_id, **update}
        self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
        self._register(update)
        kind = next((key for key in update if key != "update_id"), "")
        if not self._allowed(kind):
            self.filtered_updates.append(update)
        else:
            self._pending.append(update)
        self._bump()
        return int(update["update_id"])

    def _allowed(self, kind: str) -> bool:
        if self._allowed_updates:
            return kind in self._allowed_updates
        return kind not in _OPT_IN_UPDATES

    def _register(self, update: dict[str, Any]) -> None:
        for key in _MESSAGE_KEYS:
            if isinstance(update.get(key), dict):
                self._register_message(update[key])
        query = update.get("callback_query")
        if isinstance(query, dict):
            self._open_callbacks.add(str(query.get("id")))
            if isinstance(query.get("message"), dict) and query["message"].get("chat"):
                chat = query["message"]["chat"]
                self._chats.setdefault(chat["id"], chat)
                self._adopt(query["message"])

    def _adopt(self, raw: dict[str, Any]) -> None:
        """A bot message that arrives inside an update (a recorded payload) becomes one the bot can edit."""
        chat_id = raw["chat"]["id"]
        if (raw.get("from") or {}).get("id") != self.bot_id or self._find_bot_message(chat_id, raw["message_id"]):
            return
        kind = next((k for k in ("document", "photo", "video", "sticker") if k in raw), "text")
        text = raw.get("text")
        raw = _without_reply(raw)
        self._bot_messages.setdefault(chat_id, []).append(BotMessage(
            message_id=raw["message_id"], chat_id=chat_id, kind=kind, text=text, entities=raw.get("entities", []),
            message_thread_id=raw.get("message_thread_id"), reply_markup=raw.get("reply_markup"),
            history=[text or raw.get("caption") or ""], caption=raw.get("caption"), raw=raw))
        self._messages.setdefault((chat_id, raw["message_id"]), raw)
        self._next_message_id[chat_id] = max(self._next_message_id.get(chat_id, 1), raw["message_id"] + 1)

    def _register_message(self, message: dict[str, Any]) -> None:
        chat = message.get("chat") or {}
        chat_id = chat.get("id")
        if chat_id is None:
            return
        self._chats[chat_id] = {**self._chats.get(chat_id, {}), **chat}
        mid = message.get("message_id", 0)
        self._next_message_id[chat_id] = max(self._next_message_id.get(chat_id, 1), mid + 1)
        self._messages[(chat_id, mid)] = _without_reply(message)
        reply = message.get("reply_to_message")
        if isinstance(reply, dict):
            self._adopt({**reply, "chat": reply.get("chat") or chat})
            self._messages.setdefault((chat_id, reply.get("message_id", 0)), _without_reply(reply))
            if reply.get("forum_topic_created"):
                self._threads.setdefault(chat_id, set()).add(reply["message_id"])
        if message.get("is_topic_message") and message.get("message_thread_id"):
            self._threads.setdefault(chat_id, set()).add(message["message_thread_id"])
        if message.get("forum_topic_created"):
            self._threads.setdefault(chat_id, set()).add(mid)

    def _take_message_id(self, chat_id: int) -> int:
        mid = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = mid + 1
        return mid

    def user_message(self, chat: ChatSpec, user: UserSpec, *, text: str | None = None,
                     caption: str | None = None, entities: list[dict[str, Any]] | None = None,
                     photo: bytes | str | list[dict[str, Any]] | None = None,
                     document: bytes | tuple[str, bytes] | tuple[str, bytes, str] | dict[str, Any] | None = None,
                     video: bytes | dict[str, Any] | None = None, video_note: bytes | dict[str, Any] | None = None,
                     animation: bytes | dict[str, Any] | None = None, voice: bytes | dict[str, Any] | None = None,
                     media_group_id: str | None = None, message_thread_id: int | None = None,
                     reply_to_bot_message: int | None = None, edited: bool = False,
                     message_id: int | None = None) -> dict[str, Any]:
        """Build (not push) the update a user's message produces, shaped like Telegram's.

        ``entities`` go with ``text`` or ``caption``; without them Telegram's own detection adds
        mentions, commands, URLs and hashtags. Media given as bytes are stored (see ``add_file``);
        a dict is used as the media object (a ``"data"`` key is stored and replaced by ids). In a forum
        topic a message that is no reply carries ``reply_to_message`` = the topic's creation message.
        ``edited`` makes an ``edited_message`` (pass the original ``message_id``).
        """
        now = int(time.time())
        chat_dict = chat.to_dict(user)
        mid = message_id if message_id is not None else self._take_message_id(chat.id)
        message: dict[str, Any] = {"message_id": mid, "from": user.to_dict(), "chat": chat_dict, "date": now}
        if edited:
            message["edit_date"] = now
        if message_thread_id is not None:
            # Outside forums it names a reply thread, not a topic (no is_topic_message).
            message["message_thread_id"] = message_thread_id
            if chat.is_forum:
                message["is_topic_message"] = True
        if media_group_id:
            message["media_group_id"] = media_group_id
        if reply_to_bot_message is not None:
            found = self._messages.get((chat.id, reply_to_bot_message))
            if found is None:
                raise ValueError(f"no message {reply_to_bot_message} in chat {chat.id} to reply to")
            message["reply_to_message"] = _without_reply(found)
        elif message_thread_id is not None and chat.is_forum:
            message["reply_to_message"] = self._topic_creation(chat_dict, user, message_thread_id)
        if photo is not None:
            message["photo"] = photo if isinstance(photo, list) else (
                self._photo_sizes(photo) if isinstance(photo, bytes) else [self._known_photo(photo)])
        if document is not None:
            message["document"] = self._document_object(document)
        if video is not None:
            message["video"] = self._media_object(video, "videos/video.mp4", {
                "width": 1280, "height": 720, "duration": 5, "file_name": "video.mp4", "mime_type": "video/mp4"})
        if video_note is not None:
            message["video_note"] = self._media_object(video_note, "video_notes/video_note.mp4",
                                                       {"duration": 4, "length": 384})
        if animation is not None:
            message["animation"] = self._media_object(animation, "animations/animation.mp4", {
                "width": 480, "height": 270, "duration": 3, "file_name": "animation.gif.mp4",
                "mime_type": "video/mp4"})
            # Telegram sends an animation's file again as "document" for old clients.
            message["document"] = {key: message["animation"][key] for key in (
                "file_name", "mime_type", "file_id", "file_unique_id", "file_size") if key in message["animation"]}
        if voice is not None:
            message["voice"] = self._media_object(voice, "voice/voice.oga", {"duration": 3,
                                                                            "mime_type": "audio/ogg"})
        if text is not None:
            message["text"] = text
            found_entities = entities if entities is not None else detect_entities(text)
            if found_entities:
                message["entities"] = found_entities
        if caption is not None:
            message["caption"] = caption
            found_entities = entities if entities is not None else detect_entities(caption)
            if found_entities:
                message["caption_entities"] = found_entities
        return {"edited_message" if edited else "message": message}

    def _topic_creation(self, chat_dict: dict[str, Any], user: UserSpec, thread_id: int) -> dict[str, Any]:
        known = self._messages.get((chat_dict["id"], thread_id))
        if known and known.get("forum_topic_created"):
            return _without_reply(known)
        created = {
            "message_id": thread_id, "from": user.to_dict(), "chat": chat_dict, "date": int(time.time()) - 60,
            "message_thread_id": thread_id, "forum_topic_created": {"name": f"Topic {thread_id}",
                                                                    "icon_color": 7322096},
            "is_topic_message": True,
        }
        self._messages[(chat_dict["id"], thread_id)] = created
        self._threads.setdefault(chat_dict["id"], set()).add(thread_id)
        return dict(created)

    def _known_photo(self, file_id: str) -> dict[str, Any]:
        stored = self._files[file_id]
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_size": stored.size,
                "width": stored.meta.get("width", 800), "height": stored.meta.get("height", 600)}

    def _photo_sizes(self, data: bytes) -> list[dict[str, Any]]:
        """PhotoSizes as Telegram makes them: 90 and 320 px (and 800 px) previews, the largest last."""
        try:
            from PIL import Image

            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception:
            image = None
        if image is None:
            sizes = []
            for width, height in ((90, 68), (320, 240), (800, 600)):
                stored = self._store_file(data, path_hint="photos/file.jpg", meta={"width": width, "height": height})
                sizes.append(self._known_photo(stored.file_id))
            return sizes
        width, height = image.size
        sizes = []
        for side in (90, 320, 800):
            if max(width, height) > side:
                thumb = image.convert("RGB")
                thumb.thumbnail((side, side))
                buffer = io.BytesIO()
                thumb.save(buffer, "JPEG", quality=80)
                stored = self._store_file(buffer.getvalue(), path_hint="photos/file.jpg",
                                          meta={"width": thumb.width, "height": thumb.height})
                sizes.append(self._known_photo(stored.file_id))
        stored = self._store_file(data, path_hint="photos/file.jpg", meta={"width": width, "height": height})
        sizes.append(self._known_photo(stored.file_id))
        return sizes

    def _document_object(self, document: Any) -> dict[str, Any]:
        if isinstance(document, dict):
            return self._media_object(document, "documents/file", {})
        if isinstance(document, bytes):
            document = ("file.bin", document)
        name, data, *rest = document
        mime = rest[0] if rest else (mimetypes.guess_type(name)[0] or "application/octet-stream")
        stored = self._store_file(data, path_hint=f"documents/{name}")
        return {"file_name": name, "mime_type": mime, "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id, "file_size": stored.size}

    def _media_object(self, value: bytes | dict[str, Any], hint: str, defaults: dict[str, Any]) -> dict[str, Any]:
        media = {**defaults, **(value if isinstance(value, dict) else {"data": value})}
        data = media.pop("data", None)
        if data is not None:
            stored = self._store_file(data, size=media.get("file_size"), path_hint=hint)
            media.update(file_id=stored.file_id, file_unique_id=stored.file_unique_id, file_size=stored.size)
        return media

    def callback(self, chat: ChatSpec, user: UserSpec, bot_message_id: int, data: str) -> dict[str, Any]:
        """Build (not push) the ``callback_query`` update of a user pressing a button under a bot message.

        Raises ``ValueError`` when the message has no button with that ``callback_data``: Telegram clients
        can only send data that a current button carries.
        """
        message = self._find_bot_message(chat.id, bot_message_id)
        if message is None or message.deleted:
            raise ValueError(f"the bot has no message {bot_message_id} in chat {chat.id}")
        if not any(button.get("callback_data") == data for row in message.buttons for button in row):
            raise ValueError(f"message {bot_message_id} has no button with callback_data {data!r}")
        query_id = str(secrets.randbits(62))
        return {"callback_query": {
            "id": query_id, "from": user.to_dict(), "message": copy.deepcopy(message.raw),
            "chat_instance": str(-(abs(hash((chat.id, self.bot_id))) % 10**19)), "data": data,
        }}

    def load_payload(self, name: str, files: dict[str, bytes] | None = None, **overrides: Any) -> dict[str, Any]:
        """A recorded update from ``tests/payloads/telegram/<name>.json``, fresh and ready to push.

        It gets a new update_id, message_id (next in its chat) and date. File ids are placeholders
        (``"FILE_PHOTO_L"``): each is stored with the bytes ``files`` gives for it, or random bytes of
        the announced size (at most 64 KiB, while ``file_size`` stays as recorded), and replaced by a
        real-looking file_id; ``placeholders`` maps the last load's names to ids. ``overrides`` set
        fields of the message (or callback query); ``__`` reaches deeper: ``chat__id=-100123``.
        The recordings assume the default bot (id 123456789, @internvl_test_bot).
        """
        path = PAYLOADS / (name if name.endswith(".json") else f"{name}.json")
        update = json.loads(path.read_text(encoding="utf-8"))
        update["update_id"] = self._next_update_id
        self._next_update_id += 1
        files = files or {}
        self.placeholders = {}

        def replace(node: Any) -> None:
            if isinstance(node, dict):
                placeholder = node.get("file_id")
                if isinstance(placeholder, str) and placeholder.startswith("FILE_"):
                    if placeholder not in self.placeholders:
                        announced = int(node.get("file_size") or 1024)
                        data = files.get(placeholder)
                        if data is None:
                            data = secrets.token_bytes(min(announced, 64 * 1024))
                        folder = _payload_folder(node)
                        stored = self._store_file(data, size=announced if placeholder not in files else None,
                                                  path_hint=folder, meta={k: node[k] for k in ("width", "height")
                                                                          if k in node})
                        self.placeholders[placeholder] = stored.file_id
                    file_id = self.placeholders[placeholder]
                    stored = self._files[file_id]
                    node["file_id"] = file_id
                    node["file_unique_id"] = stored.file_unique_id
                    if placeholder in files:
                        node["file_size"] = stored.size
                for value in node.values():
                    replace(value)
            elif isinstance(node, list):
                for value in node:
                    replace(value)

        replace(update)
        inner_key = next(key for key in update if key != "update_id")
        inner = update[inner_key]
        now = int(time.time())
        if inner_key in _MESSAGE_KEYS:
            reply = inner.get("reply_to_message")
            if isinstance(reply, dict) and not reply.get("forum_topic_created"):
                # A replied-to message is older: it gets the earlier fresh id (a topic's creation
                # message keeps its id, which is the topic's message_thread_id).
                reply["message_id"] = self._take_message_id(inner["chat"]["id"])
                reply["date"] = now - 60
            inner["message_id"] = self._take_message_id(inner["chat"]["id"])
            inner["date"] = now
            if "edit_date" in inner:
                inner["edit_date"] = now
        elif inner_key == "callback_query":
            inner["id"] = str(secrets.randbits(62))
            if isinstance(inner.get("message"), dict):
                inner["message"]["message_id"] = self._take_message_id(inner["message"]["chat"]["id"])
                inner["message"]["date"] = now - 30
        for key, value in overrides.items():
            target = inner
            *parents, last = key.split("__")
            for part in parents:
                target = target.setdefault(part, {})
            target[last] = value
        return update

    # --------------------------------------------------------------------------------- what users see

    def chat(self, chat_id: int) -> list[BotMessage]:
        """The bot's messages in a chat, in order (deleted ones stay, flagged ``deleted``)."""
        return list(self._bot_messages.get(chat_id, []))

    def texts(self, chat_id: int) -> list[str]:
        """The current text (or caption) of each message the bot has in the chat and did not delete."""
        return [m.text if m.text is not None else (m.caption or "") for m in self.chat(chat_id) if not m.deleted]

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method (case as in the Bot API docs)."""
        return [call for call in self.calls if call.method == method]

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates not yet confirmed (getUpdates offset) or delivered (webhook)."""
        return list(self._pending)

    # --------------------------------------------------------------------------------- faults

    def fail(self, method: str, status: int = 500, *, times: int = 1, retry_after: int | None = None,
             description: str | None = None) -> None:
        """The next ``times`` calls of ``method`` (``"*"``: any API method; ``"download"``: file
        downloads) get this error instead of an answer. 429 carries ``parameters.retry_after``
        (default 1). 502 and 504 without a description answer nginx's HTML page, as Telegram's front does."""
        self._faults.append(_Fault(method, status, times, retry_after, description))

    def delay(self, method: str, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` answers of ``method`` are late by ``seconds``. The call takes effect first
        (a message is sent even if the client gives up waiting), as with a slow network."""
        self._delays.append(_Delay(method, seconds, times))

    def heal(self) -> None:
        """Every fault and delay not yet served is dropped: the API answers normally again."""
        self._faults.clear()
        self._delays.clear()

    def duplicate_next(self, times: int = 1) -> None:
        """The next ``times`` updates are delivered twice, as Telegram does when a delivery's answer got
        lost: by webhook, POSTed again after a 2xx; by getUpdates, returned once more after the offset
        confirmed it (same update_id)."""
        self._duplicates += times

    def redeliver(self, update: dict[str, Any]) -> None:
        """Return an update (with its update_id) from getUpdates once more, whatever the offset, as Telegram
        does when a confirmation was lost."""
        self._resend.append(copy.deepcopy(update))
        self._bump()

    def _take(self, items: list[Any], method: str) -> Any:
        for item in items:
            if item.method == method or (item.method == "*" and method != "download"):
                item.times -= 1
                if item.times <= 0:
                    items.remove(item)
                return item
        return None

    def _fault_error(self, fault: _Fault) -> _ApiError:
        if fault.status == 429:
            retry = fault.retry_after or 1
            return _ApiError(429, fault.description or f"Too Many Requests: retry after {retry}", retry)
        if fault.description is None and fault.status in (502, 504):
            return _ApiError(fault.status, _DESCRIPTIONS[fault.status], html=True)
        return _ApiError(fault.status, fault.description or _DESCRIPTIONS.get(fault.status, "Error"),
                         fault.retry_after)

    # --------------------------------------------------------------------------------- flood control

    def _flood_key(self, method: str) -> str | None:
        if not self.flood_control:
            return None
        if method == "sendMessageDraft":
            return "draft" if self.limits.drafts_per_second else None
        return "message" if method in _COUNTED else None

    def _bucket(self, key: tuple[str, int], rate: float, burst: float, now: float) -> float:
        tokens, last = self._buckets.get(key, (burst, now))
        return min(burst, tokens + (now - last) * rate)

    def _window(self, key: Any, span: float, now: float) -> deque[float]:
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - span:
            window.popleft()
        return window

    def _flood_check(self, method: str, params: dict[str, Any]) -> None:
        kind = self._flood_key(method)
        if kind is None:
            return
        chat_id = params.get("chat_id")
        now = self._clock()
        limits = self.limits
        waits = [0.0]
        if kind == "draft":
            rate = float(limits.drafts_per_second or 1)
            tokens = self._bucket(("draft", chat_id), rate, max(1.0, rate), now)
            waits.append(0.0 if tokens >= 1 else (1 - tokens) / rate)
        else:
            tokens = self._bucket(("chat", chat_id), limits.per_chat_per_second, limits.per_chat_burst, now)
            waits.append(0.0 if tokens >= 1 else (1 - tokens) / limits.per_chat_per_second)
            if self._chats.get(chat_id, {}).get("type") in ("group", "supergroup"):
                window = self._window(("group", chat_id), 60, now)
                if len(window) >= limits.per_group_per_minute:
                    waits.append(window[0] + 60 - now)
            window = self._window("global", 1, now)
            if len(window) >= limits.global_per_second:
                waits.append(window[0] + 1 - now)
        wait = max(waits)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise _ApiError(429, f"Too Many Requests: retry after {retry}", retry)

    def _flood_take(self, method: str, params: dict[str, Any]) -> None:
        kind = self._flood_key(method)
        if kind is None:
            return
        chat_id = params.get("chat_id")
        now = self._clock()
        if kind == "draft":
            rate = float(self.limits.drafts_per_second or 1)
            self._buckets[("draft", chat_id)] = (self._bucket(("draft", chat_id), rate, max(1.0, rate), now) - 1, now)
            return
        limits = self.limits
        tokens = self._bucket(("chat", chat_id), limits.per_chat_per_second, limits.per_chat_burst, now)
        self._buckets[("chat", chat_id)] = (tokens - 1, now)
        if self._chats.get(chat_id, {}).get("type") in ("group", "supergroup"):
            self._window(("group", chat_id), 60, now).append(now)
        self._window("global", 1, now).append(now)

    # --------------------------------------------------------------------------------- HTTP

    async def _read_params(self, request: Request) -> dict[str, Any]:
        raw: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and ctype == "application/json":
            try:
                data = json.loads(body)
            except ValueError:
                raise _bad("can't parse JSON object") from None
            if not isinstance(data, dict):
                raise _bad("can't parse JSON object")
            raw.update(data)
        elif body and ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            async with request.form(max_files=100, max_fields=1000) as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        raw[key] = Upload(value.filename or "", value.content_type or "", await value.read())
                    else:
                        raw[key] = value
        return {key: _decode(key, value) for key, value in raw.items()}

    async def _api(self, request: Request) -> Response:
        token = request.path_params["token"]
        method = request.path_params["method"]
        params: dict[str, Any] = {}
        delay = None
        try:
            if not _TOKEN_RE.fullmatch(token):
                raise _ApiError(404, "Not Found")
            if token != self.token:
                raise _ApiError(401, "Unauthorized")
            found = self._handlers.get(method.lower())
            if found is None:
                raise _ApiError(404, "Not Found")
            method, handler = found
            params = await self._read_params(request)
            delay = self._take(self._delays, method)
            fault = self._take(self._faults, method)
            if fault is not None:
                raise self._fault_error(fault)
            self._flood_check(method, params)
            result = await handler(params, request)
            self._flood_take(method, params)
            body: dict[str, Any] = {"ok": True, "result": result}
            if isinstance(result, _Described):
                body = {"ok": True, "result": result.result, "description": result.description}
            status = 200
        except _ClientGone:
            self._record(method, params, 499, None)
            return Response(status_code=499)
        except _ApiError as err:
            status, body = err.status, err.body()
            if err.html:
                if delay:
                    await asyncio.sleep(delay.seconds)
                self._record(method, params, status, None)
                phrase = _DESCRIPTIONS[status]
                return Response(_NGINX_PAGE.format(status=status, phrase=phrase), status, media_type="text/html")
        if delay:
            await asyncio.sleep(delay.seconds)
        self._record(method, params, status, body)
        return JSONResponse(body, status)

    def _record(self, method: str, params: dict[str, Any], status: int, body: Any) -> None:
        if status == 429:
            self.served_429 += 1
        self.calls.append(Call(method, params, status, self._clock(), body))
        self._bump()

    async def _download(self, request: Request) -> Response:
        token = request.path_params["token"]
        path = request.path_params["path"]
        params = {"file_path": path}
        fault = self._take(self._faults, "download")
        stored = self._files_by_path.get(path)
        if fault is not None:
            err = self._fault_error(fault)
            self._record("download", params, err.status, err.body())
            return JSONResponse(err.body(), err.status)
        if token != self.token or stored is None or stored.size > MAX_DOWNLOAD_SIZE:
            body = {"ok": False, "error_code": 404, "description": "Not Found"}
            self._record("download", params, 404, body)
            return JSONResponse(body, 404)
        self._record("download", params, 200, None)
        return Response(stored.data, media_type="application/octet-stream")

    # --------------------------------------------------------------------------------- helpers

    def _me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": self.first_name, "username": self.username}

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        if chat_id in (None, ""):
            raise _bad("chat_id is empty")
        chat = self._chats.get(chat_id)
        if chat is None:
            raise _bad("chat not found")
        if chat_id in self._blocked:
            raise _ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def _find_bot_message(self, chat_id: int, message_id: int) -> BotMessage | None:
        return next((m for m in self._bot_messages.get(chat_id, []) if m.message_id == message_id), None)

    def _thread(self, chat: dict[str, Any], params: dict[str, Any]) -> int | None:
        thread = params.get("message_thread_id")
        if not thread or not chat.get("is_forum"):
            return None
        if thread not in self._threads.get(chat["id"], set()):
            raise _bad("message thread not found")
        return int(thread)

    def _reply(self, chat: dict[str, Any], params: dict[str, Any],
               thread: int | None) -> tuple[dict[str, Any] | None, int | None]:
        reply = params.get("reply_parameters")
        if reply is None and params.get("reply_to_message_id"):
            reply = {"message_id": params["reply_to_message_id"],
                     "allow_sending_without_reply": params.get("allow_sending_without_reply", False)}
        if reply is None:
            return None, thread
        if not isinstance(reply, dict) or not isinstance(reply.get("message_id"), int):
            raise _bad("can't parse reply parameters JSON object")
        target = self._messages.get((chat["id"], reply["message_id"]))
        if target is None:
            if reply.get("allow_sending_without_reply"):
                return None, thread
            raise _bad("message to be replied not found")
        if thread is None and target.get("is_topic_message"):
            thread = target.get("message_thread_id")
        return _without_reply(target), thread

    def _markup(self, value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        if "inline_keyboard" not in value:
            if any(key in value for key in ("keyboard", "remove_keyboard", "force_reply")):
                return None
            raise _bad("can't parse reply keyboard markup JSON object")
        rows = value["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _bad('can\'t parse inline keyboard button: Field "inline_keyboard" must be of type Array')
        for row in rows:
            for button in row:
                if not isinstance(button, dict) or not isinstance(button.get("text"), str):
                    raise _bad('can\'t parse inline keyboard button: Field "text" must be of type String')
                if not _BUTTON_ACTIONS & button.keys():
                    raise _bad("can't parse inline keyboard button: Text buttons are unallowed in the inline "
                               "keyboard")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= 64:
                    raise _bad("BUTTON_DATA_INVALID")
                url = button.get("url")
                if url is not None and urlsplit(str(url)).scheme not in ("http", "https", "tg"):
                    raise _bad("BUTTON_URL_INVALID")
        return {"inline_keyboard": [[dict(button) for button in row] for row in rows if row]}

    def _new_bot_message(self, chat: dict[str, Any], thread: int | None, reply: dict[str, Any] | None,
                         kind: str, fields: dict[str, Any], markup: dict[str, Any] | None,
                         **attrs: Any) -> BotMessage:
        chat_id = chat["id"]
        mid = self._take_message_id(chat_id)
        raw: dict[str, Any] = {"message_id": mid, "from": self._me(), "chat": dict(chat), "date": int(time.time())}
        if thread is not None:
            raw["message_thread_id"] = thread
            raw["is_topic_message"] = True
        if reply is not None:
            raw["reply_to_message"] = reply
        elif thread is not None and (chat_id, thread) in self._messages:
            raw["reply_to_message"] = _without_reply(self._messages[(chat_id, thread)])
        raw.update({key: value for key, value in fields.items() if value not in (None, [], "")})
        if markup is not None:
            raw["reply_markup"] = markup
        message = BotMessage(message_id=mid, chat_id=chat_id, kind=kind, message_thread_id=thread,
                             reply_to_message_id=reply["message_id"] if reply else None, reply_markup=markup,
                             raw=raw, **attrs)
        self._bot_messages.setdefault(chat_id, []).append(message)
        self._messages[(chat_id, mid)] = raw
        return message

    def _editable(self, params: dict[str, Any]) -> BotMessage:
        if params.get("inline_message_id"):
            raise _bad("MESSAGE_ID_INVALID")
        chat = self._chat(params)
        if not params.get("message_id"):
            raise _bad("message identifier is not specified")
        message = self._find_bot_message(chat["id"], params["message_id"])
        if message is None or message.deleted:
            if (chat["id"], params["message_id"]) in self._messages:
                raise _bad("message can't be edited")
            raise _bad("message to edit not found")
        return message

    def _resolve_file(self, params: dict[str, Any], field_name: str, folder: str) -> tuple[_StoredFile, str, str]:
        value = params.get(field_name)
        if isinstance(value, str) and value.startswith("attach://"):
            value = params.get(value[len("attach://"):])
        if value is None or value == "":
            raise _bad(f"there is no {field_name} in the request")
        if isinstance(value, Upload):
            if not value.data:
                raise _bad("file must be non-empty")
            name = value.filename or field_name
            mime = value.content_type
            if not mime or mime == "application/octet-stream":
                mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            return self._store_file(value.data, path_hint=f"{folder}/{name}"), name, mime
        value = str(value)
        if value in self._files:
            stored = self._files[value]
            return stored, stored.meta.get("file_name", stored.path.rpartition("/")[2]), \
                stored.meta.get("mime_type", "application/octet-stream")
        if value.startswith(("http://", "https://")):
            raise _bad("failed to get HTTP URL content")
        raise _bad("wrong file identifier/HTTP URL specified")

    # --------------------------------------------------------------------------------- methods

    async def _get_me(self, params: dict[str, Any], request: Request) -> Any:
        return {**self._me(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False, "can_connect_to_business": False, "has_main_web_app": False,
                "has_topics_enabled": False, "allows_users_to_create_topics": False}

    async def _get_updates(self, params: dict[str, Any], request: Request) -> Any:
        if self.webhook is not None:
            raise _ApiError(409, "Conflict: can't use getUpdates method while webhook is active; use "
                                 "deleteWebhook to delete the webhook first")
        self._poll_generation += 1
        generation = self._poll_generation
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = max(0.0, float(params.get("timeout") or 0))
        if isinstance(params.get("allowed_updates"), list):
            self._allowed_updates = [str(kind) for kind in params["allowed_updates"]]
        self._confirm(params.get("offset"))
        if timeout and not (self._pending or self._resend):
            await self._long_poll(request, timeout, generation)
        if self.webhook is not None:
            raise _ApiError(409, "Conflict: terminated by setWebhook request")
        if generation != self._poll_generation and not self._closing:
            raise _ApiError(409, "Conflict: terminated by other getUpdates request; make sure that only one bot "
                                 "instance is running")
        result = (self._resend + self._pending)[:limit]
        self._resend = [u for u in self._resend if u not in result]
        return copy.deepcopy(result)

    async def _long_poll(self, request: Request, seconds: float, generation: int) -> None:
        gone = asyncio.ensure_future(_disconnected(request))
        waiting = asyncio.ensure_future(self._until(
            lambda: bool(self._pending or self._resend) or self._closing or self.webhook is not None
            or generation != self._poll_generation, seconds))
        self.polling += 1
        self._bump()
        try:
            done, _ = await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                waiting.cancel()
                raise _ClientGone
        finally:
            gone.cancel()
            waiting.cancel()
            self.polling -= 1

    def _confirm(self, offset: int | None) -> None:
        if not offset:
            return
        if offset > 0:
            dropped = [u for u in self._pending if u["update_id"] < offset]
        else:
            dropped = self._pending[:max(0, len(self._pending) + offset)]
        self._pending = [u for u in self._pending if u not in dropped]
        for update in dropped:
            if self._duplicates > 0 and update["update_id"] not in self._duplicated:
                self._duplicates -= 1
                self._duplicated.add(update["update_id"])
                self._resend.append(update)

    async def _set_webhook(self, params: dict[str, Any], request: Request) -> Any:
        url = str(params.get("url") or "")
        if not url:
            return await self._delete_webhook(params, request)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_RE.fullmatch(str(secret)):
            raise _bad("secret token contains unallowed characters")
        max_connections = int(params.get("max_connections") or 40)
        if not 1 <= max_connections <= 100:
            raise _bad("bad webhook: max_connections must be between 1 and 100")
        if isinstance(params.get("allowed_updates"), list):
            self._allowed_updates = [str(kind) for kind in params["allowed_updates"]]
        if params.get("drop_pending_updates"):
            self._pending.clear()
            self._resend.clear()
        already = self.webhook is not None and self.webhook["url"] == url
        self.webhook = {"url": url, "secret_token": secret, "allowed_updates": params.get("allowed_updates"),
                        "max_connections": max_connections, "ip_address": "127.0.0.1",
                        "has_custom_certificate": False, "last_error_date": None, "last_error_message": None}
        return _Described(True, "Webhook is already set" if already else "Webhook was set")

    async def _delete_webhook(self, params: dict[str, Any], request: Request) -> Any:
        if params.get("drop_pending_updates"):
            self._pending.clear()
            self._resend.clear()
        was_set, self.webhook = self.webhook is not None, None
        return _Described(True, "Webhook was deleted" if was_set else "Webhook is already deleted")

    async def _get_webhook_info(self, params: dict[str, Any], request: Request) -> Any:
        info: dict[str, Any] = {"url": "", "has_custom_certificate": False, "pending_update_count": len(self._pending)}
        if self.webhook is not None:
            info.update(url=self.webhook["url"], max_connections=self.webhook["max_connections"],
                        ip_address=self.webhook["ip_address"])
            if self.webhook["allowed_updates"] is not None:
                info["allowed_updates"] = self.webhook["allowed_updates"]
            if self.webhook["last_error_date"]:
                info["last_error_date"] = self.webhook["last_error_date"]
                info["last_error_message"] = self.webhook["last_error_message"]
        return info

    def _command_key(self, params: dict[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        if not isinstance(scope, dict) or scope.get("type") not in _SCOPES:
            raise _bad("can't parse BotCommandScope JSON object")
        if scope["type"] in ("chat", "chat_administrators", "chat_member") and "chat_id" not in scope:
            raise _bad("can't parse BotCommandScope JSON object")
        language = str(params.get("language_code") or "")
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise _bad("invalid language code specified")
        return json.dumps(scope, sort_keys=True, separators=(",", ":")), language

    async def _set_my_commands(self, params: dict[str, Any], request: Request) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad("can't parse commands JSON object")
        for command in commands:
            if not isinstance(command, dict) or not _COMMAND_RE.fullmatch(str(command.get("command", ""))):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
        key = self._command_key(params)
        if commands:
            self.commands[key] = [{"command": c["command"], "description": c["description"]} for c in commands]
        else:
            self.commands.pop(key, None)
        return True

    async def _get_my_commands(self, params: dict[str, Any], request: Request) -> Any:
        return copy.deepcopy(self.commands.get(self._command_key(params), []))

    async def _delete_my_commands(self, params: dict[str, Any], request: Request) -> Any:
        self.commands.pop(self._command_key(params), None)
        return True

    async def _send_message(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        raw_text = params.get("text")
        if raw_text in (None, ""):
            raise _bad("message text is empty")
        text, entities = format_text(raw_text, params.get("parse_mode"), params.get("entities"))
        if not text:
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        thread = self._thread(chat, params)
        reply, thread = self._reply(chat, params, thread)
        markup = self._markup(params.get("reply_markup"))
        fields: dict[str, Any] = {"text": text, "entities": entities}
        if isinstance(params.get("link_preview_options"), dict):
            fields["link_preview_options"] = params["link_preview_options"]
        message = self._new_bot_message(chat, thread, reply, "text", fields, markup, text=text, entities=entities,
                                        parse_mode=params.get("parse_mode"), history=[text],
                                        sent_text=str(raw_text))
        return copy.deepcopy(message.raw)

    async def _edit_message_text(self, params: dict[str, Any], request: Request) -> Any:
        message = self._editable(params)
        if message.kind != "text":
            raise _bad("there is no text in the message to edit")
        raw_text = params.get("text")
        if raw_text in (None, ""):
            raise _bad("message text is empty")
        text, entities = format_text(raw_text, params.get("parse_mode"), params.get("entities"))
        if not text:
            raise _bad("message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        # Without reply_markup an edit removes the inline keyboard, as on Telegram.
        markup = self._markup(params.get("reply_markup"))
        if text == message.text and entities == message.entities and markup == message.reply_markup:
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        message.text, message.entities, message.reply_markup = text, entities, markup
        message.parse_mode, message.sent_text = params.get("parse_mode"), str(raw_text)
        message.history.append(text)
        self._edited(message, text=text, entities=entities)
        return copy.deepcopy(message.raw)

    async def _edit_message_caption(self, params: dict[str, Any], request: Request) -> Any:
        message = self._editable(params)
        if message.kind == "text":
            raise _bad("there is no caption in the message to edit")
        caption, entities = format_text(params.get("caption"), params.get("parse_mode"),
                                        params.get("caption_entities"))
        if u16len(caption) > MAX_CAPTION_LENGTH:  # Telegram counts UTF-16 code units
            raise _bad("message caption is too long")
        markup = self._markup(params.get("reply_markup"))
        if caption == (message.caption or "") and markup == message.reply_markup and \
                entities == message.raw.get("caption_entities", []):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        message.caption, message.reply_markup = caption, markup
        message.history.append(caption)
        self._edited(message, caption=caption, caption_entities=entities)
        return copy.deepcopy(message.raw)

    async def _edit_message_reply_markup(self, params: dict[str, Any], request: Request) -> Any:
        message = self._editable(params)
        markup = self._markup(params.get("reply_markup"))
        if markup == message.reply_markup:
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        message.reply_markup = markup
        self._edited(message)
        return copy.deepcopy(message.raw)

    def _edited(self, message: BotMessage, **fields: Any) -> None:
        message.edits += 1
        raw = message.raw
        for key, value in fields.items():
            if value in (None, [], ""):
                raw.pop(key, None)
            else:
                raw[key] = value
        if message.reply_markup is None:
            raw.pop("reply_markup", None)
        else:
            raw["reply_markup"] = message.reply_markup
        raw["edit_date"] = int(time.time())

    async def _delete_message(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        key = (chat["id"], params.get("message_id"))
        if key not in self._messages:
            raise _bad("message to delete not found")
        del self._messages[key]
        message = self._find_bot_message(chat["id"], key[1])  # type: ignore[arg-type]
        if message is not None:
            message.deleted = True
        return True

    async def _send_message_draft(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        if chat.get("type") != "private":
            raise _ApiError(400, DRAFT_NOT_PRIVATE)
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise _ApiError(400, DRAFT_ID_INVALID)
        text, entities = format_text(params.get("text"), params.get("parse_mode"), params.get("entities"))
        if len(text) > MAX_TEXT_LENGTH:
            raise _bad("message is too long")
        self.drafts.append({"chat_id": chat["id"], "draft_id": draft_id, "text": text, "entities": entities,
                            "message_thread_id": params.get("message_thread_id"),
                            "parse_mode": params.get("parse_mode"), "time": self._clock()})
        return True

    async def _send_chat_action(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        action = params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self.chat_actions.append({"chat_id": chat["id"], "action": action,
                                  "message_thread_id": params.get("message_thread_id"), "time": self._clock()})
        return True

    def _caption(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        caption, entities = format_text(params.get("caption"), params.get("parse_mode"),
                                        params.get("caption_entities"))
        if u16len(caption) > MAX_CAPTION_LENGTH:  # Telegram counts UTF-16 code units
            raise _bad("message caption is too long")
        return caption, entities

    async def _send_document(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        caption, entities = self._caption(params)
        thread = self._thread(chat, params)
        reply, thread = self._reply(chat, params, thread)
        markup = self._markup(params.get("reply_markup"))
        stored, name, mime = self._resolve_file(params, "document", "documents")
        stored.meta.update(file_name=name, mime_type=mime)
        document = {"file_name": name, "mime_type": mime, "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id, "file_size": stored.size}
        message = self._new_bot_message(
            chat, thread, reply, "document", {"document": document, "caption": caption, "caption_entities": entities},
            markup, caption=caption or None, document=SentDocument(name, stored.data, mime),
            parse_mode=params.get("parse_mode"), history=[caption])
        return copy.deepcopy(message.raw)

    async def _send_photo(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        caption, entities = self._caption(params)
        thread = self._thread(chat, params)
        reply, thread = self._reply(chat, params, thread)
        markup = self._markup(params.get("reply_markup"))
        stored, name, mime = self._resolve_file(params, "photo", "photos")
        try:
            from PIL import Image

            Image.open(io.BytesIO(stored.data)).load()
        except Exception:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        sizes = self._photo_sizes(stored.data)
        message = self._new_bot_message(
            chat, thread, reply, "photo", {"photo": sizes, "caption": caption, "caption_entities": entities},
            markup, caption=caption or None, photo=SentDocument(name, stored.data, mime),
            parse_mode=params.get("parse_mode"), history=[caption])
        return copy.deepcopy(message.raw)

    async def _get_file(self, params: dict[str, Any], request: Request) -> Any:
        stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        if stored.size > MAX_DOWNLOAD_SIZE:
            raise _bad("file is too big")
        return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_size": stored.size,
                "file_path": stored.path}

    async def _answer_callback_query(self, params: dict[str, Any], request: Request) -> Any:
        query_id = str(params.get("callback_query_id") or "")
        if query_id not in self._open_callbacks:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        self._open_callbacks.discard(query_id)
        self.answered_callbacks.append({"callback_query_id": query_id, "text": text,
                                        "show_alert": bool(params.get("show_alert")), "url": params.get("url"),
                                        "cache_time": params.get("cache_time")})
        return True

    async def _get_chat(self, params: dict[str, Any], request: Request) -> Any:
        chat = self._chat(params)
        return {**chat, "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False, "unique_gifts": False,
                                        "premium_subscription": False, "gifts_from_channels": False}}

    # --------------------------------------------------------------------------------- webhook

    async def _webhook_sender(self) -> None:
        """Deliver pending updates to the webhook one at a time, in order, retrying until a 2xx."""
        assert self._client is not None
        while True:
            await self._until(lambda: self._closing or (self.webhook is not None and bool(self._pending)))
            if self._closing:
                return
            hook = self.webhook
            assert hook is not None
            update = self._pending[0]
            headers = {"Content-Type": "application/json"}
            if hook["secret_token"]:
                headers["X-Telegram-Bot-Api-Secret-Token"] = str(hook["secret_token"])
            status: int | None = None
            error = ""
            try:
                response = await self._client.post(hook["url"], content=json.dumps(update).encode(),
                                                   headers=headers, timeout=self.webhook_timeout)
                status = response.status_code
                if not 200 <= status < 300:
                    error = f"Wrong response from the webhook: {status} {response.reason_phrase}"
            except httpx.TimeoutException:
                error = "Read timeout expired"
            except httpx.HTTPError as exc:
                error = "Connection refused" if isinstance(exc, httpx.ConnectError) else f"{type(exc).__name__}"
            self.webhook_attempts.append(WebhookAttempt(update["update_id"], status, error, self._clock()))
            if not error:
                if self._duplicates > 0 and update["update_id"] not in self._duplicated:
                    self._duplicates -= 1
                    self._duplicated.add(update["update_id"])
                elif self._pending and self._pending[0] is update:
                    self._pending.pop(0)
                self._bump()
                continue
            if self.webhook is hook:
                hook["last_error_date"] = int(time.time())
                hook["last_error_message"] = error
            self._bump()
            await self._until(lambda: self._closing, self.webhook_retry_delay)


@dataclass(frozen=True, slots=True)
class _Described:
    result: Any
    description: str


async def _disconnected(request: Request) -> None:
    """Return when the client goes away (the body has been read, so only a disconnect can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _without_reply(message: dict[str, Any]) -> dict[str, Any]:
    """A message as it appears inside reply_to_message: Telegram never nests a further reply there."""
    return {key: value for key, value in message.items() if key != "reply_to_message"}


def _payload_folder(node: dict[str, Any]) -> str:
    mime = str(node.get("mime_type", ""))
    if "width" in node and "duration" not in node and "is_animated" not in node:
        return "photos/file.jpg"
    if "is_animated" in node:
        return "stickers/file.webp"
    if "length" in node:
        return "video_notes/file.mp4"
    if mime.startswith("audio/ogg"):
        return "voice/file.oga"
    if mime.startswith("video/"):
        return f"videos/{node.get('file_name', 'file.mp4')}"
    return f"documents/{node.get('file_name', 'file')}"


def _decode(key: str, value: Any) -> Any:
    """Decode a parameter as Telegram does by its declared type (form fields are all strings)."""
    if isinstance(value, Upload):
        return value
    if key in _JSON_FIELDS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _bad(f"can't parse {key} JSON object") from None
    if key in _INT_FIELDS and isinstance(value, str | float):
        try:
            return int(value)
        except ValueError:
            raise _bad(f"invalid {key} specified") from None
    if key == "timeout" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _bad("invalid timeout specified") from None
    if key in _BOOL_FIELDS and isinstance(value, str):
        return value.lower() in ("true", "1")
    if key in ("chat_id", "from_chat_id") and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value
