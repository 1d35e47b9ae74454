"""The framework's own value types and the seams between adapters and the core.

Adapters translate platform events into :class:`IncomingMessage` and render :data:`ReplyEvent`
values back; nothing platform-specific travels below ``adapters/`` except the opaque ``raw`` payload.
Each seam is a small :class:`typing.Protocol` with a real in-memory implementation in this module,
which doubles as the test double.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from bot.errors import AttachmentUnavailable, FileTooLarge


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
    """Who sent a message."""

    id: str
    name: str = ""
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a message. The bytes are fetched lazily through the adapter's fetcher.

    ``ref`` is the adapter's own handle (a Telegram file id, a Slack ``url_private``, a path);
    ``sha256`` identifies the content once fetched, so identical files are stored once.
    """

    ref: str
    filename: str = ""
    mime: str = ""
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message from a user, whatever the platform."""

    key: ConversationKey
    sender: Sender
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    locale: str | None = None
    event_id: str | None = None
    message_id: str | None = None
    is_direct: bool = True
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
    """A piece of a streamed answer."""

    text: str


@dataclass(frozen=True, slots=True)
class AnswerDone:
    """The streamed answer is complete; ``text`` is the whole of it."""

    text: str
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """A complete, standalone message: a command's answer, an error, a note about the context."""

    text: str
    kind: Literal["info", "error", "command"] = "info"
    author: str = ""  # a person's name when a human operator wrote it (handoff)


@dataclass(frozen=True, slots=True)
class FileReply:
    """A file sent back to the user (a CSV or JSON export)."""

    filename: str
    mime: str
    data: bytes = field(repr=False)
    caption: str = ""


ReplyEvent = Status | TextChunk | AnswerDone | Notice | FileReply


@runtime_checkable
class ReplySink(Protocol):
    """Receives the reply events of one turn and renders them on the platform.

    ``emit`` returns the platform's message id for :class:`AnswerDone` and :class:`Notice` when the
    platform gives one, so the store can keep it.
    """

    async def emit(self, event: ReplyEvent) -> str | None: ...


class CollectingSink:
    """In-memory :class:`ReplySink`: records every event. Used by tests, the bench and scripts."""

    def __init__(self) -> None:
        self.events: list[ReplyEvent] = []
        self._count = 0

    async def emit(self, event: ReplyEvent) -> str | None:
        self.events.append(event)
        if isinstance(event, AnswerDone | Notice | FileReply):
            self._count += 1
            return f"m{self._count}"
        return None

    @property
    def files(self) -> list[FileReply]:
        return [e for e in self.events if isinstance(e, FileReply)]

    @property
    def answers(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, AnswerDone)]

    @property
    def notices(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Notice)]

    @property
    def streamed(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextChunk))

    @property
    def texts(self) -> list[str]:
        """Everything a user would read, in order: notices and finished answers."""
        return [e.text for e in self.events if isinstance(e, AnswerDone | Notice)]


# ---------------------------------------------------------------------------------------------
# Media fetching: adapters know how to download their platform's files.


@runtime_checkable
class MediaFetcher(Protocol):
    """Downloads an attachment's bytes from the platform. ``limit`` is the byte cap to enforce."""

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
        except OSError as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None


@dataclass(frozen=True)
class Channel:
    """What an adapter registers with the conversation manager for its platform.

    ``sink_for(key, reply_to)`` builds the sink that renders replies in that conversation;
    ``reply_to`` is the platform id of the message being answered, when known. Registering a
    channel is what lets the manager answer messages left pending by a restart.
    """

    platform: str
    fetcher: MediaFetcher
    sink_for: Callable[[ConversationKey, str | None], ReplySink]
    persona: str | None = None
