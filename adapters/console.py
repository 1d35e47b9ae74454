"""The console adapter: ``internvl-bot chat``, an interactive REPL that also works with piped stdin.

Type a question and the answer streams in. ``/image PATH`` and ``/file PATH`` attach a file to the
next question; ``/quit`` leaves. Every other ``/command`` goes to the bot (``/help`` lists them).
The conversation is stored like any other: it survives a restart.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shlex
import sys
from pathlib import Path
from typing import TextIO

from bot.config import AdapterSection
from bot.conversation.manager import ConversationManager
from bot.errors import AttachmentUnavailable, FileTooLarge
from bot.l10n import i18n
from bot.seams import AccessPolicy, Channel
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    PlatformIds,
    ReplyEvent,
    Sender,
    Status,
    TextChunk,
)

PLATFORM = "console"
PROMPT = "you> "
BOT = "bot> "


class FileFetcher:
    """:class:`~bot.seams.MediaFetcher` for local paths: what ``/image PATH`` and ``/file PATH`` attach."""

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


class ConsoleSettings(AdapterSection):
    """``internvl-bot chat``."""

    enabled: bool = True


class ConsoleSink:
    """Prints one turn's reply events as they arrive."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.streaming = False

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, Status):
            return None
        if isinstance(event, TextChunk):
            if not self.streaming:
                self.out.write(BOT)
                self.streaming = True
            self.out.write(event.text)
        elif isinstance(event, AnswerDone) and event.silent:
            pass  # cancelled before any text: nothing was written
        elif isinstance(event, AnswerDone):
            if not self.streaming:
                self.out.write(BOT + event.text)
            elif event.interrupted:
                self.out.write(" …")
            self.out.write("\n")
            self.streaming = False
        elif isinstance(event, FileReply):
            path = await asyncio.to_thread(_save_export, event)
            self.out.write(f"[file saved: {path}]\n")
        elif isinstance(event, Notice | HandoffUpdate):
            if self.streaming:
                self.out.write("\n")
                self.streaming = False
            prefix = "(!) " if isinstance(event, Notice) and event.kind == "error" else ""
            self.out.write(f"{BOT}{prefix}{event.text}\n")
        self.out.flush()
        return None


def _save_export(event: FileReply) -> Path:
    """Exports land in ./exports, under the file's own name (never a path the model chose)."""
    folder = Path("exports")
    folder.mkdir(exist_ok=True)
    path = folder / Path(event.filename).name
    path.write_bytes(event.data)
    return path


def locale_hint() -> str | None:
    """The terminal's language, from the usual environment variables (``pt_BR.UTF-8`` -> ``pt``)."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        code = i18n.normalize_code(value.split(".")[0])
        if code and code not in ("c", "posix"):
            return code
    return None


class ConsoleAdapter:
    """Reads lines from ``stdin`` and submits them to the manager, one turn at a time."""

    def __init__(self, manager: ConversationManager, *, conversation: str | None = None, persona: str = "",
                 stdin: TextIO | None = None, stdout: TextIO | None = None,
                 policy: AccessPolicy | None = None) -> None:
        self.manager = manager
        self.user = _user()
        self.key = ConversationKey(PLATFORM, conversation or self.user)
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.interactive = self.stdin.isatty() and self.out.isatty()
        self.locale = locale_hint()
        self.pending: list[Attachment] = []
        manager.register(Channel(PLATFORM, FileFetcher(), lambda context: ConsoleSink(self.out), persona or None,
                                 policy=policy or AccessPolicy()))

    async def _read(self) -> str | None:
        if self.interactive:
            try:
                return await asyncio.to_thread(input, PROMPT)
            except EOFError:
                return None
        line = await asyncio.to_thread(self.stdin.readline)
        return line.rstrip("\r\n") if line else None

    def _language(self) -> str:
        code = self.locale or "en"
        return code if code in i18n.UI_LANGUAGES else "en"

    def _attach(self, argument: str) -> None:
        try:
            parts = shlex.split(argument)
        except ValueError:
            parts = [argument]
        lang = self._language()
        for raw in parts or [""]:
            path = Path(raw).expanduser()
            if not raw or not path.is_file():
                self.out.write(f"{BOT}(!) {i18n.text('console_no_file', lang, path=raw or '?')}\n")
                continue
            self.pending.append(Attachment(ref=str(path.resolve()), filename=path.name,
                                           size=path.stat().st_size))
            self.out.write(i18n.text("console_attached", lang, name=path.name) + "\n")
        self.out.flush()

    async def run(self) -> None:
        """Chat until end of input or ``/quit``."""
        while True:
            line = await self._read()
            if line is None:
                break
            stripped = line.strip()
            command, _, argument = stripped.partition(" ")
            if command in ("/image", "/file"):
                self._attach(argument.strip())
                continue
            if command in ("/quit", "/exit"):
                break
            if not stripped and not self.pending and self.interactive:
                continue
            message = IncomingMessage(
                key=self.key, sender=Sender(self.user, self.user), text=line, attachments=tuple(self.pending),
                locale=self.locale, raw=line,
            )
            self.pending = []
            ticket = await self.manager.submit(message)
            if ticket is not None:
                await ticket.done
            if command == "/help":  # the console's own commands, after the bot's
                self.out.write(f"{BOT}{i18n.text('console_help', self._language())}\n")
                self.out.flush()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"
