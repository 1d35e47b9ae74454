"""The sink of platforms that show whole messages, not edits (helpdesks): one class decides which reply
events become a message, the platform says how to post one.

:class:`PostingSink` skips the streamed text (the finished answer is posted once, whole), posts notices and
handoff notes (an operator's with their name), posts files, shows typing while the model works where the
platform has it (and stops it when the turn ends, a turn cancelled before any text too), and tells the
platform when a person was asked for. A platform implements :meth:`~PostingSink.post` (and, where it has
them, :meth:`~PostingSink.file`, :meth:`~PostingSink.typing`, :meth:`~PostingSink.handed_off`).
"""

from __future__ import annotations

from bot.types import (
    AnswerDone,
    FileReply,
    HandoffUpdate,
    Notice,
    PlatformIds,
    ReplyEvent,
    SinkContext,
    Status,
)

Message = AnswerDone | Notice | HandoffUpdate


def signed(event: Message, author_format: str = "**{author}:** {text}") -> str:
    """The text of a message as shown: an operator's with their name (``author_format``)."""
    author = event.author if isinstance(event, Notice) else ""
    return author_format.format(author=author, text=event.text) if author else event.text


class PostingSink:
    """See the module docstring. ``author_format`` renders an operator's message (``{author}``, ``{text}``)."""

    author_format = "**{author}:** {text}"

    def __init__(self, context: SinkContext) -> None:
        self.context = context
        self.typing_shown = False

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, Status):
            if not self.typing_shown:
                self.typing_shown = await self.typing(True)
            return None
        if isinstance(event, FileReply):
            return await self.file(event)
        if isinstance(event, AnswerDone) and event.silent:  # cancelled before any text: nothing to post
            await self._typing_off()
            return None
        if isinstance(event, Message):
            ids = await self.post(self.text_of(event), event)
            if isinstance(event, HandoffUpdate) and event.state in ("requested", "taken", "returned"):
                await self.handed_off(event)
            await self._typing_off()
            return ids
        return None  # streamed text: the finished answer is posted whole

    def text_of(self, event: Message) -> str:
        return signed(event, self.author_format)

    async def _typing_off(self) -> None:
        if self.typing_shown:
            self.typing_shown = not await self.typing(False)

    # -- what a platform implements ------------------------------------------------------------

    async def post(self, text: str, event: Message) -> PlatformIds:
        """Post one message; its platform id(s)."""
        raise NotImplementedError

    async def file(self, reply: FileReply) -> PlatformIds:
        """Post a file (default: its caption, or its name, as a message)."""
        return await self.post(reply.caption or reply.filename, Notice(reply.caption or reply.filename))

    async def typing(self, on: bool) -> bool:
        """Show or stop "typing…"; True when the platform did (default: a platform without it)."""
        return False

    async def handed_off(self, event: HandoffUpdate) -> None:
        """The conversation moved (``event.state``): a person was asked for (``requested``), an operator took it
        over (``taken``), or it went back to the assistant (``returned``). Default: nothing more than the note."""


__all__ = ["Message", "PostingSink", "signed"]
