"""The framework's own value types and the seams between adapters and the core.

Adapters translate platform events into :class:`IncomingMessage` and render :data:`ReplyEvent`
values back; nothing platform-specific travels below ``adapters/`` except the opaque ``raw`` payload
and the ``route`` an adapter stores with a message to answer it after a restart.
Each seam is a small :class:`typing.Protocol` with a real in-memory implementation in this module,
which doubles as the test double.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

from bot.errors import AttachmentUnavailable, FileTooLarge, default_may_have_arrived, default_retry_after

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


def platform_ids(value: PlatformIds) -> tuple[str, ...]:
    """Normalise what a sink returned to a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value if v)


@runtime_checkable
class ReplySink(Protocol):
    """Receives the reply events of one turn, in order, and renders them on the platform.

    ``emit`` returns the platform id(s) of the message(s) it created for :class:`AnswerDone`,
    :class:`Notice`, :class:`HandoffUpdate` and :class:`FileReply` (an answer may span several platform
    messages), so the store can find them again (edits, reactions, a restart).

    A sink whose ``emit`` never waits for I/O (it only hands events to in-process queues) may set a
    class attribute ``immediate = True``: the core then calls it inline instead of through a buffer.
    """

    async def emit(self, event: ReplyEvent) -> PlatformIds: ...


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


class CollectingSink:
    """In-memory :class:`ReplySink`: records every event. Used by tests, the bench and scripts."""

    immediate = True

    def __init__(self) -> None:
        self.events: list[ReplyEvent] = []
        self._count = 0

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        self.events.append(event)
        if isinstance(event, AnswerDone) and event.silent:
            return None
        if isinstance(event, AnswerDone | Notice | HandoffUpdate | FileReply):
            self._count += 1
            return f"m{self._count}"
        return None

    @property
    def files(self) -> list[FileReply]:
        return [e for e in self.events if isinstance(e, FileReply)]

    @property
    def answers(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, AnswerDone) and not e.silent]

    @property
    def notices(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Notice | HandoffUpdate)]

    @property
    def streamed(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextChunk))

    @property
    def texts(self) -> list[str]:
        """Everything a user would read, in order: notices and finished answers."""
        return [e.text for e in self.events if isinstance(e, AnswerDone | Notice | HandoffUpdate)
                and not (isinstance(e, AnswerDone) and e.silent)]


# ---------------------------------------------------------------------------------------------
# Media fetching: adapters know how to download their platform's files.


@runtime_checkable
class MediaFetcher(Protocol):
    """Downloads an attachment's bytes from the platform. ``limit`` is the byte cap to enforce: a file
    over it raises :class:`bot.errors.FileTooLarge` (before downloading, where the size is known); a file
    the platform cannot deliver raises :class:`bot.errors.AttachmentUnavailable`."""

    async def fetch(self, attachment: Attachment, limit: int) -> bytes: ...


class MemoryFetcher:
    """In-memory :class:`MediaFetcher` keyed by ``Attachment.ref``."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.calls = 0

    def add(self, data: bytes, filename: str = "", mime: str = "") -> Attachment:
        ref = f"mem:{hashlib.sha256(data).hexdigest()[:16]}:{len(self.files)}"
        self.files[ref] = data
        return Attachment(ref=ref, filename=filename, mime=mime, size=len(data))

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        self.calls += 1
        try:
            data = self.files[attachment.ref]
        except KeyError:
            raise AttachmentUnavailable(f"no file for ref {attachment.ref}", name=attachment.filename) from None
        if len(data) > limit:
            raise FileTooLarge(name=attachment.filename, size=len(data), limit=limit)
        return data


class FileFetcher:
    """:class:`MediaFetcher` for local paths (the console adapter)."""

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        return await asyncio.to_thread(self._read, attachment, limit)

    @staticmethod
    def _read(attachment: Attachment, limit: int) -> bytes:
        path = Path(attachment.ref).expanduser()
        name = attachment.filename or path.name
        try:
            size = path.stat().st_size
            if size > limit:
                raise FileTooLarge(name=name, size=size, limit=limit)
            return path.read_bytes()
        except FileNotFoundError:
            raise AttachmentUnavailable(f"no such file: {path}", name=name) from None
        except OSError as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None


# ---------------------------------------------------------------------------------------------
# Access: who may use an adapter, and how much.


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """Per-user limits; 0 means unlimited. ``exempt``: user ids the limits never apply to."""

    messages_per_minute: int = 0
    messages_per_day: int = 0
    images_per_day: int = 0
    video_seconds_per_day: float = 0
    exempt: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.messages_per_minute or self.messages_per_day or self.images_per_day
                    or self.video_seconds_per_day)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who an adapter serves: allowlists (empty = everyone) and denylists of users and chats, and limits.

    Ids are the platform's own (Telegram user/chat ids, Slack user/channel/team ids, helpdesk inboxes),
    compared as strings with :attr:`Sender.id` and :attr:`ConversationKey.chat` (and, for a team or
    workspace, the ``team`` entry of the message's ``route``).
    """

    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    allow_chats: frozenset[str] = frozenset()
    deny_chats: frozenset[str] = frozenset()
    limits: UsageLimits = UsageLimits()

    def admits(self, message: IncomingMessage) -> bool:
        chats = {message.key.chat}
        if team := message.route.get("team"):
            chats.add(team)
        return self.allows(message.sender.id, chats)

    def allows(self, user: str, chats: set[str]) -> bool:
        """Is ``user``, in any of ``chats`` (a chat, its team or workspace), served? Also for what the bot
        says unasked (a greeting when a panel or widget opens)."""
        if user in self.deny_users or chats & self.deny_chats:
            return False
        if self.allow_users and user not in self.allow_users:
            return False
        return not (self.allow_chats and not chats & self.allow_chats)


@dataclass(frozen=True)
class Channel:
    """What an adapter registers with the conversation manager for its platform.

    ``sink_for(context)`` builds the sink that renders one turn's replies. Registering a channel is what
    lets the manager answer messages left pending by a restart. ``command_prefixes``: what starts a
    command on this platform (Slack intercepts ``/…`` in its composer, so its adapter adds ``!``); the
    first is the one shown in help texts. ``reaches_people``: a handoff on this platform reaches people even
    without a notifier that does (a helpdesk: its agents see the conversation).
    """

    platform: str
    fetcher: MediaFetcher
    sink_for: Callable[[SinkContext], ReplySink]
    persona: str | None = None
    command_prefixes: tuple[str, ...] = ("/",)
    policy: AccessPolicy = AccessPolicy()
    #: the platform itself puts people in front of a handed-off conversation (a helpdesk's agents)
    reaches_people: bool = False
    #: the sender's locale, asked when the turn starts if the event did not carry it: a platform where it
    #: costs a network call (Slack's users.info) stores the message first and looks it up after the ack
    locale_of: Callable[[str], Awaitable[str | None]] | None = None
    #: seconds to wait before sending again after a send failed with this error (a 429, a 5xx, a timeout),
    #: or None when it would fail again: what the outbox retries (bot/outbox.py)
    retry_after: Callable[[BaseException], float | None] = default_retry_after
    #: whether a send that failed with this error may have reached the platform all the same (the outbox then
    #: sends again with ``SinkContext.resend``, for adapters that look for an earlier copy first)
    may_have_arrived: Callable[[BaseException], bool] = default_may_have_arrived
