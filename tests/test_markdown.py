"""Markdown rendered for each platform behind one interface; raw HTML is always text."""

from __future__ import annotations

import pytest

from adapters.common.markdown import (
    HtmlFormat,
    MarkdownFormat,
    PlainFormat,
    SlackFormat,
    TelegramFormat,
    escape_raw_html,
    utf16_len,
)

ANSWER = "**Check** the `E15` code:\n\n- drain hose\n- [manual](https://example.com/m.pdf)\n\n<script>alert(1)</script>"


@pytest.mark.parametrize("fmt", [PlainFormat(), HtmlFormat(), TelegramFormat(), SlackFormat()], ids=lambda f: f.name)
def test_every_format_renders_without_raising_and_keeps_the_words(fmt: MarkdownFormat) -> None:
    out = fmt.render(ANSWER)
    for word in ("Check", "E15", "drain hose", "manual"):
        assert word in out.text
    assert fmt.render("").text == "" or fmt.name == "html"


def test_html_has_no_raw_html() -> None:
    html = HtmlFormat().render(ANSWER).text
    assert "<script>" not in html and "&lt;script&gt;" in html and "<strong>Check</strong>" in html


def test_telegram_gets_entities_in_utf16_units_and_raw_html_as_text() -> None:
    out = TelegramFormat().render("😀 **bold** <b>tag</b> `x < y`")
    assert out.parse_mode is None
    bold = next(e for e in out.entities if e["type"] == "bold")
    assert out.text[:1] == "😀"
    # the offset counts the emoji as two UTF-16 units
    assert bold["offset"] == utf16_len("😀 ")
    assert "<b>tag</b>" in out.text  # shown, not parsed
    assert any(e["type"] == "code" for e in out.entities) and "x < y" in out.text


def test_slack_mrkdwn() -> None:
    out = SlackFormat().render("**bold** and [link](https://x.y)")
    assert out.text == "*bold* and <https://x.y|link>"


def test_escape_raw_html_leaves_code_alone() -> None:
    assert escape_raw_html("a <b> `<c>`\n```\n<d>\n```") == "a \\<b> `<c>`\n```\n<d>\n```"


def test_a_caption_is_cut_in_utf16_units_never_inside_a_pair() -> None:
    from adapters.common.markdown import cut_utf16

    emoji = "🔧" * 700  # 1,400 UTF-16 units in 700 code points
    cut = cut_utf16(emoji, 1024)
    assert utf16_len(cut) == 1024 and cut == "🔧" * 512
    assert utf16_len(cut_utf16("a" + emoji, 1024)) == 1023  # the pair that would straddle the limit is left out
    assert cut_utf16("short", 1024) == "short"
