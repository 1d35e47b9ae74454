"""The framework's texts: gettext catalogs read with Babel, CLDR plural rules, fallbacks."""

from __future__ import annotations

import re
import string

import pytest
from babel.messages.pofile import read_po

from bot.l10n import i18n


def test_locale_codes_normalise() -> None:
    assert i18n.normalize_code("pt-BR") == "pt"
    assert i18n.normalize_code("zh_Hans_CN") == "zh"
    assert i18n.normalize_code("") is None


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _catalog(lang: str) -> dict[str, list[str]]:
    root = i18n.resources.files("bot.l10n") / "locales" / lang / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"
    with root.open("rb") as handle:
        catalog = read_po(handle, locale=lang)
    out: dict[str, list[str]] = {}
    for message in catalog:
        if message.id:
            key = message.id[0] if isinstance(message.id, tuple) else message.id
            out[key] = list(message.string) if isinstance(message.string, tuple) else [message.string]
    return out


def test_every_text_is_translated_with_the_same_placeholders() -> None:
    english = _catalog("en")
    assert set(i18n.UI_LANGUAGES) >= {"en", "pt", "es", "fr", "de", "zh", "ru", "ja"}
    for lang in i18n.UI_LANGUAGES:
        catalog = _catalog(lang)
        assert set(catalog) == set(english), f"{lang}: {set(english) ^ set(catalog)}"
        for key, forms in catalog.items():
            expected = _fields(english[key][-1])
            for form in forms:
                assert form, f"{key}/{lang} has an empty form"
                # a form may leave out the number itself ("your image" for one), never add a placeholder
                assert _fields(form) <= expected | {"count"} and expected - {"count"} <= _fields(form), \
                    f"{key}/{lang} placeholders differ: {form!r}"


def test_untranslated_language_falls_back_to_english() -> None:
    assert i18n.text("reset_done", "it") == i18n.text("reset_done", "en")
    assert i18n.has("reset_done", "pt") and not i18n.has("reset_done", "it")


@pytest.mark.parametrize(("lang", "count", "expected"), [
    ("en", 1, "You have 1 message waiting"), ("en", 3, "You have 3 messages waiting"),
    ("ru", 1, "У вас 1 сообщение ждёт"), ("ru", 3, "У вас 3 сообщения ждут"), ("ru", 5, "У вас 5 сообщений ждут"),
    ("ru", 21, "У вас 21 сообщение ждёт"), ("ru", 12, "У вас 12 сообщений ждут"),
    ("pt", 1, "Você tem 1 mensagem aguardando"), ("pt", 2, "Você tem 2 mensagens aguardando"),
    ("fr", 1, "Vous avez 1 message en attente"), ("fr", 2, "Vous avez 2 messages en attente"),
    ("ja", 7, "7 件のメッセージ"),
])
def test_plurals_follow_each_languages_rules(lang: str, count: int, expected: str) -> None:
    assert i18n.text("too_many_pending", lang, count=count).startswith(expected)


def test_no_text_says_s_in_parentheses() -> None:
    for lang in ("en",):
        for key, forms in _catalog(lang).items():
            assert all("(s)" not in form for form in forms), key
    assert i18n.text("export_done", "en", count=1, filename="t.csv") == "Here is 1 table as t.csv."
    assert i18n.text("history_images_dropped", "en", count=3).startswith("Note: to fit my context, I no longer see 3 earlier images")


def test_durations_are_said_in_the_users_language() -> None:
    assert i18n.wait_text(42, "en") == "42 seconds"
    assert i18n.wait_text(3 * 3600, "ru") == "3 часа"
    assert i18n.wait_text(90, "pt") in ("2 minutos", "1 minuto")


def test_language_names_in_the_users_own_language() -> None:
    assert i18n.language_name("pt", "pt") == "português"
    assert i18n.language_name("pt", "pt", title=True) == "Português"
    assert i18n.language_name("de", "fr") == "allemand"
    assert i18n.language_name("pt") == "Português (Portuguese)"


def test_missing_parameter_never_raises() -> None:
    assert re.search(r"\?", i18n.text("persona_set", "en"))
