"""Detecting the user's language and choosing the language of each answer."""

from __future__ import annotations

import pytest

from bot.l10n.language import LanguageDetector, choose_language

LANGS = ["en", "pt", "es", "fr", "de", "zh", "ru", "ja", "it", "nl", "pl", "uk"]


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector(LANGS)


def choose(detector: LanguageDetector, text: str, **kw: object) -> str:
    args: dict[str, object] = {"pinned": None, "locale_hint": None, "previous": None, "default": "en",
                               "short_text_chars": 24}
    args.update(kw)
    return choose_language(detector, text, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My washing machine stops in the middle of the cycle and shows error E21.", "en"),
        ("A minha máquina de lavar para no meio do ciclo e mostra o erro E21.", "pt"),
        ("Mi lavadora se detiene a mitad del ciclo y muestra el error E21.", "es"),
        ("Ma machine à laver s'arrête au milieu du cycle et affiche l'erreur E21.", "fr"),
        ("Meine Waschmaschine bleibt mitten im Programm stehen und zeigt den Fehler E21.", "de"),
        ("我的洗衣机在洗涤过程中停止并显示错误代码。", "zh"),
        ("Моя стиральная машина останавливается посреди цикла и показывает ошибку E21.", "ru"),
        ("洗濯機がサイクルの途中で止まって、エラーが表示されます。", "ja"),
    ],
)
def test_long_texts_are_detected(detector: LanguageDetector, text: str, expected: str) -> None:
    assert choose(detector, text, locale_hint="en-US") == expected


def test_short_text_uses_the_platform_locale(detector: LanguageDetector) -> None:
    assert choose(detector, "ok", locale_hint="pt-BR") == "pt"
    assert choose(detector, "Hallo", locale_hint="fr_FR") == "fr"


def test_short_text_falls_back_to_previous_then_default(detector: LanguageDetector) -> None:
    assert choose(detector, "ok", previous="de") == "de"
    assert choose(detector, "ok") == "en"
    assert choose(detector, "ok", default="es") == "es"


def test_unambiguous_scripts_win_even_when_short(detector: LanguageDetector) -> None:
    assert choose(detector, "这是什么", locale_hint="en") == "zh"
    assert choose(detector, "これは何ですか", locale_hint="en") == "ja"


def test_pinned_language_wins(detector: LanguageDetector) -> None:
    text = "My washing machine stops in the middle of the cycle and shows error E21."
    assert choose(detector, text, pinned="ja") == "ja"


def test_urls_and_commands_do_not_count_as_language(detector: LanguageDetector) -> None:
    assert detector.detect("https://example.com/foo/bar /help")[0] is None
