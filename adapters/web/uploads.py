"""What the web chat's page posts: the message form with its files, refused politely (in the user's language,
with the status a browser understands) when it is too big, malformed, or has too many or too large files;
each file stored in the store before the message is, so whichever replica answers reads it there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from adapters.common.http import StoredFiles, UploadTooLarge, read_form, save_upload
from adapters.web import UPLOAD_MAX_AGE
from bot.l10n import i18n
from bot.types import Attachment

if TYPE_CHECKING:
    from adapters.web.adapter import WebAdapter

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request answered early with ``response`` (a polite refusal in the user's language)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def refuse(status: int, text: str, reason: str) -> JSONResponse:
    """A polite refusal of a posted message (``text``, in the user's language), and a log line saying why."""
    log.info("web message refused (%s): %s", status, reason)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": text}, status_code=status, headers=headers)


async def message_form(adapter: WebAdapter, request: Request, lang: str) -> tuple[str, bool, list[Attachment]]:
    """The form's text, whether a page's button sent it, and its files (stored); :class:`_Refused` with
    the polite answer when the body is too big, malformed or has too many or too large files."""
    limit = adapter.settings.media.max_file_bytes
    most = adapter.conf.max_files_per_message
    max_body = limit * most + 1_000_000
    declared = request.headers.get("content-length") or ""
    length = int(declared) if declared.isdigit() else 0
    if length > max_body:
        raise Refused(refuse(413, i18n.text("files_too_large_total", lang, size_mb=mb(length),
                                                   limit_mb=mb(max_body - 1_000_000)), f"body of {length} bytes"))
    try:
        # Counted here rather than by the parser, so the user hears how many they sent.
        form = await read_form(request, max_files=1000, max_fields=20,
                               max_part_size=adapter.settings.conversation.max_message_chars * 4 + 1024)
    except MultiPartException as exc:
        if "exceeded maximum size" in exc.message:  # the text: far past the limit, not a broken upload
            limit_chars = adapter.settings.conversation.max_message_chars
            raise Refused(refuse(413, i18n.text("message_too_long_limit", lang, limit=limit_chars),
                                        f"text over {limit_chars} characters")) from None
        key = "text_not_utf8" if "not valid" in exc.message else "upload_malformed"
        raise Refused(refuse(400, i18n.text(key, lang), f"malformed form: {exc.message}")) from None
    except Exception as exc:
        raise Refused(refuse(400, i18n.text("upload_malformed", lang), f"malformed form: {exc}")) from None
    try:
        text_part = form.get("text")
        if isinstance(text_part, UploadFile):
            raise Refused(refuse(400, i18n.text("upload_malformed", lang), "'text' sent as a file"))
        text = str(text_part or "")
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if text_part is None and not uploads:  # the page always sends "text": the body was cut short
            raise Refused(refuse(400, i18n.text("upload_malformed", lang), "no text field and no file"))
        if len(uploads) > most:
            raise Refused(refuse(413, i18n.text("too_many_files", lang, count=len(uploads), limit=most),
                                        f"{len(uploads)} files"))
        attachments = [await _store_upload(adapter, item, lang, limit) for item in uploads]
        # a page's button (New conversation, Talk to a person…) sends its command: no bubble for it
        return text, form.get("action") == "1" and text.startswith("/"), attachments
    finally:
        await form.close()

async def _store_upload(adapter: WebAdapter, item: UploadFile, lang: str, limit: int) -> Attachment:
    """One uploaded file, into the store before the message is: whichever replica answers reads it there."""
    try:
        saved = await save_upload(item, adapter.uploads, limit)
    except UploadTooLarge as big:
        raise Refused(refuse(413, i18n.text("file_too_large", lang, name=big.name, size_mb=mb(big.size),
                                                   limit_mb=mb(limit)), f"{big.name}: {big.size} bytes")) from None
    try:
        data = await asyncio.to_thread(saved.path.read_bytes)
    finally:
        saved.path.unlink(missing_ok=True)
    sha = await adapter.manager.store.save_blob(data, saved.mime)
    return Attachment(ref=StoredFiles.ref(sha), filename=saved.filename, mime=saved.mime, size=saved.size)


def sweep_uploads(folder: Path) -> None:
    """Uploads a crashed run left half-written in ``folder``: removed after a week."""
    cutoff = time.time() - UPLOAD_MAX_AGE
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


def mb(size: int) -> str:
    return f"{size / 1e6:.1f}"
