"""Plain-language requests for a person."""

from __future__ import annotations

import pytest

from bot.handoff.phrases import _asks, asks_for_human


@pytest.mark.parametrize("text", ["I want to talk to a human", "  human please ", "quero falar com um atendente",
                                  "转人工", "Ich möchte mit einem Menschen sprechen"])
def test_requests_for_a_person_are_recognised(text: str) -> None:
    assert asks_for_human(text)


@pytest.mark.parametrize("text", ["is this human hair?", "", "talk to a human " * 20])
def test_other_texts_are_not(text: str) -> None:
    assert not asks_for_human(text)


def test_a_text_is_matched_once_however_often_it_is_asked() -> None:
    # the manager asks at intake and again when the message's turn comes
    text = "can I speak with a real person about my order 4711?"
    before = _asks.cache_info()
    assert [asks_for_human(text), asks_for_human(f"  {text}\n")] == [True, True]
    after = _asks.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
