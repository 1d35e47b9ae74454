"""How text becomes search terms, and how every backend scores a candidate chunk.

Each backend finds candidates with its own full-text index (FTS5, tsvector, an inverted dict); the final
score is computed here, identically for all, from the same statistics (each term's document frequency,
the number of chunks, their average length), which every backend keeps in the same transactions as the
chunks. That makes one threshold meaningful everywhere.

The score is BM25 divided by the sum of the query terms' IDF, capped at 1: about "the share of the
query's information the chunk contains". A chunk holding each query term once, at average length, scores
1.0; one holding only the common words of the query scores little; a query whose distinctive words
appear nowhere in the base (off-topic) scores low against every chunk, because a word no chunk has
carries the highest IDF and counts fully in the denominator. BM25 itself is unnormalised (it grows with
the query's length and the corpus), which is why it is not the score shown.

Terms: NFKD-folded, diacritics removed, case-folded runs of letters and digits (what FTS5's ``unicode61
remove_diacritics 2`` makes of Latin, Greek and Cyrillic text), Latin-script words lightly stemmed
(:func:`stem`: plurals, "-ing", "-ed"), with runs of Chinese, Japanese or Korean
characters cut into overlapping character pairs (those scripts put no spaces between words; a pair is
the usual unit of CJK retrieval). A short list of question words (English, German, French, Spanish) is
dropped from queries only: "how do I" must not weigh as much as "reset the router".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from bot.knowledge.base import Passage

#: BM25 parameters (the usual ones; FTS5 uses the same).
K1 = 1.2
B = 0.75
#: The default ``knowledge.min_score``: calibrated on bench/data/knowledge (README, "Knowledge bases").
MIN_SCORE = 0.4
#: Candidates each backend hands over for scoring, per passage asked for (and at least CANDIDATES_MIN).
CANDIDATES_PER_K = 8
CANDIDATES_MIN = 40
#: Chunks the candidate query may match, at most (the sum of its terms' document frequencies): the rarest
#: terms are asked for first, and common ones only while under this budget. A common word matches a
#: large part of the base and a full-text index must rank every match: over 100,000 chunks that was
#: most of the search time, for candidates the rarer terms already find. Every term still counts in the
#: score.
POSTINGS_BUDGET = 4000

_WORD = re.compile(r"[^\W_]+")
_CJK = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f]+")

_STOPWORDS = """
a an the and or of to in on at for from by with without is are was were be been being am do does did done
doing have has had having i me my mine we our us you your yours he she it its they them their this that
these those what which who whom whose when where why how can could should would will shall may might must
there here if then than so not no yes any some all about into onto as just please also get got
der die das den dem des ein eine einen einem und oder ist sind war wie was wo wann warum ich mein meine
wir ihr sie es kann können muss mit von zu im am auf für nicht
le la les un une des et ou est sont comment quoi que qui où quand pourquoi je mon ma mes nous vous il elle
ils elles ce cette peut puis dois avec pour dans sur pas du de
el los las unos unas y o es son cómo como qué que quién dónde cuándo por porqué yo mi mis nosotros
usted puede puedo debo con para en sobre no del
"""


def fold(text: str) -> str:
    """Case-folded text without diacritics (é -> e, ß -> ss), in NFKC otherwise (full-width letters)."""
    if text.isascii():  # most manuals: nothing to decompose (5x faster)
        return text.lower()
    kept: list[str] = []
    for ch in unicodedata.normalize("NFKD", text):
        # a kana's voicing marks are part of the letter (プ is not フ), not a diacritic
        if unicodedata.combining(ch) and not (kept and _CJK.match(kept[-1])):
            continue
        kept.append(ch)
    return unicodedata.normalize("NFKC", "".join(kept)).casefold()


#: Question phrases of Chinese and Japanese, cut out of a query's CJK runs (there are no spaces to drop
#: them by): "水泵保修期多长时间" asks about "水泵保修期".
_CJK_QUESTION = re.compile("多长时间|多长|多久|多少|怎么样|怎么办|怎么|怎样|如何|什么|为什么|哪里|哪个|是否|可以|能否|请问|吗|呢"
                           "|どうやって|どうすれば|どうしたら|どう|ですか|ますか|でしょうか|ください|には|方法")
#: Question words dropped from queries (folded like the terms: "für" -> "fur").
QUERY_STOPWORDS = frozenset(fold(word) for word in _STOPWORDS.split())


def has_cjk(text: str) -> bool:
    """Does ``text`` hold Chinese, Japanese or Korean characters?"""
    return _CJK.search(text) is not None


def cjk_runs(text: str) -> list[str]:
    """The runs of CJK characters in ``text``, in order."""
    return _CJK.findall(text)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light suffix stripper for Latin-script words: plurals by Harman's S-stemmer rules ("jams" -> "jam",
    "batteries" -> "battery"), then "-ing" and "-ed" ("cleaning", "cleaned" -> "clean"; "stopped" -> "stop")
    and a final "e" ("configure" and "configured" -> "configur"). Paraphrased questions need these
    conflations most; a full stemmer for one language would damage the others, and other scripts are left
    alone."""
    if len(word) <= 3 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("s"):
        if word.endswith("ies") and not word.endswith(("eies", "aies")):
            word = word[:-3] + "y"
        elif not word.endswith(("us", "ss", "is")):
            word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[:-len(suffix)]
            if suffix == "ed" and base.endswith("i"):
                base = base[:-1] + "y"
            if len(base) >= 4 and base[-1] == base[-2] and base[-1] not in "aeiouls":
                base = base[:-1]
            word = base
            break
    if len(word) >= 5 and word.endswith("e"):
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The search terms of ``text``, in order, repeats kept (see the module docstring)."""
    out: list[str] = []
    for word in _WORD.findall(fold(text)):
        if word.isascii() or not _CJK.search(word):
            out.append(stem(word))
            continue
        pos = 0
        for run in _CJK.finditer(word):
            if run.start() > pos:
                out.append(word[pos:run.start()])
            chars = run.group()
            out.extend([chars] if len(chars) == 1 else [chars[i:i + 2] for i in range(len(chars) - 1)])
            pos = run.end()
        if pos < len(word):
            out.append(word[pos:])
    return out


def query_terms(query: str) -> list[str]:
    """The distinct terms of a query, question words dropped (all of them kept when nothing else is left)."""
    found = list(dict.fromkeys(terms(_CJK_QUESTION.sub(" ", query))))
    kept = [t for t in found if t not in QUERY_STOPWORDS]
    return kept or found


def body(title: str, heading: str, text: str) -> str:
    """What is indexed for a chunk: its document's title and its heading count as words of the chunk."""
    return "\n".join(part for part in (title, heading, text) if part)


def candidate(base: str, doc: str, title: str, text: str, page: int | None = None, heading: str = "", url: str = "",
              blob: str = "", mime: str = "") -> Passage:
    """A chunk a backend's full-text index found for a query (in the order of its rows), not scored yet."""
    return Passage(base, doc, title, text, page, heading, 0.0, url, blob, mime)


@dataclass(frozen=True, slots=True)
class Stats:
    """The corpus statistics BM25 needs: chunk count, total term count, and the queried terms' frequencies."""

    chunks: int
    length: int
    df: dict[str, int]

    @property
    def avgdl(self) -> float:
        return self.length / self.chunks if self.chunks else 1.0

    def idf(self, term: str) -> float:
        df = self.df.get(term, 0)
        return math.log(1.0 + (self.chunks - df + 0.5) / (df + 0.5))


def settle(qterms: Sequence[str], stats: Stats) -> list[str]:
    """The query terms that carry meaning: a CJK character pair found nowhere whose neighbour in the query is
    found is where two words meet ("水泵保修" -> "泵保"), not a word; it is dropped. Unknown words and
    pairs with no known neighbour stay, and count fully (an off-topic question)."""
    kept = []
    for i, term in enumerate(qterms):
        if stats.df.get(term, 0) == 0 and has_cjk(term) and len(term) == 2:
            neighbours = [qterms[j] for j in (i - 1, i + 1) if 0 <= j < len(qterms) and has_cjk(qterms[j])]
            if any(stats.df.get(n, 0) > 0 for n in neighbours):
                continue
        kept.append(term)
    return kept


def candidate_terms(qterms: Sequence[str], stats: Stats) -> list[str]:
    """The query terms worth asking a full-text index for: present somewhere, rarest first, within
    :data:`POSTINGS_BUDGET` (the rarest one always)."""
    chosen: list[str] = []
    total = 0
    for term in sorted((t for t in qterms if stats.df.get(t, 0) > 0), key=lambda t: stats.df[t]):
        if chosen and total + stats.df[term] > POSTINGS_BUDGET:
            break
        chosen.append(term)
        total += stats.df[term]
    return chosen


def ranked(words: Sequence[str], stats: Stats) -> bool:
    """Whether a full-text index should rank the matches of ``words`` (its BM25 or ts_rank) before the
    candidates are cut: not when even the rarest term matches more than :data:`POSTINGS_BUDGET` chunks
    (a query of common words only), whose ranking would take tens of milliseconds over 100,000 chunks;
    then the first matches are scored, and the search stays fast rather than thorough."""
    return sum(stats.df.get(w, 0) for w in words) <= POSTINGS_BUDGET


def candidate_limit(k: int) -> int:
    return max(CANDIDATES_MIN, CANDIDATES_PER_K * k)


def score(qterms: Sequence[str], chunk_terms: Iterable[str], stats: Stats) -> float:
    """The chunk's normalised BM25 for the query (see the module docstring), in [0, 1]."""
    total = sum(stats.idf(t) for t in qterms)
    if total <= 0:
        return 0.0
    tf = Counter(chunk_terms)
    dl = sum(tf.values())
    norm = K1 * (1 - B + B * dl / stats.avgdl)
    raw = sum(stats.idf(t) * tf[t] * (K1 + 1) / (tf[t] + norm) for t in qterms if tf[t])
    return min(1.0, raw / total)


def rank(qterms: Sequence[str], candidates: Iterable[Passage], stats: Stats, k: int,
         min_score: float) -> list[Passage]:
    """The best ``k`` candidates scoring at least ``min_score``, as passages, best first (ties: in the order
    the backend found them)."""
    scored = []
    for order, c in enumerate(candidates):
        s = score(qterms, terms(body(c.title, c.heading, c.text)), stats)
        if s >= min_score and s > 0:
            scored.append((-s, order, c, s))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [replace(c, score=round(s, 4)) for _, _, c, s in scored[:k]]


class LexicalSearch:
    """What the backends share: :meth:`search` at their ``min_score``, :meth:`lexical` at any threshold (dense
    retrieval fuses it unfiltered); each implements :meth:`_lexical` for a query that has terms."""

    min_score: float

    async def search(self, bases: Sequence[str], query: str, k: int = 5) -> list[Passage]:
        return await self.lexical(bases, query, k, self.min_score)

    async def lexical(self, bases: Sequence[str], query: str, k: int, min_score: float) -> list[Passage]:
        """The full-text search with an explicit threshold (bot/knowledge/dense.py fuses it unfiltered)."""
        qterms = query_terms(query)
        if not qterms or not bases or k <= 0:
            return []
        return await self._lexical(bases, query, qterms, k, min_score)

    async def _lexical(self, bases: Sequence[str], query: str, qterms: list[str], k: int,
                       min_score: float) -> list[Passage]:
        raise NotImplementedError


def term_counts(title: str, chunks: Iterable[tuple[str, str]]) -> tuple[list[int], Counter[str]]:
    """For chunks ``(heading, text)`` of one document: each chunk's length in terms, and in how many of
    them each term appears (the document's contribution to the document frequencies)."""
    lengths: list[int] = []
    df: Counter[str] = Counter()
    for heading, text in chunks:
        found = terms(body(title, heading, text))
        lengths.append(len(found))
        df.update(set(found))
    return lengths, df


__all__ = [
    "MIN_SCORE", "QUERY_STOPWORDS", "LexicalSearch", "Stats", "body", "candidate", "candidate_limit", "candidate_terms", "cjk_runs",
    "fold", "has_cjk", "query_terms", "rank", "ranked", "score", "settle", "stem", "term_counts", "terms",
]
