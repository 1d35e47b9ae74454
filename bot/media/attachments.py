"""From a stored message's attachments to what the model sees: images, video frames, PDF pages, text.

Bytes are fetched through the adapter's fetcher once, stored by SHA-256, recognised from their content
and decoded; decoded images, sampled videos and rendered documents are cached by SHA-256, so a photo
asked about again is not decoded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.engines.base import ChatMessage, Engine, ImagePart, VideoPart
from bot.errors import AttachmentUnavailable, InputError, UnsupportedFile
from bot.l10n import i18n
from bot.media.documents import Document, read_pdf
from bot.media.images import (
    MAX_TEXT_FILE_CHARS,
    ByteLRU,
    MediaKind,
    PixelBudget,
    PixelLease,
    canvas_pixels,
    decode_pixels,
    decode_text,
    give_back_memory,
    sniff,
    tune_allocator,
)
from bot.media.video import sample_frames, sample_frames_fast
from bot.seams import Channel
from bot.store import Store, StoredAttachment, StoredMessage
from bot.types import Notice, ReplyEvent, Status

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: The pixel lease of the turn being processed (set by the manager for the turn's task).
PIXEL_LEASE: ContextVar[PixelLease | None] = ContextVar("pixel_lease", default=None)
#: The largest decoded image kept in the cache (a 12 MP photo is 36 MB); larger ones go when the turn ends.
CACHE_ONE_MAX = 48 * 2**20
#: A turn that decoded this many pixels gives freed memory back to the system when it ends.
LARGE_TURN_PIXELS = 20_000_000

#: Called with events to show while reading (progress, notes); must not block.
Post = Callable[[ReplyEvent], None]


@dataclass
class Resolved:
    """What one message's attachments became."""

    images: list[ImagePart] = field(default_factory=list)
    videos: list[VideoPart] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    notes: list[Notice] = field(default_factory=list)
    image_count: int = 0  # images and document pages the model will see (for per-user limits)
    video_seconds: float = 0.0


class AttachmentResolver:
    """See the module docstring. One per manager; its caches are bounded."""

    def __init__(self, settings: Settings, store: Store, engine: Engine) -> None:
        self.settings = settings
        self.media = settings.media
        self.store = store
        self.engine = engine
        self._images = ByteLRU(512 * 2**20)  # decoded images by SHA-256: ~36 MB for a 12 MP photo
        self.pixels = PixelBudget(self.media.max_pixels_in_flight)
        # one large decode at a time: its transient copies (a few times the image) are bounded too
        self._decoding = asyncio.Semaphore(1)
        tune_allocator()
        self._videos: OrderedDict[str, tuple[VideoPart, float]] = OrderedDict()
        self._documents: OrderedDict[str, Document] = OrderedDict()

    def lease(self) -> PixelLease:
        """What a turn may decode: ``media.max_pixels_per_message``, out of the shared budget. The manager
        releases it when the turn ends (the decoded images live until the answer is done)."""
        return PixelLease(self.pixels, self.media.max_pixels_per_message)

    async def release(self, lease: PixelLease) -> None:
        """The turn has ended: its pixels go back to the budget, and after a large turn, when nothing else
        holds any, freed memory goes back to the system."""
        held = lease.held
        await lease.release()
        if held >= LARGE_TURN_PIXELS and self.pixels.used == 0:
            await asyncio.to_thread(give_back_memory)

    # -- the current message ---------------------------------------------------------------

    async def resolve(self, msg: StoredMessage, channel: Channel, post: Post | None, lang: str) -> Resolved:
        """Fetch (once), store by SHA-256, recognise and decode the attachments of ``msg``."""
        media = self.media
        out = Resolved()
        images = 0
        over: list[str] = []
        for att in msg.attachments:
            data, sha, kind = await self.fetch(msg, att, channel)
            name = att.filename or "file"
            if kind.kind == "video":
                part, seconds = await self._video(sha, data, name, post, lang)
                out.videos.append(part)
                out.video_seconds += seconds
            elif kind.kind == "document":
                pages, text, document = await self._document(sha, data, name)
                out.images.extend(pages)
                out.image_count += len(pages)
                if text:
                    out.texts.append(text)
                if document.truncated:
                    out.notes.append(Notice(i18n.text("document_truncated", lang, name=name, pages=len(pages),
                                                      count=document.total_pages)))
            elif kind.kind == "image":
                images += 1
                if images > media.max_images_per_turn:
                    continue
                image = await self.decode(sha, data, name)
                if image is None:  # the turn's decoded pixels would pass the cap: left out, the user told
                    over.append(name)
                    continue
                out.images.append(ImagePart(image=image, max_tiles=media.max_tiles, sha256=sha,
                                            source=data if self.engine.info.wants_source else None))
                out.image_count += 1
            elif kind.kind == "text":
                content, truncated = decode_text(data)
                out.texts.append(f"[{name}]\n{content}" + (" […]" if truncated else ""))
            else:
                raise UnsupportedFile(kind.label, name=name, kind=kind.label)
        if images > media.max_images_per_turn:
            out.notes.append(Notice(i18n.text("too_many_images", lang, limit=media.max_images_per_turn, count=images)))
        if over:
            out.notes.append(Notice(i18n.text("images_over_total", lang, count=len(over), names=", ".join(over),
                                              limit=round(media.max_pixels_per_message / 1e6))))
        return out

    async def fetch(self, msg: StoredMessage, att: StoredAttachment, channel: Channel) -> tuple[bytes, str, MediaKind]:
        """The attachment's bytes (stored once by SHA-256), its SHA-256 and what it really is."""
        if att.sha256:
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = await self.store.attachment_data(att.sha256)
                return data, att.sha256, sniff(data, att.filename, att.mime)
        try:
            data = await channel.fetcher.fetch(att.as_attachment(), self.media.max_file_bytes)
        except InputError:
            raise
        except Exception as exc:
            log.warning("fetching attachment %r failed: %s", att.filename, exc)
            raise AttachmentUnavailable(str(exc), name=att.filename or "file") from None
        kind = sniff(data, att.filename, att.mime)
        sha = await self.store.save_attachment(msg.id, att.position, data, kind.mime)
        return data, sha, kind

    async def keep(self, msg: StoredMessage, channel: Channel) -> list[str]:
        """Fetch and store a message's attachments without reading them (for the person who takes over)."""
        names = []
        for att in msg.attachments:
            try:
                await self.fetch(msg, att, channel)
                names.append(att.filename or "file")
            except Exception as exc:
                log.warning("attachment %r of message %d not kept: %s", att.filename, msg.id, exc)
        return names

    async def decode(self, sha: str, data: bytes, name: str) -> np.ndarray | None:
        """Decoded pixels of an attachment, cached by SHA-256. The canvas is read from the header first and
        taken from the turn's lease (waiting for room in the shared budget): None when the turn's cap is
        reached. Images too large to keep (over :data:`CACHE_ONE_MAX` decoded) are not cached, so their
        memory goes back when the turn ends."""
        key = (sha, self.media.max_image_pixels)
        cached = self._images.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        lease = PIXEL_LEASE.get()
        if lease is not None:
            pixels = await asyncio.to_thread(canvas_pixels, data, name=name, max_pixels=self.media.max_image_pixels)
            if not await lease.take(pixels):
                return None
        async with self._decoding:
            image = await asyncio.to_thread(decode_pixels, data, name=name, max_pixels=self.media.max_image_pixels)
        if image.nbytes <= CACHE_ONE_MAX:
            self._images.put(key, image)
        return image

    async def _document(self, sha: str, data: bytes, name: str) -> tuple[list[ImagePart], str, Document]:
        """A PDF's pages as images (labelled ``Page-n``) and its text layer, cached by SHA-256."""
        document = self._documents.get(sha)
        if document is None:
            # The pages share what the context leaves for images: each is rendered at the resolution
            # its share of tiles needs (the budget planner may still lower it).
            room = (self.settings.conversation.history_token_budget or self.engine.info.context_length) \
                - self.settings.engine.generation.max_new_tokens - 1500
            per_tile = self.engine.info.tokens_per_tile + 2

            def tiles_for(pages: int) -> int:
                return max(1, room // max(1, pages) // per_tile - 1)

            document = await asyncio.to_thread(read_pdf, data, name=name, max_pages=self.media.max_pdf_pages,
                                               max_tiles=self.media.document_max_tiles, tiles_for=tiles_for)
            self._documents[sha] = document
            while len(self._documents) > 4:
                self._documents.popitem(last=False)
        pages = [ImagePart(image=p.image, max_tiles=document.max_tiles, sha256=f"{sha}#p{p.number}",
                           label=f"Page-{p.number}") for p in document.pages]
        texts = [f"[{name}, page {p.number}, text layer]\n{p.text}" for p in document.pages if p.text]
        text = "\n\n".join(texts)
        if len(text) > MAX_TEXT_FILE_CHARS:
            text = text[:MAX_TEXT_FILE_CHARS] + " […]"
        return pages, text, document

    async def _video(self, sha: str, data: bytes, name: str, post: Post | None, lang: str) -> tuple[VideoPart, float]:
        """Sample a video's frames (cached by SHA-256), telling the user how far reading has got."""
        cached = self._videos.get(sha)
        if cached is not None:
            self._videos.move_to_end(sha)
            return cached
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            if post is not None:
                status = Status("progress", i18n.text("reading_frames", lang, done=done, total=total))
                loop.call_soon_threadsafe(post, status)

        sampler = sample_frames_fast if self.media.video_sampling == "fast" else sample_frames
        frames, info, indices = await asyncio.to_thread(
            sampler, data, num_segments=self.media.video_frames, max_seconds=self.media.max_video_seconds,
            max_pixels=self.media.max_video_pixels, name=name, progress=progress,
        )
        log.info("video %s: %d frames of %d (%.1f s, %dx%d)", name, len(frames), info.frames, info.seconds,
                 info.width, info.height)
        part = VideoPart(frames=tuple(ImagePart(image=f, max_tiles=1, sha256=f"{sha}#{i}")
                                      for f, i in zip(frames, indices, strict=True)), name=name)
        self._videos[sha] = (part, float(info.seconds))
        while len(self._videos) > 4:
            self._videos.popitem(last=False)
        return part, float(info.seconds)

    # -- earlier turns ----------------------------------------------------------------------

    async def history_message(self, row: StoredMessage) -> ChatMessage:
        """An earlier user turn as the model sees it again: its text and what its attachments were."""
        media = self.media
        images: list[ImagePart] = []
        videos: list[VideoPart] = []
        texts: list[str] = [row.text.strip()] if row.text.strip() else []
        wants_source = self.engine.info.wants_source
        for att in row.attachments:
            if not att.sha256:
                continue
            cached = self._images.get((att.sha256, media.max_image_pixels))
            if cached is not None and not wants_source:  # decoded already: no need to read the file
                images.append(ImagePart(image=cached, max_tiles=media.history_max_tiles, sha256=att.sha256))
                continue
            try:
                data = await self.store.attachment_data(att.sha256)
            except (FileNotFoundError, ValueError):
                continue
            kind = sniff(data, att.filename, att.mime)
            try:
                if kind.kind == "image":
                    image = await self.decode(att.sha256, data, att.filename)
                    if image is None:  # past the turn's cap: this earlier image is left out
                        continue
                    images.append(ImagePart(image=image, max_tiles=media.history_max_tiles, sha256=att.sha256,
                                            source=data if wants_source else None))
                elif kind.kind == "video":
                    videos.append((await self._video(att.sha256, data, att.filename, None, "en"))[0])
                elif kind.kind == "document":
                    pages, text, _ = await self._document(att.sha256, data, att.filename)
                    images.extend(replace(p, max_tiles=media.history_max_tiles) for p in pages)
                    if text:
                        texts.append(text)
                elif kind.kind == "text":
                    texts.append(f"[{att.filename or 'file'}]\n{decode_text(data)[0]}")
            except InputError:
                continue
        return ChatMessage("user", "\n\n".join(texts), tuple(images[: media.max_images_per_turn]), tuple(videos))

