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
    escape_slack,
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


def test_slack_text_is_escaped_but_the_links_the_conversion_makes_are_not() -> None:
    out = SlackFormat().render("ping <!channel> <@U1> & [the <docs>](https://x.y/?a=1&b=2)\n> quoted")
    assert out.text == ("ping &lt;!channel&gt; &lt;@U1&gt; &amp; <https://x.y/?a=1&amp;b=2|the &lt;docs&gt;>\n"
                        "> quoted")


def test_escape_slack() -> None:
    assert escape_slack("a <!here> &amp; b & c &lt; d > e") == "a &lt;!here&gt; &amp; b &amp; c &lt; d &gt; e"
    assert escape_slack("> quote\n>> nested > mid\n  > indented") == "> quote\n>> nested &gt; mid\n  > indented"
    assert escape_slack("> not markdown here", quotes=False) == "&gt; not markdown here"
    assert escape_slack("> y", line_start=False) == "&gt; y"  # a streamed chunk in the middle of a line
    assert escape_slack("x\n> y", line_start=False) == "x\n> y"


def test_escape_raw_html_leaves_code_alone() -> None:
    assert escape_raw_html("a <b> `<c>`\n```\n<d>\n```") == "a \\<b> `<c>`\n```\n<d>\n```"


def test_a_caption_is_cut_in_utf16_units_never_inside_a_pair() -> None:
    from adapters.common.markdown import cut_utf16

    emoji = "🔧" * 700  # 1,400 UTF-16 units in 700 code points
    cut = cut_utf16(emoji, 1024)
    assert utf16_len(cut) == 1024 and cut == "🔧" * 512
    assert utf16_len(cut_utf16("a" + emoji, 1024)) == 1023  # the pair that would straddle the limit is left out
    assert cut_utf16("short", 1024) == "short"
