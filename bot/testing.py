"""In-memory doubles of the seams (:mod:`bot.seams`), for tests, the bench and scripts: real implementations
that record what they were given."""

from __future__ import annotations

import hashlib

from bot.errors import AttachmentUnavailable, FileTooLarge
from bot.types import (
    AnswerDone,
    Attachment,
    FileReply,
    HandoffUpdate,
    Notice,
    PlatformIds,
    ReplyEvent,
    TextChunk,
)


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


__all__ = ["CollectingSink", "MemoryFetcher"]
