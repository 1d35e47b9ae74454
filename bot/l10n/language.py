"""Detecting the language a user writes in, and choosing the language of each answer.

Detection uses lingua (``lingua-language-detector``), restricted to the configured languages so it
stays fast and small. Short texts are unreliable to detect, so for them the platform's locale hint
wins, then the conversation's previous language, then the configured default — except for scripts
that name their language unambiguously (Chinese, Japanese, Cyrillic with high confidence).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from bot.l10n.i18n import normalize_code

_URL = re.compile(r"https?://\S+|<[^>]+>|@\w+|/\w+|`[^`]*`")


@lru_cache(maxsize=8)
def _lingua_detector(codes: tuple[str, ...]) -> Any:
    """One lingua detector per language set, shared: building one takes about a second and ~300 MB
    for a dozen languages, and a built detector is immutable and safe to share between threads."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

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
    # Preloaded models: lazily loaded ones make every call about ten times slower.
    return LanguageDetectorBuilder.from_languages(*wanted).with_preloaded_language_models().build()


class LanguageDetector:
    """Detects the language of a text among a configured set, with lingua (about 0.1 ms a message)."""

    #: Characters looked at; more adds time, not accuracy.
    SAMPLE = 1000

    def __init__(self, languages: Iterable[str]) -> None:
        self.codes: list[str] = list(languages)
        self._detector = _lingua_detector(tuple(self.codes))

    def detect(self, text: str) -> tuple[str | None, float]:
        """Return (code, confidence); code is None when the text has no letters."""
        cleaned = _URL.sub(" ", text[: self.SAMPLE * 2])[: self.SAMPLE]
        if not any(ch.isalpha() for ch in cleaned):
            return None, 0.0
        values = self._detector.compute_language_confidence_values(cleaned)
        if not values:
            return None, 0.0
        best = values[0]
        code = best.language.iso_code_639_1.name.lower()
        if code not in self.codes:
            return None, 0.0
        return code, float(best.value)


def letters(text: str) -> int:
    return sum(1 for ch in _URL.sub(" ", text) if ch.isalpha())


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
    """Pick the answer language for one message. See the module docstring for the order."""
    if pinned:
        return pinned
    code, confidence = detector.detect(text)
    if code and letters(text) >= short_text_chars and confidence >= 0.5:
        return code
    if code and confidence >= 0.9 and code in ("zh", "ja", "ko", "ru", "uk", "ar", "hi"):
        return code
    hint = normalize_code(locale_hint)
    if hint and hint in detector.codes:
        return hint
    if previous:
        return previous
    if code and confidence >= 0.6:
        return code
    return default
