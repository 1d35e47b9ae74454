"""HTTP helpers every adapter's routes use: JSON bodies that are validated (never a 500), uploads capped
while they stream, languages from ``Accept-Language``, and error handlers that turn bad input into 4xx."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from itertools import chain, compress
from operator import not_
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from adapters.common.urlguard import UrlGuard, UrlRefused, where
from bot.errors import (
    AttachmentUnavailable,
    BotError,
    FileTooLarge,
    InputError,
    NoSuchChannel,
    NoSuchConversation,
    ShuttingDown,
)
from bot.l10n import i18n
from bot.store import Store
from bot.types import Attachment

log = logging.getLogger(__name__)

#: Deepest JSON nesting accepted, checked on the parsed object (bodies nested far deeper stop the standard
#: parser's own recursion guard first: a 400 as well).
MAX_JSON_DEPTH = 64


class BadRequest(HTTPException):
    """A 400 with a message saying what was wrong."""

    def __init__(self, detail: str, status_code: int = 400) -> None:
        super().__init__(status_code=status_code, detail=detail)


_CONTAINERS = frozenset((dict, list))


def _too_deep(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests more than ``limit`` containers deep: one level at a time, each level's values
    gathered and sorted by C-level iterators (``map``/``compress``), never a Python loop per value."""
    level = [data] if type(data) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        is_dict = list(map(dict.__instancecheck__, level))
        values = list(chain(chain.from_iterable(map(dict.values, compress(level, is_dict))),
                            chain.from_iterable(compress(level, map(not_, is_dict)))))
        level = list(compress(values, map(_CONTAINERS.__contains__, map(type, values))))
    return False


def parse_json_object(body: bytes, *, what: str = "the body") -> dict[str, Any]:
    """``body`` as a JSON object, or :class:`BadRequest` saying why not (empty, not UTF-8, not JSON, too
    deep, not an object)."""
    if not body.strip():
        raise BadRequest(f"{what} is empty: send a JSON object")
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not UTF-8 text") from None
    too_deep = BadRequest(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(raw)
    except RecursionError:  # the C parser's own guard, far deeper than MAX_JSON_DEPTH
        raise too_deep from None
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON ({exc})") from None
    # Fewer openers than the limit cannot nest past it: large bodies are mostly one long string.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _too_deep(data):
        raise too_deep
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object, not {type(data).__name__}")
    return data


async def read_json_object(request: Request, *, max_bytes: int = 1_000_000) -> dict[str, Any]:
    """The request's JSON object body (see :func:`parse_json_object`), at most ``max_bytes``."""
    body = await read_body(request, max_bytes=max_bytes)
    return parse_json_object(body)


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The raw body, refused with 413 past ``max_bytes`` (counted as it arrives, not from the header)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(f"the body is larger than {max_bytes} bytes", status_code=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(f"the body is larger than {max_bytes} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def text_field(data: dict[str, Any], name: str, *, required: bool = True, max_chars: int = 100_000) -> str:
    """A string field of a JSON object, checked."""
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{name!r} is required")
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    if len(value) > max_chars:
        raise BadRequest(f"{name!r} is longer than {max_chars} characters")
    return value


# -- languages -------------------------------------------------------------------------------


def accept_languages(header: str) -> list[str]:
    """Language codes of an ``Accept-Language`` header, most preferred first (q-values honoured;
    ``q=0`` means "not this one")."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        code = i18n.normalize_code(pieces[0]) if pieces[0] and pieces[0] != "*" else None
        if not code:
            continue
        quality = 1.0
        for param in pieces[1:]:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, index, code))
    seen: list[str] = []
    for _, _, code in sorted(ranked):
        if code not in seen:
            seen.append(code)
    return seen


def preferred_language(header: str, available: tuple[str, ...] | list[str], default: str) -> str:
    """The first language of ``header`` that is ``available``; else ``default``."""
    for code in accept_languages(header):
        if code in available:
            return code
    return default


# -- forms -----------------------------------------------------------------------------------


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, except that a text field that is not valid UTF-8 is refused (Starlette would
    decode it as Latin-1 and show garbage)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset)
            except (UnicodeDecodeError, LookupError):
                raise MultiPartException(f"the field {part.field_name!r} is not valid {self._charset} text") from None
        super().on_part_end()


async def read_form(request: Request, *, max_files: int, max_fields: int, max_part_size: int) -> FormData:
    """A form (multipart or URL-encoded) whose text fields are valid UTF-8; MultiPartException otherwise."""
    content_type, _ = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        async with aclosing(request.stream()) as stream:
            parser = _StrictMultiPartParser(request.headers, stream, max_files=max_files, max_fields=max_fields,
                                            max_part_size=max_part_size)
            return await parser.parse()
    if content_type == b"application/x-www-form-urlencoded":
        try:
            body = await read_body(request, max_bytes=max_part_size * 2)
        except BadRequest as exc:  # said the way the multipart parser says it, so callers tell one story
            raise MultiPartException(f"Field exceeded maximum size of {max_part_size // 1024}KB.") from exc
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
                              max_num_fields=max_fields)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MultiPartException(f"the form is not valid URL-encoded UTF-8 text ({exc})") from None
        return FormData(pairs)
    raise MultiPartException("send the message as multipart/form-data")


# -- downloads -------------------------------------------------------------------------------


async def download(http: httpx.AsyncClient, url: str, *, name: str, limit: int,
                   allowed: Callable[[str], bool] = lambda url: True,
                   headers_for: Callable[[str], dict[str, str]] = lambda url: {},
                   auth: httpx.Auth | None = None, max_redirects: int = 5,
                   refuse: Callable[[httpx.Response], str | None] = lambda response: None,
                   guard: UrlGuard | None = None) -> bytes:
    """A platform's file, streamed and counted: FileTooLarge past ``limit`` bytes (the real count, never a
    header's word), AttachmentUnavailable for anything else that goes wrong. Redirects are followed by hand,
    each hop checked with ``allowed`` (and, with a ``guard``, the addresses its host resolves to) and given
    only the headers ``headers_for`` grants it (a token goes to the platform's own host, never to the storage
    it redirects to). ``refuse``: a reason to reject a 200 (a login page served instead of the file). A hop
    refused is one warning, naming the host only (a presigned URL's query is a credential)."""
    try:
        for _ in range(max_redirects + 1):
            await _check_hop(url, name, allowed, guard)
            async with http.stream("GET", url, headers=headers_for(url), auth=auth or httpx.USE_CLIENT_DEFAULT) \
                    as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                reason = f"HTTP {response.status_code}" if response.status_code != 200 else refuse(response)
                if reason:
                    raise AttachmentUnavailable(f"{reason} for {name}", name=name)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLarge(name=name, size=size, limit=limit)
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise AttachmentUnavailable(str(exc), name=name) from None
    raise AttachmentUnavailable(f"too many redirects for {name}", name=name)


async def _check_hop(url: str, name: str, allowed: Callable[[str], bool], guard: UrlGuard | None) -> None:
    try:
        if urlsplit(url).scheme not in ("http", "https") or not allowed(url):
            raise UrlRefused(f"{where(url)} is not a host this adapter fetches from")
        if guard is not None:
            await guard.check(url)
    except (UrlRefused, ValueError) as exc:  # ValueError: a URL urlsplit cannot read (a bad port)
        log.warning("attachment %r not fetched: %s", name, exc)
        raise AttachmentUnavailable(f"{name} not fetched: {exc}", name=name) from None


class StoredFiles:
    """Files a user uploaded, kept in the store by SHA-256 before the message is (``blob:<sha256>``): any
    replica sharing the store can read them, and nothing is left in a local folder."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def ref(sha256: str) -> str:
        return f"blob:{sha256}"

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        name = attachment.filename or "file"
        kind, _, sha = attachment.ref.partition(":")
        if kind != "blob":
            raise AttachmentUnavailable(f"not a stored upload: {attachment.ref[:40]!r}", name=name)
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(name=name, size=attachment.size, limit=limit)
        try:
            data = await self.store.attachment_data(sha)
        except (FileNotFoundError, ValueError) as exc:
            raise AttachmentUnavailable(str(exc), name=name) from None
        if len(data) > limit:
            raise FileTooLarge(name=name, size=len(data), limit=limit)
        return data


# -- event streams ---------------------------------------------------------------------------


def event_stream(queue: asyncio.Queue[dict[str, Any] | None], *, heartbeat: float,
                 on_close: Callable[[], None]) -> StreamingResponse:
    """Server-sent events from ``queue`` (None ends the stream), a comment every ``heartbeat`` seconds so
    proxies keep the connection, ``on_close`` when the browser leaves or the stream ends."""

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield b": ping\n\n"
                    continue
                if event is None:
                    return
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
        finally:
            on_close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- uploads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SavedUpload:
    ref: str
    filename: str
    mime: str
    size: int
    path: Path


class UploadTooLarge(Exception):
    def __init__(self, name: str, size: int, limit: int) -> None:
        super().__init__(f"{name}: over {limit} bytes")
        self.name, self.size, self.limit = name, size, limit


async def save_upload(item: UploadFile, folder: Path, limit: int) -> SavedUpload:
    """Copy an uploaded file into ``folder`` (under a random name) in a thread, refusing it past ``limit``
    bytes; the real size is counted, never taken from a header."""
    name = Path(item.filename or "file").name[:200] or "file"
    ref = uuid.uuid4().hex
    path = folder / ref

    def copy() -> int:
        size = 0
        item.file.seek(0)
        with path.open("wb") as out:
            while chunk := item.file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    break
                out.write(chunk)
        if size > limit:
            # Count the rest without keeping it, so the user hears the real size.
            while chunk := item.file.read(1 << 20):
                size += len(chunk)
            path.unlink(missing_ok=True)
        return size

    size = await asyncio.to_thread(copy)
    if size > limit:
        raise UploadTooLarge(name, size, limit)
    return SavedUpload(ref, name, item.content_type or "", size, path)


# -- errors ----------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Bad input anywhere answers 4xx with a clear message; typed core errors map to their status."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "the request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(BotError)
    async def bot_error(request: Request, exc: BotError) -> JSONResponse:
        if isinstance(exc, ShuttingDown):
            return JSONResponse({"error": i18n.text("busy_restarting", "en")}, status_code=503,
                                headers={"Retry-After": "5"})
        if isinstance(exc, NoSuchChannel | NoSuchConversation):
            return JSONResponse({"error": str(exc)}, status_code=404)
        if isinstance(exc, InputError):
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return JSONResponse({"error": "internal error"}, status_code=500)
