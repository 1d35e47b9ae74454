"""In-memory :class:`~bot.knowledge.base.KnowledgeStore`: an inverted index over chunks and BM25, for tests,
the bench and a :class:`~bot.store.memory.MemoryStore`. Nothing survives the process."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.knowledge.base import BaseSummary, Chunk, Document, Passage, Source
from bot.knowledge.text import (
    MIN_SCORE,
    LexicalSearch,
    Stats,
    body,
    candidate,
    candidate_limit,
    candidate_terms,
    rank,
    settle,
    terms,
)


@dataclass(frozen=True, slots=True)
class _Stored:
    document: Document
    chunk: Chunk
    terms: frozenset[str]
    length: int


class MemoryKnowledge(LexicalSearch):
    """See the module docstring. ``min_score``: passages scoring less are not returned."""

    def __init__(self, min_score: float = MIN_SCORE, clock: Callable[[], float] = time.time) -> None:
        self.min_score = min_score
        self._clock = clock
        self._ids = itertools.count(1)
        self._sources: dict[str, list[Source]] = {}
        self._documents: dict[tuple[str, str], Document] = {}
        self._doc_chunks: dict[tuple[str, str], list[int]] = {}
        self._chunks: dict[int, _Stored] = {}
        self._postings: dict[str, set[int]] = {}
        self._length = 0
        self._vectors: dict[int, tuple[str, list[float]]] = {}  # chunk id -> (model, unit vector)

    def blobs(self) -> set[str]:
        """The stored originals the documents refer to (the store keeps them: see MemoryStore)."""
        return {d.blob for d in self._documents.values() if d.blob}

    async def add_sources(self, base: str, sources: Sequence[Source]) -> None:
        known = self._sources.setdefault(base, [])
        for source in sources:
            if all(s.location != source.location for s in known):
                known.append(source)

    async def sources(self, base: str) -> list[Source]:
        return list(self._sources.get(base, ()))

    async def remove_source(self, base: str, location: str) -> bool:
        known = self._sources.get(base, [])
        kept = [s for s in known if s.location != location]
        self._sources[base] = kept
        return len(kept) != len(known)

    async def documents(self, base: str) -> list[Document]:
        return sorted((d for (b, _), d in self._documents.items() if b == base), key=lambda d: d.doc)

    def _drop(self, key: tuple[str, str]) -> None:
        for cid in self._doc_chunks.pop(key, ()):
            stored = self._chunks.pop(cid)
            self._vectors.pop(cid, None)
            self._length -= stored.length
            for term in stored.terms:
                posting = self._postings[term]
                posting.discard(cid)
                if not posting:
                    del self._postings[term]
        self._documents.pop(key, None)

    async def put_document(self, document: Document, chunks: Sequence[Chunk]) -> None:
        # computed before anything changes: a failure leaves the previous version in place
        prepared = []
        for chunk in chunks:
            found = terms(body(document.title, chunk.heading, chunk.text))
            prepared.append(_Stored(document, chunk, frozenset(found), len(found)))
        key = (document.base, document.doc)
        self._sources.setdefault(document.base, [])
        self._drop(key)
        self._documents[key] = document
        ids = self._doc_chunks[key] = []
        for stored in prepared:
            cid = next(self._ids)
            ids.append(cid)
            self._chunks[cid] = stored
            self._length += stored.length
            for term in stored.terms:
                self._postings.setdefault(term, set()).add(cid)

    async def remove_documents(self, base: str, docs: Sequence[str]) -> int:
        found = [(base, d) for d in docs if (base, d) in self._documents]
        for key in found:
            self._drop(key)
        return len(found)

    async def remove_base(self, base: str) -> bool:
        existed = base in self._sources or any(b == base for b, _ in self._documents)
        for key in [k for k in self._documents if k[0] == base]:
            self._drop(key)
        self._sources.pop(base, None)
        return existed

    async def bases(self) -> list[BaseSummary]:
        names = set(self._sources) | {b for b, _ in self._documents}
        out = []
        for name in sorted(names):
            docs = [d for (b, _), d in self._documents.items() if b == name]
            chunks = sum(len(self._doc_chunks[(name, d.doc)]) for d in docs)
            out.append(BaseSummary(name, len(docs), chunks, tuple(self._sources.get(name, ())),
                                   max((d.synced_at for d in docs), default=None)))
        return out

    async def _lexical(self, bases: Sequence[str], query: str, qterms: list[str], k: int,
                       min_score: float) -> list[Passage]:
        stats = Stats(len(self._chunks), self._length, {t: len(self._postings.get(t, ())) for t in qterms})
        qterms = settle(qterms, stats)
        wanted = set(bases)
        hits: Counter[int] = Counter()
        for term in candidate_terms(qterms, stats):
            # a rough first rank (the IDF of the terms a chunk holds), as the databases' own ranking is
            for cid in self._postings.get(term, ()):
                if self._chunks[cid].document.base in wanted:
                    hits[cid] += stats.idf(term)
        best = sorted(hits, key=lambda cid: (-hits[cid], cid))[:candidate_limit(k)]
        candidates = []
        for cid in best:
            d, c = self._chunks[cid].document, self._chunks[cid].chunk
            candidates.append(candidate(d.base, d.doc, d.title, c.text, c.page, c.heading, d.url, d.blob, d.mime))
        return rank(qterms, candidates, stats, k, min_score)

    # -- dense retrieval (bot/knowledge/dense.py) -----------------------------------------

    async def missing_vectors(self, base: str, model: str, limit: int) -> list[tuple[int, str]]:
        out = []
        for cid, stored in self._chunks.items():
            if stored.document.base == base and self._vectors.get(cid, ("",))[0] != model:
                out.append((cid, body(stored.document.title, stored.chunk.heading, stored.chunk.text)))
                if len(out) >= limit:
                    break
        return out

    async def put_vectors(self, model: str, vectors: Sequence[tuple[int, Sequence[float]]]) -> None:
        for cid, vector in vectors:
            if cid in self._chunks:
                self._vectors[cid] = (model, list(vector))

    async def nearest(self, bases: Sequence[str], model: str, vector: Sequence[float], n: int) -> list[Passage]:
        wanted = set(bases)
        scored = sorted(((sum(a * b for a, b in zip(v, vector, strict=True)), cid) for cid, (m, v) in self._vectors.items()
                         if m == model and len(v) == len(vector) and self._chunks[cid].document.base in wanted),
                        key=lambda item: (-item[0], item[1]))
        out = []
        for sim, cid in scored[:n]:
            d, c = self._chunks[cid].document, self._chunks[cid].chunk
            out.append(Passage(base=d.base, doc=d.doc, title=d.title, text=c.text, page=c.page, heading=c.heading,
                               score=round(sim, 4), url=d.url, blob=d.blob, mime=d.mime))
        return out


__all__ = ["MemoryKnowledge"]
