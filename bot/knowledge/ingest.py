"""Ingestion: files and folders -> documents and chunks in a :class:`~bot.knowledge.base.KnowledgeStore`.

* A document is identified by its resolved path and known by the SHA-256 of its bytes: a file read before
  and unchanged is skipped (a second ``kb add`` does nothing; an interrupted run resumes where it stopped),
  a changed one is read again, and the same bytes under a second path of the base are a duplicate.
* Each document is replaced in one transaction (``put_document``): searches see the old version until the
  new one is complete, and a file that fails to read keeps its previous version serving. ``sync`` drops
  documents whose files are gone only once every source was walked.
* Bad input (an encrypted or corrupt PDF, an empty file, a binary file named ``.md``, a duplicate, a PDF
  longer than ``knowledge.max_pages``) is one line each on stderr; the rest is indexed.
* PDFs and images are kept in the store's blob storage (``save_blob``), so a passage can show its page or
  its image; images are found by their caption (a sidecar ``.txt``/``.md``), the alt text and paragraph of
  a Markdown or HTML page showing them, and their file name.
* Reading runs in a thread (PDF text extraction is CPU work); Ctrl+C stops it between two pages, and what
  was committed stays.
* Progress: a tqdm bar on stderr (documents, their rate and ETA; pages and chunks so far), shown on a
  terminal only.
* Platforms (bot/knowledge/remote.py): a location the ``remote`` resolver knows (``chatwoot-portal:help``) is
  read through its :class:`~bot.knowledge.remote.RemoteSource` under the same rules, keyed by URL; a source
  that fails part-way is one line, and nothing of it is removed on that run.
* Scanned PDFs: a source added with ``--ocr`` (kept as a source of kind ``ocr``, so ``sync`` reads it the same
  way) has each PDF page without a text layer rendered and read by the engine (bot/knowledge/ocr.py); its
  chunks keep the page number. A PDF without any text, added without it, is one line naming ``--ocr``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.errors import BotError
from bot.knowledge.base import Chunk, Document, KnowledgeStore, Source
from bot.knowledge.chunking import (
    IMAGE_TYPES,
    PDF,
    SUPPORTED,
    Chunker,
    ImageRef,
    Parsed,
    UnreadableDocument,
    caption_files,
    clean,
    image_refs,
    read,
    read_image,
)
from bot.knowledge.ocr import OCR_TILES, OcrUnavailable
from bot.knowledge.remote import RemoteSource, Resolver, SourceUnavailable, is_remote_doc, remote_chunks
from bot.media.documents import render_page

if TYPE_CHECKING:
    from bot.config import KnowledgeSettings
    from bot.knowledge.ocr import PageReader
    from bot.store.base import Store

#: Source kinds read from files and folders: as they are, or with scanned PDF pages read by the engine.
PATH, OCR = "path", "ocr"
#: A PDF page with less text than this in its text layer is a scanned page (a page number is not a text layer).
OCR_MIN_CHARS = 20


@dataclass(slots=True)
class IngestReport:
    """What one ``add`` or ``sync`` did. ``problems``: one line per file not indexed (or cut)."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    embedded: int = 0
    pages: int = 0
    ocr_pages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    #: remote sources that could not be read (whole): their previous documents keep serving
    sources_failed: int = 0

    def line(self) -> str:
        """``3 added, 1 updated, 5 unchanged, 0 removed, 2 problems (120 pages, 840 chunks, 4.1 s)``."""
        embedded = f", {self.embedded} embedded" if self.embedded else ""
        ocr = f", {self.ocr_pages} read by OCR" if self.ocr_pages else ""
        return (f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed, "
                f"{len(self.problems)} problem(s) ({self.pages} pages{ocr}, {self.chunks} chunks{embedded}, "
                f"{self.seconds:.1f} s)")


def _is_caption(path: Path) -> bool:
    """``x.png.txt`` or ``x.txt`` beside ``x.png``: an image's caption, read with the image, not on its own."""
    if path.suffix.lower() not in (".txt", ".md"):
        return False
    stem = path.with_suffix("")
    if stem.suffix.lower() in IMAGE_TYPES and stem.is_file():
        return True
    return any(path.with_suffix(s).is_file() for s in IMAGE_TYPES) or any(
        path.with_suffix(s.upper()).is_file() for s in IMAGE_TYPES)


def discover(locations: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files ``locations`` name (files, or folders walked recursively, hidden entries skipped), sorted;
    and one line per location that cannot be used."""
    found: dict[Path, None] = {}
    problems = []
    for location in locations:
        path = Path(location).expanduser().resolve()
        if path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                problems.append(f"{path}: unsupported file type {path.suffix or '(no extension)'} "
                                f"(supported: {', '.join(sorted(SUPPORTED))})")
            else:
                found[path] = None
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    child = Path(root) / name
                    if not name.startswith(".") and child.suffix.lower() in SUPPORTED and not _is_caption(child):
                        found[child] = None
        else:
            problems.append(f"{path}: no such file or folder")
    return sorted(found), problems


def _digest(data: bytes, *extra: str | bytes) -> str:
    h = hashlib.sha256(data)
    for part in extra:
        h.update(b"\x00")
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()


class Ingester:
    """Indexes files into ``index``, keeping originals in ``store`` (see the module docstring).

    ``out``: where problems and the progress bar go; ``progress``: show the bar (None: when ``out`` is a
    terminal); ``remote``: turns a platform's location into its source (None: every location is a path);
    ``ocr``: what reads scanned pages of ``--ocr`` sources (None: they cannot be read)."""

    def __init__(self, index: KnowledgeStore, store: Store, conf: KnowledgeSettings, *, out: TextIO | None = None,
                 progress: bool | None = None, clock: Callable[[], float] = time.time,
                 remote: Resolver | None = None, ocr: PageReader | None = None) -> None:
        self.index = index
        self.store = store
        self.conf = conf
        self.out = out or sys.stderr
        self.progress = progress
        self.chunker = Chunker(conf.chunk_chars, conf.chunk_overlap)
        self._clock = clock
        self._stop = threading.Event()
        self.remote = remote
        self.ocr = ocr
        self._ocr_roots: tuple[str, ...] = ()  # this run's --ocr sources: PDFs under them are read so

    def _split(self, locations: Sequence[str]) -> tuple[list[RemoteSource], list[str]]:
        """The platforms' sources among ``locations``, and the paths."""
        sources, paths = [], []
        for location in locations:
            source = self.remote(location) if self.remote is not None else None
            if source is None:
                paths.append(location)
            else:
                sources.append(source)
        return sources, paths

    def _sources(self, base: str, stored: Sequence[Source]) -> list[str]:
        configured = self.conf.bases[base].sources if base in self.conf.bases else []
        return list(dict.fromkeys([*(s.location for s in stored), *configured]))

    async def add(self, base: str, locations: Sequence[str], *, ocr: bool = False) -> IngestReport:
        """Remember ``locations`` as sources of ``base`` and index what they hold (nothing is removed).
        ``ocr``: scanned PDF pages are read by the engine, now and by every ``sync``."""
        remote, paths = self._split(locations)
        report = IngestReport()
        for source in remote:
            await self._remote(base, source, report, remove_missing=False, remember=True)
        if remote and not paths:
            return await self._index(base, [], [], remove_missing=False, report=report)
        resolved = [str(Path(p).expanduser().resolve()) for p in paths]
        files, problems = discover(resolved)
        usable = [loc for loc in resolved if not any(p.startswith(f"{loc}: ") for p in problems)]
        if usable and ocr:  # a source added before without --ocr is now read with it
            stored = {s.location: s.kind for s in await self.index.sources(base)}
            for loc in usable:
                if stored.get(loc, OCR) != OCR:
                    await self.index.remove_source(base, loc)
        if usable:
            await self.index.add_sources(base, [Source(base, loc, OCR if ocr else PATH) for loc in usable])
        stored_ocr = [s.location for s in await self.index.sources(base) if s.kind == OCR]
        self._ocr_roots = tuple(dict.fromkeys([*(usable if ocr else []), *stored_ocr]))
        return await self._index(base, files, problems, remove_missing=False, report=report)

    async def sync(self, base: str) -> IngestReport:
        """Index every source of ``base`` (stored by ``add``, and ``knowledge.bases.<base>.sources``): changed
        files again, new ones, and drop documents whose files are gone."""
        stored = await self.index.sources(base)
        self._ocr_roots = tuple(s.location for s in stored if s.kind == OCR)
        locations = self._sources(base, stored)
        if not locations:
            raise ValueError(f"knowledge base {base!r} has no sources: `kb add {base} PATH` or "
                             f"knowledge.bases.{base}.sources in the config")
        remote, locations = self._split(locations)
        report = IngestReport()
        for source in remote:
            await self._remote(base, source, report, remove_missing=True, remember=False)
        if remote and not locations:
            return await self._index(base, [], [], remove_missing=False, report=report)
        files, problems = discover(locations)
        # a source that vanished as a whole (an unmounted share) must not empty the base
        missing = [p for p in problems if p.endswith(": no such file or folder")]
        return await self._index(base, files, problems, remove_missing=not missing, report=report)

    async def remove(self, base: str, location: str) -> tuple[bool, int]:
        """Forget the source ``location`` of ``base`` and drop the documents under it: whether it was a source,
        and how many documents were dropped."""
        source = self.remote(location) if self.remote is not None else None
        if source is not None:
            was_source = await self.index.remove_source(base, source.location)
            docs = [d.doc for d in await self.index.documents(base) if d.doc.startswith(source.prefix)]
            return was_source, (await self.index.remove_documents(base, docs) if docs else 0)
        path = str(Path(location).expanduser().resolve())
        was_source = await self.index.remove_source(base, path)
        was_source = await self.index.remove_source(base, location) or was_source
        docs = [d.doc for d in await self.index.documents(base) if d.doc == path or d.doc.startswith(path + os.sep)]
        return was_source, (await self.index.remove_documents(base, docs) if docs else 0)

    def _say(self, line: str, bar: object | None) -> None:
        if bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    async def _remote(self, base: str, source: RemoteSource, report: IngestReport, *, remove_missing: bool,
                      remember: bool) -> None:
        """Index what ``source`` yields into ``report``: unchanged documents skipped, changed ones replaced, and
        (``remove_missing``) its documents no longer there dropped, once the whole source was read."""
        started = time.perf_counter()
        known = {d.doc: d for d in await self.index.documents(base) if d.doc.startswith(source.prefix)}
        seen: set[str] = set()
        try:
            async for item in source.documents():
                seen.add(item.doc)
                digest = _digest(item.text.encode(), item.title, item.url, item.mime, item.heading)
                old = known.get(item.doc)
                if old is not None and old.content_hash == digest:
                    report.unchanged += 1
                    continue
                try:
                    chunks = remote_chunks(item, self.chunker)
                except UnreadableDocument as exc:
                    line = f"{item.doc}: {exc}" + (" (the previous version stays indexed)" if old else "")
                    report.problems.append(line)
                    self._say(f"skipped {line}", None)
                    continue
                await self.index.put_document(Document(base, item.doc, item.title, digest, item.mime, url=item.url,
                                                       synced_at=self._clock()), chunks)
                report.chunks += len(chunks)
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
        except SourceUnavailable as exc:
            report.sources_failed += 1
            kept = f"; the {len(known)} document(s) indexed from it before keep serving" if known else ""
            again = "" if exc.missing else f"; `internvl-bot kb sync {base}` reads it again"
            line = f"{exc}{kept}{again}"
            report.problems.append(line)
            self._say(line, None)
            if remember and not exc.missing:
                await self.index.add_sources(base, [Source(base, source.location, source.kind)])
            report.seconds += time.perf_counter() - started
            return
        if remember:
            await self.index.add_sources(base, [Source(base, source.location, source.kind)])
        if remove_missing and known and not seen:
            # a source that read as nothing at all (a page layout the reader no longer knows, an emptied portal
            # by mistake) must not empty the base, as a folder that vanished does not: said, and kept
            line = (f"{source.location}: read no document where {len(known)} were indexed — they keep serving; "
                    f"`internvl-bot kb remove {base} {source.location}` drops them if the source is really empty")
            report.problems.append(line)
            self._say(line, None)
        elif remove_missing:
            gone = [doc for doc in known if doc not in seen]
            report.removed += await self.index.remove_documents(base, gone) if gone else 0
        report.seconds += time.perf_counter() - started

    async def _index(self, base: str, files: list[Path], problems: list[str], *, remove_missing: bool,
                     report: IngestReport | None = None) -> IngestReport:
        report = report if report is not None else IngestReport()
        report.problems.extend(problems)
        started = time.perf_counter()
        known = {d.doc: d for d in await self.index.documents(base)}
        by_hash = {d.content_hash: d.doc for d in known.values()}
        refs: dict[Path, ImageRef] = {}
        seen: set[str] = set()
        # images last: the pages showing them give their alt text and context
        ordered = [f for f in files if f.suffix.lower() not in IMAGE_TYPES]
        images = [f for f in files if f.suffix.lower() in IMAGE_TYPES]
        bar = self._bar(base, len(files))
        for problem in problems:
            self._say(f"skipped {problem}", bar)
        self._stop.clear()
        try:
            for path in ordered:
                await self._one(base, path, None, known, by_hash, refs, seen, report, bar)
            for path in images:
                await self._one(base, path, refs.pop(path, None), known, by_hash, refs, seen, report, bar)
            for path, ref in list(refs.items()):  # shown by a page, outside the sources' folders
                if path.is_file() and str(path) not in seen:
                    await self._one(base, path, ref, known, by_hash, refs, seen, report, bar)
        except BaseException:
            self._stop.set()  # Ctrl+C: the reading thread stops at the next page
            raise
        finally:
            if bar is not None:
                bar.close()
        if remove_missing:
            # a platform's documents (keyed by URL) are its source's to remove, not the folders'
            gone = [doc for doc in known if doc not in seen and not is_remote_doc(doc)]
            report.removed += await self.index.remove_documents(base, gone) if gone else 0
        await self._embed(base, report)
        report.seconds += time.perf_counter() - started
        return report

    async def _embed(self, base: str, report: IngestReport) -> None:
        """With an embeddings endpoint: vectors for every chunk of ``base`` still without one (this run's, and
        those indexed before the endpoint was configured). A failure is one line; the lexical index is
        already written and the next ``kb sync`` fills what is missing."""
        from bot.knowledge.dense import DenseKnowledge, EmbeddingsError

        if not isinstance(self.index, DenseKnowledge):
            return

        def counted(done: int) -> None:
            report.embedded = done

        try:
            report.embedded = await self.index.fill(base, counted)
        except EmbeddingsError as exc:
            line = (f"embeddings: {exc}; {report.embedded} chunk(s) embedded, the lexical index is written — "
                    f"`internvl-bot kb sync {base}` adds the missing embeddings once the endpoint answers")
            report.problems.append(line)
            self._say(line, None)

    def _bar(self, base: str, total: int):  # type: ignore[no-untyped-def]
        show = self.progress if self.progress is not None else self.out.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="doc", desc=f"kb {base}", file=self.out, dynamic_ncols=True)

    async def _one(self, base: str, path: Path, ref: ImageRef | None, known: dict[str, Document],
                   by_hash: dict[str, str], refs: dict[Path, ImageRef], seen: set[str], report: IngestReport,
                   bar: object | None) -> None:
        doc = str(path)
        seen.add(doc)
        try:
            await self._read_and_put(base, path, ref, known, by_hash, refs, report, bar)
        except UnreadableDocument as exc:
            line = f"{path}: {exc}" + (" (the previous version stays indexed)" if doc in known else "")
            report.problems.append(line)
            self._say(f"skipped {line}", bar)
        except OSError as exc:
            line = f"{path}: cannot read ({exc.strerror or exc})"
            report.problems.append(line)
            self._say(f"skipped {line}", bar)
        if bar is not None:
            bar.update(1)  # type: ignore[attr-defined]
            bar.set_postfix(pages=report.pages, chunks=report.chunks, refresh=False)  # type: ignore[attr-defined]

    async def _read_and_put(self, base: str, path: Path, ref: ImageRef | None, known: dict[str, Document],
                            by_hash: dict[str, str], refs: dict[Path, ImageRef], report: IngestReport,
                            bar: object | None) -> None:
        doc = str(path)
        data = await self._bytes(path)
        image = path.suffix.lower() in IMAGE_TYPES
        extra: list[str | bytes] = []
        if image:
            # a changed caption or page text changes what the image is found by
            extra = [c.read_bytes() for c in caption_files(path) if c.is_file()][:1]
            extra += [ref.alt, ref.context] if ref else []
        if path.suffix.lower() == ".pdf" and self._wants_ocr(path):
            extra.append(OCR)  # read without --ocr before: read again, its scanned pages now count
        digest = _digest(data, *extra)
        old = known.get(doc)
        if old is not None and old.content_hash == digest:
            report.unchanged += 1
            for found in image_refs(path, data):
                refs.setdefault(found.path, found)
            return
        twin = by_hash.get(digest)
        # a file moved within the base is not a duplicate of its old path, which is gone
        if twin is not None and twin != doc and Path(twin).is_file():
            raise UnreadableDocument(f"duplicate of {twin} (same content), not indexed twice")
        parsed = await self._parse(path, data, ref, refs, report, bar)
        blob = await self.store.save_blob(data, parsed.mime) if parsed.mime == PDF or image else ""
        await self.index.put_document(
            Document(base, doc, parsed.title, digest, parsed.mime, blob, parsed.pages, synced_at=self._clock()),
            parsed.chunks)
        by_hash[digest] = doc
        report.chunks += len(parsed.chunks)
        if old is None:
            report.added += 1
        else:
            report.updated += 1

    async def _bytes(self, path: Path) -> bytes:
        """The file's bytes; :class:`UnreadableDocument` when it is empty or over ``knowledge.max_file_bytes``."""
        size = path.stat().st_size
        if size == 0:
            raise UnreadableDocument("empty file")
        if size > self.conf.max_file_bytes:
            raise UnreadableDocument(f"{size / 1e6:.0f} MB, over knowledge.max_file_bytes "
                                     f"({self.conf.max_file_bytes / 1e6:.0f} MB)")
        return await asyncio.to_thread(path.read_bytes)

    async def _parse(self, path: Path, data: bytes, ref: ImageRef | None, refs: dict[Path, ImageRef],
                     report: IngestReport, bar: object | None) -> Parsed:
        """The file read into chunks (a scanned PDF's pages by the engine with ``--ocr``); the images its pages
        show go into ``refs``; :class:`UnreadableDocument` when no text came out of it."""
        def counted(pages: int) -> None:
            report.pages += pages
            if bar is not None and report.pages % 50 == 0:
                bar.set_postfix(pages=report.pages, chunks=report.chunks)  # type: ignore[attr-defined]

        parsed: Parsed
        if path.suffix.lower() in IMAGE_TYPES:
            parsed = await asyncio.to_thread(read, path, data, self.chunker, max_pages=self.conf.max_pages)
            if ref is not None:
                parsed = read_image(path, alt=ref.alt, context=ref.context)
        else:
            parsed = await asyncio.to_thread(read, path, data, self.chunker, max_pages=self.conf.max_pages,
                                             on_page=counted, stop=self._stop)
        for found in parsed.images:
            refs.setdefault(found.path, found)
        if parsed.pages_skipped:
            line = (f"{path}: only the first {self.conf.max_pages} of {parsed.pages} pages indexed "
                    "(knowledge.max_pages)")
            report.problems.append(line)
            self._say(f"cut {line}", bar)
        if parsed.mime == PDF and self._wants_ocr(path):
            parsed = await self._read_scanned(path, data, parsed, report, bar)
        elif parsed.mime == PDF and parsed.chunks and (scanned := _scanned_pages(parsed)):
            self._say(f"{path}: {len(scanned)} of {parsed.pages} pages have no text layer (scanned?) and add no "
                      "text — `internvl-bot kb add --ocr` reads them with the engine", bar)
        if not parsed.chunks:
            hint = (" — `internvl-bot kb add --ocr` reads its pages with the engine" if parsed.mime == PDF
                    and not self._wants_ocr(path) else "")
            raise UnreadableDocument(f"no text found (a scanned PDF without a text layer?){hint}")
        return parsed

    def _wants_ocr(self, path: Path) -> bool:
        """Is ``path`` under a source added with ``--ocr``?"""
        doc = str(path)
        return any(doc == root or doc.startswith(root.rstrip(os.sep) + os.sep) for root in self._ocr_roots)

    async def _read_scanned(self, path: Path, data: bytes, parsed: Parsed, report: IngestReport,
                            bar: object | None) -> Parsed:
        """``parsed`` with each page whose text layer is (nearly) empty read by the engine instead, its page
        number kept."""
        scanned = _scanned_pages(parsed)
        if not scanned:
            return parsed
        if self.ocr is None:
            raise OcrUnavailable("kb --ocr: no engine to read scanned pages with (configure engine.*)")
        chunks = [c for c in parsed.chunks if (c.page or 0) not in scanned]
        for number in scanned:
            if self._stop.is_set():
                raise InterruptedError("stopped")
            try:
                image = await asyncio.to_thread(render_page, data, number, max_tiles=OCR_TILES, name=path.name)
            except BotError as exc:  # the page does not render: the rest of the document is read
                self._say(f"{path}: page {number} not read by OCR ({exc})", bar)
                continue
            reading = clean(await self.ocr.read_page(image, page=number, name=path.name))
            chunks.extend(Chunk(piece, page=number) for piece in self.chunker.split(reading))
            report.ocr_pages += 1
            if bar is not None:
                bar.set_postfix(pages=report.pages, ocr=report.ocr_pages, chunks=report.chunks)  # type: ignore[attr-defined]
        chunks.sort(key=lambda c: c.page or 0)  # the document's order: a search ties break by position
        return replace(parsed, chunks=chunks)


def _scanned_pages(parsed: Parsed) -> list[int]:
    """The pages read of a PDF whose text layer holds less than :data:`OCR_MIN_CHARS` characters."""
    text: dict[int, int] = {}
    for chunk in parsed.chunks:
        text[chunk.page or 0] = text.get(chunk.page or 0, 0) + len(chunk.text)
    return [n for n in range(1, (parsed.pages or 0) - parsed.pages_skipped + 1) if text.get(n, 0) < OCR_MIN_CHARS]


__all__ = ["OCR", "PATH", "IngestReport", "Ingester", "discover"]
