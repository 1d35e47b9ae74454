"""Detecting the language a user writes in, and choosing the language of each answer.

Detection uses lingua (``lingua-language-detector``), restricted to the configured languages so it
stays fast and small. The language of the message wins wherever the message tells it: a long text's
detected language; a script that names its language (Chinese, Japanese, Cyrillic with high confidence);
a short text whose language stands out clearly ("Can you help me?" from a user whose Slack locale is
pt-BR is English). Only when the message gives no clue ("ok", "Danke!", an image alone) does the
platform's locale hint win, then the conversation's previous language, then the configured default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from bot.l10n.i18n import normalize_code

_URL = re.compile(r"https?://\S+|<[^>]+>|@\w+|/\w+|`[^`]*`")


def _lingua_languages(codes: tuple[str, ...]) -> tuple[Any, ...]:
    """The lingua languages of ``codes`` (at least two: lingua needs two candidates); ValueError for an
    unknown code. Cheap: nothing is built."""
    from lingua import IsoCode639_1, Language

    wanted = []
    for code in codes:
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is None:
            raise ValueError(f"unknown language code {code!r}")
        wanted.append(Language.from_iso_code_639_1(iso))
    if not wanted:
        raise ValueError("at least one language is needed for detection")
    if len(wanted) == 1:  # lingua needs two candidates
        wanted.append(Language.SPANISH if wanted[0] == Language.ENGLISH else Language.ENGLISH)
    return tuple(wanted)


@lru_cache(maxsize=8)
def _lingua_detector(codes: tuple[str, ...]) -> Any:
    """One lingua detector per language set, shared: building one takes one to two seconds and ~300 MB
    for a dozen languages, and a built detector is immutable and safe to share between threads."""
    from lingua import LanguageDetectorBuilder

    # Preloaded models: lazily loaded ones make every call about ten times slower.
    return LanguageDetectorBuilder.from_languages(*_lingua_languages(codes)).with_preloaded_language_models().build()


class LanguageDetector:
    """Detects the language of a text among a configured set, with lingua (0.1-0.5 ms a message).

    Building lingua's detector takes one to two seconds: :meth:`warm` does it (the conversation manager
    calls it when it starts, before any message is processed); a detector never warmed builds it on its
    first :meth:`detect`. Results are remembered by text (:attr:`REMEMBERED` texts): the same text is
    never detected twice.
    """

    #: Characters looked at; more adds time, not accuracy.
    SAMPLE = 1000
    #: Distinct texts whose result is kept ("ok", "thanks", a greeting, a question asked again).
    REMEMBERED = 4096

    def __init__(self, languages: Iterable[str]) -> None:
        self.codes: list[str] = list(languages)
        self._key = tuple(self.codes)
        _lingua_languages(self._key)  # an unknown code fails here, not at the first message
        self._detector: Any = None
        self._confidence = lru_cache(maxsize=self.REMEMBERED)(self._compute)

    @property
    def ready(self) -> bool:
        """True once lingua's detector is built (:meth:`warm`, or a first :meth:`detect`)."""
        return self._detector is not None

    def warm(self) -> None:
        """Build lingua's detector now (blocking: one to two seconds the first time in a process)."""
        if self._detector is None:
            self._detector = _lingua_detector(self._key)

    def detect(self, text: str) -> tuple[str | None, float]:
        """Return (code, confidence); code is None when the text has no letters."""
        ranked = self.confidences(text)
        if not ranked or ranked[0][0] not in self.codes:
            return None, 0.0
        return ranked[0]

    def confidences(self, text: str) -> tuple[tuple[str, float], ...]:
        """Every candidate language's confidence for ``text``, best first; empty when it has no letters."""
        cleaned = _URL.sub(" ", text[: self.SAMPLE * 2])[: self.SAMPLE]
        if not any(ch.isalpha() for ch in cleaned):
            return ()
        return self._confidence(cleaned)

    def _compute(self, cleaned: str) -> tuple[tuple[str, float], ...]:
        self.warm()
        values = self._detector.compute_language_confidence_values(cleaned)
        return tuple((v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values)


def letters(text: str) -> int:
    return sum(map(str.isalpha, _URL.sub(" ", text)))


#: Fewer letters than this never outweigh the locale or the conversation's language: lingua's best guess
#: for "¿Qué?" is French, for "ça va" Portuguese, for "ok" Polish.
CLUE_LETTERS = 7
#: A short text's best language is its language when its confidence is at least this, and at least
#: :data:`CLUE_MARGIN` times any other's (the locale's and the conversation's language included).
#: Chosen on short support phrases in eight languages: no text switched to a wrong language, and no
#: ambiguous one ("yes", "Hello", "Is it broken?", "merci", "E21 again") left its fallback.
CLUE_CONFIDENCE = 0.35
CLUE_MARGIN = 2.0

#: Languages told by their script: a short text in one of them still decides the answer's language.
SCRIPT_LANGUAGES = ("zh", "ja", "ko", "ru", "uk", "ar", "hi")
#: A letter outside the Latin script (ASCII, Latin-1 and the Latin Extended blocks): none of
#: :data:`SCRIPT_LANGUAGES` is written with Latin letters.
_NOT_LATIN = re.compile(r"[^\W\d_A-Za-z\u00AA\u00BA\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F\u1E00-\u1EFF]")


def choose_language(
    detector: LanguageDetector,
    text: str,
    *,
    pinned: str | None,
    locale_hint: str | None,
    previous: str | None,
    default: str,
    short_text_chars: int,
) -> str:
    """Pick the answer language for one message. See the module docstring for the order.

    Detection runs only when its result can matter: a text in Latin letters too short to give a clue
    (fewer than :data:`CLUE_LETTERS`: "ok", "Danke!") is answered in the locale's or the conversation's
    language whatever lingua says, so when there is one, nothing is detected.
    """
    if pinned:
        return pinned
    hint = normalize_code(locale_hint)
    known_hint = hint if hint and hint in detector.codes else None
    fallback = known_hint or previous
    count = letters(text)
    short = count < short_text_chars
    if short and fallback and count < CLUE_LETTERS and not _NOT_LATIN.search(text):
        return fallback  # detection cannot change it
    code, confidence = detector.detect(text)
    if code and not short and confidence >= 0.5:
        return code
    if code and confidence >= 0.9 and code in SCRIPT_LANGUAGES:
        return code
    if code and count >= CLUE_LETTERS and clear(detector.confidences(text)):
        return code  # the message says which language it is: it wins over the locale
    if known_hint:
        return known_hint
    if previous:
        return previous
    if code and confidence >= 0.6:
        return code
    return default


def clear(ranked: tuple[tuple[str, float], ...]) -> bool:
    """Whether the best language of ``ranked`` (best first) stands out: confident enough, and well ahead of
    every other, the locale's and the conversation's language included."""
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    return ranked[0][1] >= CLUE_CONFIDENCE and ranked[0][1] >= CLUE_MARGIN * runner_up
