"""The framework's own value types: what travels between adapters and the core.

Adapters translate platform events into :class:`IncomingMessage` and render :data:`ReplyEvent`
values back; nothing platform-specific travels below ``adapters/`` except the opaque ``raw`` payload
and the ``route`` an adapter stores with a message to answer it after a restart. The seams (the
Protocols adapters and stores implement) are in :mod:`bot.seams`, the in-memory doubles in
:mod:`bot.testing`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal

#: The empty route (shared: most messages have none).
NO_ROUTE: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Identifies one conversation: platform + chat + thread (thread is empty when not threaded)."""

    platform: str
    chat: str
    thread: str = ""

    def __str__(self) -> str:
        base = f"{self.platform}:{self.chat}"
        return f"{base}:{self.thread}" if self.thread else base

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        """Parse ``platform:chat[:thread]`` as printed by ``str()``."""
        parts = text.split(":", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ValueError(f"not a conversation key: {text!r} (expected platform:chat[:thread])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message. ``is_bot``: another bot (the core never answers bots)."""

    id: str
    name: str = ""
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a message. The bytes are fetched lazily through the adapter's fetcher.

    ``ref`` is the adapter's own handle (a Telegram file id, a Slack ``url_private``, a path). The
    store identifies the content by its SHA-256, which it computes itself once the bytes are fetched.
    """

    ref: str
    filename: str = ""
    mime: str = ""
    size: int | None = None


_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """``text`` without control characters (a model's \\x08 or \\x1b reaching a terminal or a page); newlines and
    tabs stay, a carriage return goes."""
    return _CONTROLS.sub("", text)


_CUT = re.compile(r"\n\[… cut: (\d+) characters in all\]\Z")


def cut_text(text: str, limit: int) -> str:
    """``text`` kept to ``limit`` characters, with a marker saying how long it was."""
    return f"{text[:limit]}\n[… cut: {len(text)} characters in all]"


def was_cut(text: str) -> int:
    """The original length of a text :func:`cut_text` shortened; 0 when it was not cut."""
    found = _CUT.search(text)
    return int(found.group(1)) if found else 0


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message from a user, whatever the platform.

    ``route`` is what the adapter needs, besides the key, to answer in the right place after a restart
    (a Slack team id, a Telegram chat type, a helpdesk account id): short strings, stored with the message
    and handed back in :class:`SinkContext`.
    """

    key: ConversationKey
    sender: Sender
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    locale: str | None = None
    event_id: str | None = None
    message_id: str | None = None
    is_direct: bool = True
    route: Mapping[str, str] = field(default_factory=lambda: NO_ROUTE)
    raw: Any = field(default=None, compare=False, repr=False)

    @property
    def is_threaded(self) -> bool:
        return bool(self.key.thread)


# ---------------------------------------------------------------------------------------------
# Reply events: what the core sends back to an adapter, in order.


@dataclass(frozen=True, slots=True)
class Status:
    """Transient state to show (typing indicator, "reading the image...")."""

    kind: Literal["typing", "progress"] = "typing"
    text: str = ""


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of a streamed answer. Several engine chunks may arrive coalesced into one."""

    text: str


Outcome = Literal["done", "interrupted", "failed"]


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """The end of a streamed answer; ``text`` is the whole of it (what the user should finally see).

    ``outcome``: ``done``; ``interrupted`` (``/reset``, shutdown: ``text`` ends with a "(stopped)" mark);
    ``failed`` (the model failed mid-answer: ``text`` is the partial answer, and a :class:`Notice` of kind
    ``error`` follows on the same sink). An ``interrupted`` answer with no text (cancelled before its first
    text) is :attr:`silent`: the sink shows nothing and only ends what it started (typing, a placeholder).
    """

    text: str
    outcome: Outcome = "done"

    @property
    def interrupted(self) -> bool:
        return self.outcome != "done"

    @property
    def silent(self) -> bool:
        """Stopped before any text: nothing to show; end typing and remove any placeholder."""
        return self.outcome == "interrupted" and not self.text


@dataclass(frozen=True, slots=True)
class Notice:
    """A complete, standalone message: a command's answer, an error, a note about the context."""

    text: str
    kind: Literal["info", "error", "command"] = "info"
    author: str = ""  # a person's name when a human operator wrote it (handoff)


HandoffState = Literal["requested", "already", "returned", "not_active", "taken", "unavailable"]


@dataclass(frozen=True, slots=True)
class HandoffUpdate:
    """The conversation moved between the assistant and a person. ``mode`` is where it is now; ``text``
    tells the user (already localised); platforms with their own handoff (a helpdesk's "open" status)
    act on ``state``."""

    state: HandoffState
    mode: Literal["bot", "human"]
    text: str
    by: str = ""
    #: why a person was asked for: ``user`` (/human, "talk to a person"), ``policy`` (a keyword of the
    #: persona's policy), ``model`` (the model said it cannot help), ``operator`` (an operator took over)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FileReply:
    """A file sent back to the user (a CSV or JSON export)."""

    filename: str
    mime: str
    data: bytes = field(repr=False)
    caption: str = ""


ReplyEvent = Status | TextChunk | AnswerDone | Notice | HandoffUpdate | FileReply

#: What :meth:`ReplySink.emit` may return: the platform id(s) of the message(s) it created.
PlatformIds = str | Sequence[str] | None


class AlreadySent(tuple[str, ...]):
    """What a sink may return for a reply it found already on the platform (an earlier attempt arrived, as the
    platform itself told the bot) without asking the platform anything: delivered, but no sign that the
    platform answers again (the outbox goes on probing it)."""

    __slots__ = ()


def platform_ids(value: PlatformIds) -> tuple[str, ...]:
    """Normalise what a sink returned to a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value if v)


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What an adapter gets to build the sink of one turn.

    ``reply_to``: the platform id of the user's message being answered (None for an operator's message).
    ``message_id``: its id in the store. ``previous``: platform messages a previous run of this turn left
    (the process was killed mid-answer): the sink completes or replaces them, never leaves them beside a
    second answer. ``record``: the sink calls it with the ids of the platform messages it has created so
    far, as soon as it creates one, so a restart can find them. ``route``: the adapter's own routing data
    stored with the message. ``language``: the language of this turn's answer.
    """

    key: ConversationKey
    reply_to: str | None = None
    message_id: int | None = None
    previous: tuple[str, ...] = ()
    record: Callable[[Sequence[str]], Awaitable[None]] | None = None
    route: Mapping[str, str] = field(default_factory=lambda: NO_ROUTE)
    language: str = "en"
    #: for an event outside any turn (an operator's reply, a notice): its own row in the store, the same
    #: when the outbox sends it again (a platform that recognises repeats keys on it)
    reply_row: int | None = None
    #: the outbox sends this event again after a send that failed: a platform whose API can find an earlier
    #: copy (the first send may have arrived although its answer did not) looks before posting
    resend: bool = False

    async def remember(self, ids: Sequence[str]) -> None:
        """Record the platform messages created so far (no-op when nobody listens)."""
        if self.record is not None:
            await self.record(tuple(ids))


@dataclass(frozen=True, slots=True)
class HandoffEvent:
    """``requested``: the user asked for a person; ``message``: the user wrote while waiting;
    ``taken``: an operator took the conversation over from the bot (``by`` is who);
    ``returned``: the conversation is back with the bot (``by`` is "user" or the operator's name)."""

    kind: Literal["requested", "message", "taken", "returned"]
    conversation: str
    platform: str
    language: str
    text: str = ""
    user: str = ""
    by: str = ""
    transcript: list[dict[str, str]] = field(default_factory=list)
    reason: str = ""  # requested: "user", "policy: <keyword>", "model"
    at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()
