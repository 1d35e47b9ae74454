"""The streaming renderer every platform adapter uses, over the in-memory transport."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.common.markdown import utf16_len
from adapters.common.renderer import MemoryTransport, StreamingRenderer, split_text
from bot.types import AnswerDone, ConversationKey, FileReply, Notice, SinkContext, Status, TextChunk
from tests.contracts import Screen, SinkContract

KEY = ConversationKey("test", "c1")


class TestStreamingRenderer(SinkContract):
    @pytest.fixture(params=[False, True], ids=["edits", "drafts"])
    def screen(self, request: pytest.FixtureRequest) -> Screen:
        transport = MemoryTransport(limit=200, supports_preview=request.param)

        async def visible() -> list[str]:
            return transport.visible

        async def files() -> list[str]:
            return [f.filename for f in transport.files]

        return Screen(lambda context: StreamingRenderer(transport, context, min_interval=0), visible, files)


async def _stream(renderer: StreamingRenderer, words: list[str], final: str | None = None) -> tuple[str, ...]:
    for word in words:
        await renderer.emit(TextChunk(word))
    return await renderer.emit(AnswerDone(final if final is not None else "".join(words).strip()))  # type: ignore[return-value]


async def test_edits_are_throttled_and_the_final_text_always_arrives() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=3600)
    ids = await _stream(renderer, [f"word{i} " for i in range(50)])
    [message] = transport.messages.values()
    assert ids == (message.id,)
    assert message.text == "".join(f"word{i} " for i in range(50)).strip() and message.final
    assert transport.calls.count("send") == 1 and message.edits == 1  # first text, then the final edit only


async def test_without_a_budget_for_previews_only_the_finished_text_is_written() -> None:
    """A burst spent the platform's edit budget: no previews, the answer arrives as one message, once."""
    transport = MemoryTransport()
    transport.budget = False
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    ids = await _stream(renderer, [f"word{i} " for i in range(20)])
    [message] = transport.messages.values()
    assert ids == (message.id,) and message.final and message.edits == 0
    assert transport.calls == ["send"]


async def test_unchanged_text_is_not_edited_again() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    await renderer.emit(TextChunk("same"))
    for _ in range(5):
        await renderer.emit(TextChunk(""))
    await renderer.emit(AnswerDone("same"))
    [message] = transport.messages.values()
    assert message.history == ["same", "same"] and message.edits == 1  # the final (formatted) rendering only


async def test_a_stalled_stream_is_shown_after_the_interval() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0.05)
    await renderer.emit(TextChunk("first"))
    await renderer.emit(TextChunk(" second"))  # within the interval: deferred, not dropped
    assert transport.visible == ["first"]
    for _ in range(200):
        if transport.visible == ["first second"]:
            break
        await asyncio.sleep(0.01)
    assert transport.visible == ["first second"]
    await renderer.emit(AnswerDone("first second"))


async def test_long_answers_are_split_at_paragraphs_under_the_limit() -> None:
    transport = MemoryTransport(limit=120)
    paragraphs = [f"Paragraph {i}: " + "words " * 12 for i in range(6)]
    answer = "\n\n".join(p.strip() for p in paragraphs)
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    ids = await _stream(renderer, [answer[i:i + 7] for i in range(0, len(answer), 7)], answer)
    shown = transport.visible
    assert len(shown) == len(ids) > 1
    assert all(len(t) <= 120 for t in shown)
    assert all(t.startswith("Paragraph") for t in shown)  # every message starts at a paragraph
    assert "\n\n".join(shown) == answer
    assert all(m.final for m in transport.messages.values())


async def test_streaming_update_failures_are_skipped_but_the_final_one_must_succeed() -> None:
    """A preview that fails (a platform down or hanging) stops the previews of this answer — none is waited
    for again in front of the final text — and the final text still arrives."""
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    await renderer.emit(TextChunk("a"))
    transport.fail_on("edit", ConnectionError("flaky"))
    await renderer.emit(TextChunk("b"))
    await renderer.emit(TextChunk("c"))
    await renderer.emit(TextChunk("d"))
    assert transport.calls == ["send", "edit"]  # no preview after the failed one
    await renderer.emit(AnswerDone("abcd"))
    assert transport.visible == ["abcd"]
    transport2 = MemoryTransport()
    renderer2 = StreamingRenderer(transport2, SinkContext(KEY), min_interval=0)
    await renderer2.emit(TextChunk("a"))
    transport2.fail_on("edit", ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await renderer2.emit(AnswerDone("abc"))


async def test_messages_a_killed_run_left_are_completed_and_extras_deleted() -> None:
    transport = MemoryTransport(limit=60)
    left = (transport.seed("partial answer, first part"), transport.seed("partial, second part"),
            transport.seed("partial, third"))
    recorded: list[tuple[str, ...]] = []

    async def record(ids: object) -> None:
        recorded.append(tuple(ids))  # type: ignore[arg-type]

    renderer = StreamingRenderer(transport, SinkContext(KEY, previous=left, record=record), min_interval=0)
    ids = await _stream(renderer, ["The whole answer, short."])
    assert ids == (left[0],)
    assert transport.visible == ["The whole answer, short."]
    assert [transport.messages[i].deleted for i in left] == [False, True, True]
    assert recorded[-1] == (left[0],)


async def test_new_messages_are_recorded_as_soon_as_they_exist() -> None:
    transport = MemoryTransport(limit=40)
    recorded: list[tuple[str, ...]] = []

    async def record(ids: object) -> None:
        recorded.append(tuple(ids))  # type: ignore[arg-type]

    renderer = StreamingRenderer(transport, SinkContext(KEY, record=record), min_interval=0)
    await renderer.emit(TextChunk("first paragraph here.\n\n"))
    assert recorded == [("1",)]
    await renderer.emit(TextChunk("second paragraph, long enough to split."))
    assert recorded[-1] == ("1", "2")


async def test_drafts_preview_the_answer_and_the_final_text_is_one_message() -> None:
    transport = MemoryTransport(supports_preview=True)
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    ids = await _stream(renderer, ["Hel", "lo ", "there"])
    assert transport.previews == ["Hel", "Hello ", "Hello there"]
    assert transport.visible == ["Hello there"] and len(ids) == 1


async def test_progress_is_shown_until_the_answer_replaces_it() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    await renderer.emit(Status("typing"))
    await asyncio.sleep(0)  # typing goes beside the text, never in front of it
    await renderer.emit(Status("progress", "Reading the video: frame 3 of 8…"))
    assert transport.visible == ["Reading the video: frame 3 of 8…"]
    await _stream(renderer, ["A cat ", "jumps."])
    assert transport.visible == ["A cat jumps."]
    assert [s.kind for s in transport.statuses] == ["typing"]


async def test_an_error_before_any_answer_replaces_the_progress_message() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    await renderer.emit(Status("progress", "Reading the video…"))
    await renderer.emit(Notice("I couldn't read the video.", kind="error"))
    assert transport.visible == ["I couldn't read the video."]


async def test_notices_files_and_operator_messages() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY))
    await renderer.emit(Notice("Hi, I am Ana.", author="Ana"))
    await renderer.emit(FileReply("t.csv", "text/csv", b"a"))
    assert transport.visible == ["**Ana:** Hi, I am Ana."]
    assert [f.filename for f in transport.files] == ["t.csv"]


# -- splitting ---------------------------------------------------------------------------------


def test_split_prefers_paragraphs_then_lines_then_sentences() -> None:
    text = "A" * 50 + "\n\n" + "B" * 50
    assert split_text(text, 80) == ["A" * 50, "B" * 50]
    text = "A" * 50 + "\n" + "B" * 50
    assert split_text(text, 80) == ["A" * 50, "B" * 50]
    text = "One sentence here. " * 10
    pieces = split_text(text, 80)
    assert all(p.endswith(".") for p in pieces[:-1])


def test_split_closes_and_reopens_a_code_fence() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(30)) + "\n```"
    pieces = split_text(code, 100)
    assert len(pieces) > 1
    assert all(p.startswith("```python") for p in pieces)
    assert all(p.rstrip().endswith("```") for p in pieces)


def test_split_measures_in_the_platforms_units() -> None:
    emoji = "😀" * 30  # 2 UTF-16 units each
    pieces = split_text(emoji, 32, utf16_len)
    assert all(utf16_len(p) <= 32 for p in pieces) and "".join(pieces) == emoji


def test_a_fence_whose_opening_line_fills_a_piece_does_not_loop_forever() -> None:
    """Found by the property below: a fence reopened with a long info string left no room to progress."""
    text = "`.bb\n\nb`\n.\n bb 😀\n``a a.a`\nbb` .a\n\na``\n.a.`\n`\n😀 .  .a\n```a😀 a😀 a😀 a😀\nab ab ab ab\n" * 3
    pieces = split_text(text, 16, utf16_len)
    assert pieces and all(utf16_len(p) <= 16 for p in pieces)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .\n😀`"), max_size=600), st.integers(min_value=16, max_value=120))
def test_split_pieces_fit_and_are_stable_as_the_text_grows(text: str, limit: int) -> None:
    pieces = split_text(text, limit, utf16_len)
    assert all(utf16_len(p) <= limit for p in pieces)
    longer = split_text(text + "more text that keeps coming " * 3, limit, utf16_len)
    # every piece followed by another never changes again
    assert longer[: len(pieces) - 1] == pieces[:-1]


async def test_the_last_message_of_a_finished_answer_is_marked_for_buttons() -> None:
    transport = MemoryTransport(limit=40)
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0)
    await _stream(renderer, ["First paragraph of it.\n\n", "Second paragraph here."])
    assert [m.closing for m in transport.messages.values()] == [False, True]


async def test_a_message_deleted_meanwhile_is_sent_anew() -> None:
    transport = MemoryTransport()
    left = transport.seed("partial")
    transport.messages[left].deleted = True
    renderer = StreamingRenderer(transport, SinkContext(KEY, previous=(left,)), min_interval=0)
    ids = await _stream(renderer, ["Whole answer."])
    assert transport.visible == ["Whole answer."] and ids != (left,)


async def test_typing_is_kept_alive_until_the_first_text() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0, typing_interval=0.01, keep_typing=60)
    await renderer.emit(Status("typing"))
    for _ in range(500):
        if len(transport.statuses) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(transport.statuses) >= 3
    await _stream(renderer, ["done"])
    count = len(transport.statuses)
    await asyncio.sleep(0.05)
    assert len(transport.statuses) == count  # stopped once the answer showed


async def test_typing_stops_when_the_turn_is_cancelled_before_its_first_text() -> None:
    transport = MemoryTransport()
    renderer = StreamingRenderer(transport, SinkContext(KEY), min_interval=0, typing_interval=0.01, keep_typing=60)
    await renderer.emit(Status("typing"))
    while len(transport.statuses) < 3:
        await asyncio.sleep(0.005)
    await renderer.emit(AnswerDone("", outcome="interrupted"))
    assert renderer._typing is not None and (renderer._typing.cancelling() or renderer._typing.done())
    sent = len(transport.statuses)
    await asyncio.sleep(0.05)  # five typing intervals: none more is sent
    assert len(transport.statuses) == sent and not transport.messages
