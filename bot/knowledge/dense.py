"""Optional dense retrieval: embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (vLLM, TEI,
LMDeploy), fused with the lexical results by reciprocal rank fusion.

* **Ingest.** ``kb add``/``kb sync`` write the lexical index first, then embed every chunk of the base that
  has no vector for ``knowledge.embeddings.model`` (:meth:`DenseKnowledge.fill`): new chunks, chunks
  indexed before an endpoint was configured, and all of them after a change of model. An endpoint that
  fails stops the embedding with one line; the lexical index is already written, and the next ``kb sync``
  fills what is missing.
* **Search.** The question is embedded, the backend returns the chunks nearest to it (cosine of unit
  vectors), and the lexical candidates and the dense ones are merged by reciprocal rank fusion
  (``sum 1 / (60 + rank)``). A passage is relevant when its lexical score reaches ``knowledge.min_score``
  **or** its cosine similarity reaches ``knowledge.embeddings.min_similarity``; its ``score`` is the
  larger of the two (both 0-1), the order is the fused one. An endpoint that fails at search time gives
  one warning a minute and the lexical results: a turn never fails because of it.

Vectors are normalised to unit length before they are stored, so a dot product is the cosine everywhere.
Each backend keeps them beside its chunks (``kb_vectors``: SQLite float32 blobs ranked with numpy,
PostgreSQL ``real[]`` ranked in SQL, a dict in memory) and drops them with their chunks.
"""

from __future__ import annotations

import logging
import math
import os
import time
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from bot.knowledge.base import KnowledgeStore, Passage
from bot.knowledge.text import candidate_limit
from bot.ops.logs import Throttle, redact, register_secret

if TYPE_CHECKING:
    from bot.config import EmbeddingsSettings

log = logging.getLogger(__name__)

#: The usual constant of reciprocal rank fusion (Cormack et al., 2009): damps the weight of the first ranks.
RRF_K = 60
#: Seconds between two warnings about a failing endpoint at search time.
WARN_EVERY = 60.0
#: A question waits at most this long for its embedding; ingestion, with big batches, longer.
SEARCH_TIMEOUT = 5.0
INGEST_TIMEOUT = 120.0


class EmbeddingsError(Exception):
    """The endpoint could not be reached or gave no usable answer; the message names the URL, never the key
    (it is redacted even where an endpoint echoes it back)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero: it is similar to nothing)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else [0.0 for _ in vector]


def pack(vector: Sequence[float]) -> bytes:
    """Little-endian float32, the layout sqlite-vec reads too."""
    return array("f", vector).tobytes()


def unpack(data: bytes) -> list[float]:
    out = array("f")
    out.frombytes(data)
    return out.tolist()


class Embedder:
    """A client of one OpenAI-compatible embeddings endpoint (``knowledge.embeddings``).

    ``url``: the API base (``http://gpu1:8000/v1``); ``api_key``: sent as a bearer token, never logged.
    Each call opens its own connection pool, so the client is safe to use from any event loop (the CLI
    runs one per command)."""

    def __init__(self, url: str, model: str, *, api_key: str = "", dimensions: int | None = None, batch: int = 64,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.dimensions = dimensions
        self.batch = batch
        self._api_key = api_key
        self._transport = transport

    @classmethod
    def from_settings(cls, conf: EmbeddingsSettings) -> Embedder | None:
        """The configured endpoint, None when ``knowledge.embeddings.url`` is empty."""
        if not conf.url:
            return None
        key = os.environ.get(conf.api_key_env, "") if conf.api_key_env else ""
        register_secret(key)  # whatever the variable is called, its value never reaches a log line
        return cls(conf.url, conf.model, api_key=key, dimensions=conf.dimensions, batch=conf.batch)

    async def embed(self, texts: Sequence[str], *, seconds: float = INGEST_TIMEOUT) -> list[list[float]]:
        """Unit vectors of ``texts``, in order, ``batch`` texts per request, each request given ``seconds``.
        Raises :class:`EmbeddingsError`."""
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        out: list[list[float]] = []
        endpoint = f"{self.url}/embeddings"
        try:
            async with httpx.AsyncClient(timeout=seconds, headers=headers, transport=self._transport) as client:
                for start in range(0, len(texts), self.batch):
                    part = list(texts[start:start + self.batch])
                    payload: dict[str, Any] = {"model": self.model, "input": part, "encoding_format": "float"}
                    if self.dimensions:
                        payload["dimensions"] = self.dimensions
                    response = await client.post(endpoint, json=payload)
                    if response.status_code != 200:
                        raise EmbeddingsError(f"{endpoint} said HTTP {response.status_code}: {response.text[:200]}")
                    out.extend(self._vectors(response.json(), len(part), endpoint))
        except httpx.HTTPError as exc:
            raise EmbeddingsError(f"cannot reach {endpoint} ({type(exc).__name__}: {exc})") from exc
        except ValueError as exc:  # a body that is not JSON
            raise EmbeddingsError(f"{endpoint} answered something other than JSON ({exc})") from exc
        return out

    @staticmethod
    def _vectors(body: Any, n: int, endpoint: str) -> list[list[float]]:
        try:
            data = sorted(body["data"], key=lambda item: item["index"])
            vectors = [unit([float(x) for x in item["embedding"]]) for item in data]
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingsError(f"{endpoint} answered without OpenAI's embeddings shape ({exc!r})") from exc
        if len(vectors) != n or len({len(v) for v in vectors}) > 1:
            raise EmbeddingsError(f"{endpoint} returned {len(vectors)} vectors for {n} texts")
        return vectors


class VectorBackend(Protocol):
    """What a backend adds for dense retrieval (SQLite, PostgreSQL and memory implement it)."""

    min_score: float

    async def lexical(self, bases: Sequence[str], query: str, k: int, min_score: float) -> list[Passage]:
        """The lexical search with an explicit threshold (0: every scored candidate)."""
        ...

    async def missing_vectors(self, base: str, model: str, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` chunks of ``base`` without a vector of ``model``: (chunk id, text to embed)."""
        ...

    async def put_vectors(self, model: str, vectors: Sequence[tuple[int, Sequence[float]]]) -> None:
        """Store unit vectors by chunk id (replacing older ones); ids of chunks gone since are ignored."""
        ...

    async def nearest(self, bases: Sequence[str], model: str, vector: Sequence[float], n: int) -> list[Passage]:
        """The ``n`` chunks of ``bases`` most similar to the unit ``vector``, best first, ``score`` = cosine."""
        ...


def _key(p: Passage) -> tuple[Any, ...]:
    return (p.base, p.doc, p.page, p.heading, p.text)


def fuse(lexical: Sequence[Passage], dense: Sequence[Passage], k: int, min_score: float,
         min_similarity: float) -> list[Passage]:
    """Reciprocal rank fusion of two ranked lists (see the module docstring): the ``k`` best relevant
    passages, each with ``score`` = max(lexical score, cosine)."""
    fused: dict[tuple[Any, ...], float] = {}
    passages: dict[tuple[Any, ...], Passage] = {}
    lex_score: dict[tuple[Any, ...], float] = {}
    similarity: dict[tuple[Any, ...], float] = {}
    for ranking, scores in ((lexical, lex_score), (dense, similarity)):
        for position, p in enumerate(ranking, 1):
            key = _key(p)
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + position)
            passages.setdefault(key, p)
            scores[key] = p.score
    relevant = [key for key in fused
                if (lex_score.get(key, 0.0) >= min_score and lex_score.get(key, 0.0) > 0)
                or similarity.get(key, -2.0) >= min_similarity]
    relevant.sort(key=lambda key: -fused[key])
    out = []
    for key in relevant[:k]:
        p = passages[key]
        best = max(lex_score.get(key, 0.0), similarity.get(key, 0.0))
        out.append(Passage(base=p.base, doc=p.doc, title=p.title, text=p.text, page=p.page, heading=p.heading,
                           score=round(best, 4), url=p.url, blob=p.blob, mime=p.mime))
    return out


class DenseKnowledge:
    """A :class:`KnowledgeStore` whose search fuses the lexical results of ``inner`` with its vectors'.
    Everything else is ``inner``'s (writes, bases, ``min_score``)."""

    def __init__(self, inner: Any, embedder: Embedder, *, min_similarity: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner: VectorBackend = inner
        self.embedder = embedder
        self.min_similarity = min_similarity
        self._warnings = Throttle(WARN_EVERY, clock=clock)

    def __getattr__(self, name: str) -> Any:
        # only reached for what this class does not define: the write side and the listings
        return getattr(self.__dict__["inner"], name)

    @property
    def min_score(self) -> float:
        return self.inner.min_score

    @min_score.setter
    def min_score(self, value: float) -> None:
        self.inner.min_score = value

    async def fill(self, base: str, on_progress: Callable[[int], None] | None = None) -> int:
        """Embed the chunks of ``base`` that have no vector of the model yet; how many were embedded. Raises
        :class:`EmbeddingsError` (what was stored before it stays)."""
        done = 0
        while True:
            todo = await self.inner.missing_vectors(base, self.embedder.model, self.embedder.batch * 4)
            if not todo:
                return done
            vectors = await self.embedder.embed([text for _, text in todo])
            await self.inner.put_vectors(self.embedder.model, [(cid, v) for (cid, _), v in zip(todo, vectors, strict=True)])
            done += len(todo)
            if on_progress is not None:
                on_progress(done)

    async def search(self, bases: Sequence[str], query: str, k: int = 5) -> list[Passage]:
        if not bases or k <= 0 or not query.strip():
            return []
        n = candidate_limit(k)
        lexical = await self.inner.lexical(bases, query, n, 0.0)
        try:
            [vector] = await self.embedder.embed([query], seconds=SEARCH_TIMEOUT)
            self._warnings.reset("down")  # answering again: the next failure is said at once
        except EmbeddingsError as exc:
            held = self._warnings.allow("down")
            if held is not None:
                since = f"; {held} more search(es) since the last warning" if held else ""
                log.warning("knowledge: embeddings unavailable, searching lexically only: %s (knowledge.embeddings.url;"
                            " at most one warning a minute%s)", exc, since)
            return [p for p in lexical if p.score >= self.min_score][:k]
        dense = await self.inner.nearest(bases, self.embedder.model, vector, n)
        return fuse(lexical, dense, k, self.min_score, self.min_similarity)


def dense(index: KnowledgeStore, conf: EmbeddingsSettings) -> KnowledgeStore:
    """``index`` with dense retrieval when ``knowledge.embeddings.url`` is set, else ``index`` itself."""
    embedder = Embedder.from_settings(conf)
    if embedder is None:
        return index
    return DenseKnowledge(index, embedder, min_similarity=conf.min_similarity)  # type: ignore[return-value]


__all__ = ["RRF_K", "DenseKnowledge", "Embedder", "EmbeddingsError", "VectorBackend", "dense", "fuse", "pack",
           "unit", "unpack"]
