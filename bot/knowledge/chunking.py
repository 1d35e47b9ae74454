"""Reading documents into chunks: PDF (text layer, a page number on every chunk), Markdown (by headings, then
paragraphs; the heading path on every chunk), HTML (text and headings), plain text, and images with a caption.

Each reader returns a :class:`Parsed` or raises :class:`UnreadableDocument` with one line saying why (an
encrypted or corrupt PDF, an empty file, a binary file named ``.md``). PDFs are read a page at a time and
each page is closed before the next (pdfium keeps only the file open): memory stays bounded for a
2,000-page manual, and ``max_pages`` cuts longer ones. Markdown goes through LangChain's
``MarkdownHeaderTextSplitter`` then ``RecursiveCharacterTextSplitter`` (paragraphs, then lines, then
words); the other formats through the latter.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from bot.knowledge.base import Chunk

PDF = "application/pdf"
MARKDOWN = "text/markdown"
HTML = "text/html"
TEXT = "text/plain"
IMAGE_TYPES: dict[str, str] = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                               ".gif": "image/gif", ".webp": "image/webp"}
TEXT_TYPES: dict[str, str] = {".md": MARKDOWN, ".markdown": MARKDOWN, ".html": HTML, ".htm": HTML, ".txt": TEXT,
                              ".text": TEXT, ".rst": TEXT}
#: What ingestion reads (other files in a folder are passed over silently; named on the command line, refused).
SUPPORTED = {".pdf": PDF, **TEXT_TYPES, **IMAGE_TYPES}
#: Caption files beside an image, in the order looked for: ``pump.png.txt``, ``pump.txt``, ``pump.md``.
CAPTION_SUFFIXES = (".txt", ".md")

_HEADINGS = [("#", "h1"), ("##", "h2"), ("###", "h3"), ("####", "h4")]
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_H1 = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.M)
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n\s*(\n\s*)+")


class UnreadableDocument(Exception):
    """A file that cannot be indexed; ``str()`` is the one-line reason shown to the person running ``kb``."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image a Markdown or HTML document shows, with its alt text and the paragraph around it."""

    path: Path
    alt: str
    context: str


@dataclass(slots=True)
class Parsed:
    """What a reader made of one file."""

    title: str
    mime: str
    chunks: list[Chunk]
    pages: int | None = None
    #: pages a PDF has beyond ``max_pages``, not read
    pages_skipped: int = 0
    images: list[ImageRef] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Chunker:
    """Cuts text into chunks of at most ``size`` characters with ``overlap`` repeated between neighbours."""

    size: int = 1200
    overlap: int = 150

    def split(self, text: str) -> list[str]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter(chunk_size=self.size, chunk_overlap=min(self.overlap, self.size // 2))
        return [piece.strip() for piece in splitter.split_text(text) if piece.strip()]


def clean(text: str) -> str:
    """Spaces collapsed, at most one blank line, no NULs or form feeds (PDF text layers have them)."""
    text = text.replace("\x00", "").replace("\x0c", "\n").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def title_from_name(path: Path) -> str:
    """``pump_x200-manual.pdf`` -> ``pump x200 manual``: a title when the document has none."""
    return re.sub(r"[_\-.]+", " ", path.stem).strip() or path.name


def decode_text(data: bytes, path: Path) -> str:
    """The text of a file that claims to be text; UnreadableDocument when it is empty or binary."""
    if not data.strip():
        raise UnreadableDocument("empty file")
    if b"\x00" in data[:8192]:
        raise UnreadableDocument(f"binary content in a {path.suffix or 'text'} file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # old Windows text files; control characters other than whitespace mean it is not text at all
    text = data.decode("cp1252", errors="replace")
    controls = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\t\n\r\f")
    if controls > 8 or text.count("\ufffd") > len(text) // 100:
        raise UnreadableDocument(f"binary content in a {path.suffix or 'text'} file")
    return text


# -- PDF --------------------------------------------------------------------------------------


def read_pdf(path: Path, chunker: Chunker, *, max_pages: int, on_page: Callable[[int], None] | None = None,
             stop: threading.Event | None = None) -> Parsed:
    """The text layer of each page, chunked, page numbers kept (a scanned page without text adds nothing)."""
    import pypdfium2 as pdfium

    if path.stat().st_size == 0:
        raise UnreadableDocument("empty file")
    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        reason = str(exc).lower()
        if "password" in reason:
            raise UnreadableDocument("encrypted PDF (password protected): decrypt it, then add it again") from None
        raise UnreadableDocument(f"not a readable PDF ({exc})") from None
    try:
        total = len(pdf)
        meta_title = ""
        try:
            meta_title = (pdf.get_metadata_dict().get("Title") or "").strip()
        except pdfium.PdfiumError:
            meta_title = ""
        chunks: list[Chunk] = []
        read = min(total, max_pages)
        for index in range(read):
            if stop is not None and stop.is_set():
                raise InterruptedError("stopped")
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = clean(textpage.get_text_range())
                finally:
                    textpage.close()
            finally:
                page.close()
            chunks.extend(Chunk(piece, page=index + 1) for piece in chunker.split(text))
            if on_page is not None:
                on_page(1)
        return Parsed(meta_title or title_from_name(path), PDF, chunks, pages=total, pages_skipped=total - read)
    finally:
        pdf.close()


# -- Markdown ---------------------------------------------------------------------------------


def _images(text: str, folder: Path) -> list[ImageRef]:
    """Local images a Markdown text shows, with the paragraph each sits in (remote ones are not read)."""
    found = []
    paragraphs = re.split(r"\n\s*\n", text)
    for i, paragraph in enumerate(paragraphs):
        for alt, src in _MD_IMAGE.findall(paragraph):
            if "://" in src or src.startswith("data:"):
                continue
            # the paragraphs before and after: an image on a line of its own is explained around it
            around = "\n\n".join(paragraphs[max(0, i - 1):i + 2])
            context = clean(_MD_IMAGE.sub(lambda m: m.group(1), around))[:800]
            found.append(ImageRef((folder / src).resolve(), alt.strip(), context))
    return found


def read_markdown(text: str, path: Path, chunker: Chunker) -> Parsed:
    """Sections by heading (#..####), each cut into paragraphs; each chunk carries ``H1 > H2 > H3``."""
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    h1 = _MD_H1.search(text)
    title = h1.group(1).strip() if h1 else title_from_name(path)
    splitter = MarkdownHeaderTextSplitter(headers_to_split_on=_HEADINGS, strip_headers=True)
    chunks: list[Chunk] = []
    for section in splitter.split_text(text):
        heading = " > ".join(section.metadata[key] for _, key in _HEADINGS if section.metadata.get(key))
        body = clean(_MD_IMAGE.sub(lambda m: m.group(1), section.page_content))
        chunks.extend(Chunk(piece, heading=heading) for piece in chunker.split(body))
    if not chunks and clean(text):
        raise UnreadableDocument("no text besides headings")
    return Parsed(title, MARKDOWN, chunks, images=_images(text, path.parent))


# -- HTML -------------------------------------------------------------------------------------


class _HTMLText(HTMLParser):
    """Sections of an HTML page: (heading path, text), its <title>, and the images it shows with alt text."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "nav", "footer", "head"})
    BLOCKS = frozenset({"p", "div", "li", "tr", "br", "section", "article", "table", "ul", "ol", "pre", "blockquote",
                        "dd", "dt", "figcaption"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.sections: list[tuple[str, list[str]]] = [("", [])]
        self.path: list[tuple[int, str]] = []
        self.images: list[tuple[str, str, int]] = []  # src, alt, section index
        self._skip = 0
        self._in_title = False
        self._heading: int | None = None
        self._heading_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading, self._heading_text = int(tag[1]), []
        elif tag == "img":
            values = dict(attrs)
            if values.get("src"):
                self.images.append((values["src"] or "", (values.get("alt") or "").strip(), len(self.sections) - 1))
        elif tag in self.BLOCKS:
            self.sections[-1][1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif self._heading is not None and tag == f"h{self._heading}":
            text = clean(" ".join(self._heading_text))
            self.path = [(level, t) for level, t in self.path if level < self._heading] + [(self._heading, text)]
            self.sections.append((" > ".join(t for _, t in self.path if t), []))
            self._heading = None
        elif tag in self.BLOCKS:
            self.sections[-1][1].append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._skip:
            return
        elif self._heading is not None:
            self._heading_text.append(data)
        else:
            self.sections[-1][1].append(data)


def read_html(text: str, path: Path, chunker: Chunker) -> Parsed:
    """Text under each heading (h1-h6), chunked, the heading path on each chunk; navigation, scripts and
    styles left out."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    chunks: list[Chunk] = []
    for heading, parts in parser.sections:
        chunks.extend(Chunk(piece, heading=heading) for piece in chunker.split(clean("".join(parts))))
    first_heading = next((h.split(" > ")[0] for h, _ in parser.sections if h), "")
    title = clean(parser.title) or first_heading or title_from_name(path)
    images = []
    for src, alt, section in parser.images:
        if "://" in src or src.startswith("data:"):
            continue
        context = clean("".join(parser.sections[section][1]))[:600]
        images.append(ImageRef((path.parent / src).resolve(), alt, context))
    if not chunks:
        raise UnreadableDocument("no text in this HTML page")
    return Parsed(title, HTML, chunks, images=images)


# -- plain text and images --------------------------------------------------------------------


def read_text(text: str, path: Path, chunker: Chunker) -> Parsed:
    """Paragraphs of a text file; its first line is the title when short, else the file name."""
    cleaned = clean(text)
    first = cleaned.split("\n", 1)[0].strip()
    title = first if 0 < len(first) <= 100 else title_from_name(path)
    return Parsed(title, TEXT, [Chunk(piece) for piece in chunker.split(cleaned)])


def caption_files(image: Path) -> list[Path]:
    """Where an image's caption may be: ``x.png.txt``, ``x.png.md``, ``x.txt``, ``x.md``."""
    return [image.with_name(image.name + s) for s in CAPTION_SUFFIXES] + [image.with_suffix(s) for s in CAPTION_SUFFIXES]


def read_image(path: Path, *, alt: str = "", context: str = "") -> Parsed:
    """An image as one chunk: its caption (a sidecar file), the alt text and paragraph of the page showing it,
    and its file name, so any of them finds it; the image itself is kept as the document's blob."""
    caption = ""
    for candidate in caption_files(path):
        if candidate.is_file():
            caption = clean(decode_text(candidate.read_bytes(), candidate))
            break
    name = title_from_name(path)
    parts = [p for p in (caption, alt, context) if p]
    title = (caption.split("\n", 1)[0][:100] if caption else alt[:100]) or name
    text = "\n".join([*dict.fromkeys(parts), f"(image: {path.name})"])
    return Parsed(title, IMAGE_TYPES.get(path.suffix.lower(), "image/*"), [Chunk(text, heading=name)])


def image_refs(path: Path, data: bytes) -> list[ImageRef]:
    """The local images a Markdown or HTML file shows (without chunking it): an unchanged page still gives
    its images their alt text and context."""
    mime = TEXT_TYPES.get(path.suffix.lower())
    if mime not in (MARKDOWN, HTML):
        return []
    try:
        text = decode_text(data, path)
        return _images(text, path.parent) if mime == MARKDOWN else read_html(text, path, Chunker()).images
    except UnreadableDocument:
        return []


def _check_image(data: bytes) -> None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableDocument(f"not a readable image ({exc.__class__.__name__})") from None


def read(path: Path, data: bytes, chunker: Chunker, *, max_pages: int,
         on_page: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> Parsed:
    """Read one file of any supported type (``data``: its bytes, already read for its hash)."""
    suffix = path.suffix.lower()
    if not data:
        raise UnreadableDocument("empty file")
    if suffix == ".pdf":
        return read_pdf(path, chunker, max_pages=max_pages, on_page=on_page, stop=stop)
    if suffix in IMAGE_TYPES:
        _check_image(data)
        return read_image(path)
    mime = TEXT_TYPES.get(suffix)
    if mime is None:
        raise UnreadableDocument(f"unsupported file type {suffix or '(no extension)'}")
    text = decode_text(data, path)
    if mime == MARKDOWN:
        return read_markdown(text, path, chunker)
    if mime == HTML:
        return read_html(text, path, chunker)
    return read_text(text, path, chunker)


__all__ = [
    "PDF", "SUPPORTED", "Chunker", "ImageRef", "Parsed", "UnreadableDocument", "caption_files", "clean", "image_refs",
    "read",
    "read_html", "read_image", "read_markdown", "read_pdf", "read_text",
]
