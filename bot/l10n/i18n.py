"""The framework's own texts in the user's language: gettext catalogs read with Babel.

Every text lives in ``bot/l10n/locales/<lang>/LC_MESSAGES/internvl_bot.po`` under a key (the msgid), with
``{name}`` parameters. Messages that depend on a number have plural forms (``msgid_plural``) chosen by
the catalog's ``Plural-Forms`` rule, which Babel derives from CLDR: "1 message", "3 messages";
"1 сообщение", "3 сообщения", "5 сообщений". The number that picks the form is the ``count`` parameter.
Catalogs are read once, when first used (no compile step); a language without a catalog, or a key a
catalog lacks, falls back to English.

Translators edit the ``.po`` files with any gettext tool (Poedit, Weblate, Babel's ``update_catalog``).
"""

from __future__ import annotations

import gettext
import io
import logging
import re
from functools import cache
from importlib import resources
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

DOMAIN = "internvl_bot"

#: ISO 639-1 code -> (English name, native name). Answers can be in any of these.
LANGUAGE_NAMES: dict[str, tuple[str, str]] = {
    "en": ("English", "English"),
    "pt": ("Portuguese", "Português"),
    "es": ("Spanish", "Español"),
    "fr": ("French", "Français"),
    "de": ("German", "Deutsch"),
    "zh": ("Chinese", "中文"),
    "ru": ("Russian", "Русский"),
    "ja": ("Japanese", "日本語"),
    "it": ("Italian", "Italiano"),
    "nl": ("Dutch", "Nederlands"),
    "pl": ("Polish", "Polski"),
    "uk": ("Ukrainian", "Українська"),
    "ko": ("Korean", "한국어"),
    "tr": ("Turkish", "Türkçe"),
    "ar": ("Arabic", "العربية"),
    "hi": ("Hindi", "हिन्दी"),
    "vi": ("Vietnamese", "Tiếng Việt"),
    "id": ("Indonesian", "Bahasa Indonesia"),
    "sv": ("Swedish", "Svenska"),
    "cs": ("Czech", "Čeština"),
}

#: Spoken instruction placed in the system prompt so the model answers in the right language.
ANSWER_IN = "Always answer in {name} ({native}), the user's language, unless the user explicitly asks for another language."


def catalog_languages() -> tuple[str, ...]:
    """Languages with a catalog: the framework's texts are translated into these."""
    root = resources.files("bot.l10n") / "locales"
    return tuple(sorted(entry.name for entry in root.iterdir()
                        if (entry / "LC_MESSAGES" / f"{DOMAIN}.po").is_file()))


#: Languages whose framework texts are translated; others fall back to English texts
#: (the model still answers in the user's language).
UI_LANGUAGES: tuple[str, ...] = catalog_languages()


def _read_catalog(lang: str) -> tuple[gettext.GNUTranslations, frozenset[str], frozenset[str]]:
    """One language's catalog as standard gettext translations (plural rule included), plus its keys
    and which of them are plural."""
    source = resources.files("bot.l10n") / "locales" / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
    with source.open("rb") as handle:
        catalog = read_po(handle, locale=lang, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    translations = gettext.GNUTranslations(buffer)
    keys, plural = set(), set()
    for message in catalog:
        if not message.id:
            continue
        key = message.id[0] if isinstance(message.id, tuple) else message.id
        if isinstance(message.id, tuple):
            plural.add(key)
        if any(message.string if isinstance(message.string, tuple) else [message.string]):
            keys.add(key)
    return translations, frozenset(keys), frozenset(plural)


@cache
def _catalog(lang: str) -> tuple[gettext.GNUTranslations, frozenset[str], frozenset[str]] | None:
    if lang not in UI_LANGUAGES:
        return None
    return _read_catalog(lang)


def keys() -> frozenset[str]:
    """Every text key (those of the English catalog, the reference)."""
    english = _catalog("en")
    assert english is not None, "the English catalog is missing"
    return english[1]


def has(key: str, lang: str) -> bool:
    """True when ``lang``'s catalog translates ``key`` (otherwise English is used)."""
    found = _catalog(lang)
    return found is not None and key in found[1]


def text(key: str, lang: str, **params: Any) -> str:
    """The framework text ``key`` in ``lang`` (English when not translated), with ``params`` filled in.

    Plural texts pick their form from ``params["count"]``.
    """
    found = _catalog(lang) if has(key, lang) else None
    if found is None:
        found = _catalog("en")
        assert found is not None
        if key not in found[1]:
            raise KeyError(f"no text {key!r} in the catalogs")
    translations, _, plural = found
    if key in plural:
        count = params.get("count")
        template = translations.ngettext(key, f"{key}_plural", int(count) if isinstance(count, int | float) else 2)
    else:
        template = translations.gettext(key)
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        log.error("text %s/%s is missing a parameter; given %s", key, lang, sorted(params))
        return template.format_map(_Blank(params))


class _Blank(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "?"


def all_texts() -> list[str]:
    """Every translated text of every catalog (the demo model's tokenizer learns from them)."""
    out: list[str] = []
    for lang in UI_LANGUAGES:
        found = _catalog(lang)
        assert found is not None
        translations, present, plural = found
        for key in sorted(present):
            if key in plural:
                out.extend(translations.ngettext(key, f"{key}_plural", n) for n in (1, 2, 5))
            else:
                out.append(translations.gettext(key))
    return out


def normalize_code(code: str | None) -> str | None:
    """``pt-BR`` / ``pt_br`` / ``PT`` -> ``pt``; returns None for empty input."""
    if not code:
        return None
    base = re.split(r"[-_]", code.strip())[0].lower()
    return base or None


def language_name(code: str, in_language: str | None = None, *, title: bool = False) -> str:
    """``pt`` -> "Português (Portuguese)"; with ``in_language``, the name as a speaker of that language
    writes it in a sentence ("português" in pt, "Portugiesisch" in de), from CLDR, where Babel knows it;
    ``title`` capitalises it for a list or a menu."""
    if in_language:
        try:
            from babel import Locale

            name = Locale.parse(in_language).languages.get(code)
        except (ValueError, LookupError):
            name = None
        if name:
            return name[:1].upper() + name[1:] if title else name
    name, native = LANGUAGE_NAMES.get(code, (code, code))
    return native if native == name else f"{native} ({name})"


def wait_text(seconds: float, lang: str) -> str:
    """A duration as people say it in ``lang`` ("42 seconds", "3 часа"), from CLDR via Babel."""
    from babel.dates import format_timedelta

    try:
        return format_timedelta(max(1.0, seconds), locale=lang if lang in LANGUAGE_NAMES else "en", threshold=1.0,
                                granularity="second")
    except (ValueError, LookupError):
        return format_timedelta(max(1.0, seconds), locale="en", threshold=1.0, granularity="second")
