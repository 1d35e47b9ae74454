"""Detecting the user's language and choosing the language of each answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(("text", "expected"), [
    ("Can you help me?", "en"), ("What is this error?", "en"), ("Good morning", "en"), ("Obrigado", "pt"),
    ("Preciso de ajuda", "pt"), ("Necesito ayuda", "es"), ("Ich brauche Hilfe", "de"), ("Non funziona", "it"),
])
@pytest.mark.parametrize("hint", ["pt-BR", "en-US", "fr-FR"])
def test_a_short_text_that_tells_its_language_wins_over_the_locale(detector: LanguageDetector, text: str,
                                                                   expected: str, hint: str) -> None:
    """A user whose Slack locale is pt-BR writes "Can you help me?": English, not the locale's Portuguese."""
    assert choose(detector, text, locale_hint=hint) == expected
    assert choose(detector, text, previous=hint[:2]) == expected


@pytest.mark.parametrize("text", ["yes", "Hello", "Is it broken?", "merci", "E21 again", "por favor", "status",
                                  "¿Qué?", "ça va", "Danke!"])
@pytest.mark.parametrize("hint", ["pt-BR", "en-US", "de-DE"])
def test_a_short_text_without_a_clear_language_keeps_the_locale(detector: LanguageDetector, text: str,
                                                                 hint: str) -> None:
    assert choose(detector, text, locale_hint=hint) == hint[:2]


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


# -- detection only where it can change the answer ----------------------------------------------

def always_detecting(detector: LanguageDetector, text: str, *, pinned: str | None, locale_hint: str | None,
                     previous: str | None, default: str = "en", short_text_chars: int = 24) -> str:
    """The rule order of the module docstring, detecting every text (what choose_language did before it
    learned to skip detection): the reference the shortcut must agree with."""
    from bot.l10n.i18n import normalize_code
    from bot.l10n.language import CLUE_LETTERS, clear, letters

    if pinned:
        return pinned
    code, confidence = detector.detect(text)
    if code and letters(text) >= short_text_chars and confidence >= 0.5:
        return code
    if code and confidence >= 0.9 and code in ("zh", "ja", "ko", "ru", "uk", "ar", "hi"):
        return code
    if code and letters(text) >= CLUE_LETTERS and clear(detector.confidences(text)):
        return code
    hint = normalize_code(locale_hint)
    if hint and hint in detector.codes:
        return hint
    if previous:
        return previous
    if code and confidence >= 0.6:
        return code
    return default


class CountingDetector(LanguageDetector):
    def __init__(self, languages: list[str]) -> None:
        super().__init__(languages)
        self.calls = 0

    def detect(self, text: str) -> tuple[str | None, float]:
        self.calls += 1
        return super().detect(text)


SHORT_TEXTS = ["ok", "OK!", "Danke!", "Olá", "¿Qué?", "ça va", "straße", "thx 👍", "E21?", "", "  ", "ok 2",
               "这是什么", "これは何", "Да", "Привіт", "ＯＫ", "x²", "ok да", "Hallo 你好"]


@pytest.mark.parametrize("text", SHORT_TEXTS)
@pytest.mark.parametrize(("hint", "previous"), [("pt-BR", None), (None, "de"), ("xx", "fr"), ("xx", None),
                                                (None, None), ("en", "ru")])
def test_skipping_detection_changes_no_answer(detector: LanguageDetector, text: str, hint: str | None,
                                              previous: str | None) -> None:
    expected = always_detecting(detector, text, pinned=None, locale_hint=hint, previous=previous)
    assert choose(detector, text, locale_hint=hint, previous=previous) == expected


LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZàáâãäçèéêëìíîïñòóôõöùúûüýÿßœæøåłąęćńśźżčřšžğış"


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from(LATIN + " .,!?'-0123456789"), max_size=40),
       st.sampled_from([("pt", None), (None, "de"), ("es-MX", "it"), (None, "nl")]))
def test_short_latin_texts_agree_with_detecting_every_time(text: str, context: tuple[str | None, str | None]) -> None:
    # The shortcut rests on lingua never naming a language of another script for Latin letters (which would
    # win even for a short text); this asks lingua itself, for short texts of every shape.
    hint, previous = context
    detector = LanguageDetector(LANGS)
    expected = always_detecting(detector, text, pinned=None, locale_hint=hint, previous=previous)
    assert choose(detector, text, locale_hint=hint, previous=previous) == expected


def test_short_latin_text_is_not_detected_when_the_locale_or_conversation_decides() -> None:
    detector = CountingDetector(LANGS)
    assert choose(detector, "ok", locale_hint="pt-BR") == "pt"
    assert choose(detector, "Danke!", previous="de") == "de"
    assert detector.calls == 0
    assert choose(detector, "ok") == "en"  # nothing else decides: lingua is asked
    assert detector.calls == 1


def test_short_text_in_another_script_and_long_text_are_detected() -> None:
    detector = CountingDetector(LANGS)
    assert choose(detector, "这是什么", locale_hint="en") == "zh"
    assert choose(detector, "Meine Waschmaschine bleibt mitten im Programm stehen.", locale_hint="en") == "de"
    assert detector.calls == 2


def test_the_same_text_is_detected_once() -> None:
    detector = LanguageDetector(LANGS)
    text = "Der Kühlschrank wird nicht mehr kalt, was kann ich tun?"
    first = detector.detect(text)
    assert detector.detect(text) == first == ("de", pytest.approx(first[1]))
    info = detector._confidence.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_the_detector_is_built_when_warmed_not_when_made() -> None:
    detector = LanguageDetector(LANGS)
    assert not detector.ready
    detector.warm()
    assert detector.ready
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        LanguageDetector(["en", "xx"])
