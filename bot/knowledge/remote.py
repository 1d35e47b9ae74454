"""Knowledge read from platforms rather than files: help-center articles, a helpdesk's knowledge base, solved
tickets.

A :class:`RemoteSource` is named by a location string kept as the base's source (``chatwoot-portal:help``,
``django-helpdesk-kb``, ``solved-tickets:chatwoot``), so ``kb sync`` reads it again with no arguments. It
yields :class:`RemoteDocument` values; :class:`~bot.knowledge.ingest.Ingester` indexes them with the rules it
applies to files: a document whose content is unchanged is skipped, a changed one is replaced in one
transaction, and one that is gone is removed only after the whole source was read. A source that cannot be
read raises :class:`SourceUnavailable` with one line naming the part, the URL and the fix; what was indexed
before keeps serving.

The platforms' code lives in ``adapters/`` (``bot/`` imports no adapter): the command line hands the ingester
a :data:`Resolver` that turns a location into a source, or says it is a path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.knowledge.base import Chunk
from bot.knowledge.chunking import (
    HTML,
    MARKDOWN,
    TEXT,
    Chunker,
    UnreadableDocument,
    clean,
    read_html,
    read_markdown,
)


@dataclass(frozen=True, slots=True)
class RemoteDocument:
    """One document a platform gave. ``doc``: its key within the base (the article's or ticket's URL, under the
    source's ``prefix``); ``text``: in ``mime`` (Markdown, HTML or plain text); ``url``: the public link a
    Sources footer shows ("" when there is none: a ticket is cited by its title only); ``heading``: a category
    put before each chunk's own heading."""

    doc: str
    title: str
    text: str
    mime: str = MARKDOWN
    url: str = ""
    heading: str = ""


class SourceUnavailable(Exception):
    """A remote source could not be read (whole). ``str()`` is one line naming the part, the URL (never a
    credential) and the fix. ``missing``: the source itself does not exist (a portal slug nobody has), so it is
    not remembered either."""

    def __init__(self, line: str, *, missing: bool = False) -> None:
        super().__init__(line)
        self.missing = missing


@runtime_checkable
class RemoteSource(Protocol):
    """A platform's documents (see the module docstring). ``kind``: what ``Source.kind`` records
    (``chatwoot-portal``); ``location``: the string stored and shown; ``prefix``: every ``doc`` it yields starts
    with it, which is how ``sync`` and ``remove`` find the documents that are its own."""

    kind: str
    location: str
    prefix: str

    def documents(self) -> AsyncIterator[RemoteDocument]:
        """Every document of the source, fetched page by page; raises :class:`SourceUnavailable`."""
        ...


#: A location -> its remote source, or None when the location is a file or folder. Raises ``ValueError`` (one
#: line) for a location that names a platform but cannot be used (an unknown platform, a missing setting).
Resolver = Callable[[str], "RemoteSource | None"]


def is_remote_doc(doc: str) -> bool:
    """Whether a document key is a URL (a remote document) rather than a file's path."""
    return "://" in doc


def remote_chunks(document: RemoteDocument, chunker: Chunker) -> list[Chunk]:
    """The chunks of ``document``, read as files of its type are (headings kept), each under its category;
    :class:`UnreadableDocument` when it holds no text."""
    name = Path("document")
    if document.mime == MARKDOWN:
        chunks = read_markdown(document.text, name, chunker).chunks
    elif document.mime == HTML:
        chunks = read_html(document.text, name, chunker).chunks
    elif document.mime == TEXT:
        chunks = [Chunk(piece) for piece in chunker.split(clean(document.text))]
    else:
        raise UnreadableDocument(f"unsupported content type {document.mime}")
    if not chunks:
        raise UnreadableDocument("no text")
    if document.heading:
        chunks = [Chunk(c.text, c.page, f"{document.heading} > {c.heading}" if c.heading else document.heading)
                  for c in chunks]
    return chunks


__all__ = ["RemoteDocument", "RemoteSource", "Resolver", "SourceUnavailable", "is_remote_doc", "remote_chunks"]
