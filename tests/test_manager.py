"""The conversation manager, end to end with real stores and the echo / demo engines."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import Settings
from bot.conversation.commands import parse_command
from bot.conversation.manager import ConversationManager, Receipt
from bot.engines import EchoEngine, Engine, message_cost
from bot.l10n import i18n
from bot.l10n.language import LanguageDetector
from bot.seams import AccessPolicy, Channel, UsageLimits
from bot.store import MemoryStore, NewMessage, SQLiteStore, Store
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import (
    AnswerDone,
    ConversationKey,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    ReplyEvent,
    Sender,
    SinkContext,
    Status,
    TextChunk,
    cut_text,
)
from tests.conftest import GatedEngine, image_bytes, make_settings

ROOT = Path(__file__).resolve().parent.parent


class LoggingSink(CollectingSink):
    """Collects per conversation and appends to one global, ordered log."""

    def __init__(self, key: ConversationKey, log: list[tuple[str, ReplyEvent]], fail_on_chunk: bool = False) -> None:
        super().__init__()
        self.key = key
        self.log = log
        self.fail_on_chunk = fail_on_chunk
        self.failure: BaseException = ConnectionError("platform down")
        self.chunk_seen = asyncio.Event()

    async def emit(self, event: ReplyEvent) -> str | None:
        if self.fail_on_chunk and isinstance(event, TextChunk | AnswerDone):
            raise self.failure
        if isinstance(event, TextChunk):
            self.chunk_seen.set()
        self.log.append((self.key.chat, event))
        return await super().emit(event)


class Harness:
    def __init__(self, settings: Settings, store: Store, engine: Engine, platform: str = "test") -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.platform = platform
        self.manager = ConversationManager(settings, store, engine)
        self.fetcher = MemoryFetcher()
        self.sinks: dict[str, LoggingSink] = {}
        self.log: list[tuple[str, ReplyEvent]] = []
        self.broken_sinks: set[str] = set()
        self.failure: BaseException = ConnectionError("platform down")
        self.manager.register(Channel(platform, self.fetcher, self._sink))
        self._events = 0

    def _sink(self, context: SinkContext) -> LoggingSink:
        key = context.key
        if key.chat not in self.sinks:
            self.sinks[key.chat] = LoggingSink(key, self.log)
        sink = self.sinks[key.chat]
        sink.fail_on_chunk = key.chat in self.broken_sinks
        sink.failure = self.failure
        return sink

    def key(self, chat: str) -> ConversationKey:
        return ConversationKey(self.platform, chat)

    async def say(self, chat: str, text: str = "", *, files: tuple[tuple[bytes, str], ...] = (),
                  locale: str | None = None, event_id: str | None = None) -> Receipt | None:
        attachments = tuple(self.fetcher.add(data, name) for data, name in files)
        return await self.manager.submit(
            IncomingMessage(self.key(chat), Sender("u1", "Ana"), text, attachments, locale=locale, event_id=event_id)
        )

    async def ask(self, chat: str, text: str = "", **kw: Any) -> str:
        ticket = await self.say(chat, text, **kw)
        assert ticket is not None
        return await asyncio.wait_for(ticket.done, 30)

    def texts(self, chat: str) -> list[str]:
        return self.sinks[chat].texts

    def last(self, chat: str) -> str:
        return self.sinks[chat].texts[-1]


@pytest.fixture
def harness(tmp_path: Path) -> Callable[..., Harness]:
    def make(model: Engine | None = None, db: Store | None = None, **overrides: Any) -> Harness:
        return Harness(make_settings(tmp_path, **overrides), db or MemoryStore(), model or EchoEngine(record=True))
    return make


# -- commands ------------------------------------------------------------------------------


def test_parse_command() -> None:
    assert parse_command("/persona tutor") == ("persona", "tutor")
    assert parse_command("  /START@MyBot  ") == ("start", "")
    assert parse_command("/usr/bin is missing") is None
    assert parse_command("hello /help") is None


async def test_plain_answer_streams_and_is_stored(harness: Callable[..., Harness]) -> None:
    h = harness(model=EchoEngine(record=True, delay=0.001))
    assert await h.ask("c1", "Is the filter clogged?") == "answered"
    sink = h.sinks["c1"]
    assert sink.streamed.strip() == "echo: Is the filter clogged?"
    assert sink.answers == ["echo: Is the filter clogged?"]
    assert sum(isinstance(e, TextChunk) for e in sink.events) > 2
    history = await h.store.history(h.key("c1"), since=0, before=10**9)
    assert [m.text for m in history] == ["Is the filter clogged?", "echo: Is the filter clogged?"]


async def test_start_greets_with_the_persona_in_the_user_language(harness: Callable[..., Harness]) -> None:
    h = harness()
    await h.ask("c1", "/start", locale="pt-BR")
    assert h.last("c1").startswith("Olá! Envie uma foto")
    assert "/help" in h.last("c1")


async def test_help_lists_commands_and_personas(harness: Callable[..., Harness]) -> None:
    h = harness()
    await h.ask("c1", "/help")
    reply = h.last("c1")
    for word in ("/reset", "/persona", "/lang", "diagnosis", "tutor", "support"):
        assert word in reply


async def test_persona_command_switches_the_system_prompt(harness: Callable[..., Harness]) -> None:
    h = harness()
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    await h.ask("c1", "/persona")
    assert "diagnosis" in h.last("c1")
    await h.ask("c1", "/persona tutor")
    assert h.last("c1") == "Persona switched to “Tutor”."
    await h.ask("c1", "Explain fractions to me please, I am lost with them")
    assert "tutor" in engine.calls[-1][0].text
    await h.ask("c1", "/persona pirate")
    assert "pirate" in h.last("c1")
    assert "diagnosis, document, support, tutor" in h.last("c1")


async def test_lang_command_pins_and_unpins(harness: Callable[..., Harness]) -> None:
    h = harness()
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    await h.ask("c1", "/lang pt")
    assert h.last("c1") == "A partir de agora responderei em português."
    await h.ask("c1", "Why does my printer make a grinding noise when it starts?")
    assert "Portuguese" in engine.calls[-1][0].text
    await h.ask("c1", "/lang auto")
    await h.ask("c1", "Why does my printer make a grinding noise when it starts?")
    assert "in English" in engine.calls[-1][0].text
    await h.ask("c1", "/lang klingon")
    assert "klingon" in h.last("c1")


async def test_unknown_command_is_answered_politely_in_the_user_language(harness: Callable[..., Harness]) -> None:
    h = harness()
    assert await h.ask("c1", "/frobnicate now", locale="de") == "answered"
    assert h.last("c1") == "Den Befehl /frobnicate kenne ich nicht. Senden Sie /help, um zu sehen, was ich kann."


async def test_commands_stay_out_of_the_model_history(harness: Callable[..., Harness]) -> None:
    h = harness()
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    await h.ask("c1", "first question about the pump")
    await h.ask("c1", "/help")
    await h.ask("c1", "second question about the pump")
    assert [m.text for m in engine.calls[-1][1:]] == [
        "first question about the pump", "echo: first question about the pump", "second question about the pump",
    ]


async def test_reset_stops_the_generation_and_starts_a_new_context(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, delay_for=lambda text: 0.05 if "slow" in text else 0.0)
    h = harness(model=engine)
    await h.ask("c1", "remember the blue valve")
    h.sinks["c1"].chunk_seen.clear()
    slow = await h.say("c1", "slow " * 200)
    queued = await h.say("c1", "this one waits in the queue")
    assert slow is not None and queued is not None
    await asyncio.wait_for(h.sinks["c1"].chunk_seen.wait(), 5)
    reset = await h.say("c1", "/reset")
    assert reset is not None
    assert await asyncio.wait_for(slow.done, 5) == "cancelled"
    assert await queued.done == "cancelled"
    assert await reset.done == "answered"
    assert h.last("c1").startswith("Done — I have started a fresh conversation.")
    interrupted = [e for e in h.sinks["c1"].events if isinstance(e, AnswerDone) and e.interrupted]
    assert len(interrupted) == 1
    await h.ask("c1", "what did I ask you to remember?")
    assert [m.role for m in engine.calls[-1]] == ["system", "user"]
    assert (await h.store.message(slow.message_id)).state == "cancelled"


# -- ordering and concurrency -------------------------------------------------------------


async def test_order_is_kept_per_conversation_while_conversations_run_in_parallel(
    harness: Callable[..., Harness],
) -> None:
    engine = GatedEngine()
    engine.gates["A1"] = asyncio.Event()  # A1 answers only once B2 is answered
    h = harness(model=engine)
    tickets = [await h.say(chat, text) for chat, text in
               [("A", "A1 slow question here"), ("B", "B1"), ("A", "A2"), ("B", "B2"), ("A", "A3")]]
    assert tickets[3] is not None
    await asyncio.wait_for(tickets[3].done, 10)
    engine.gates["A1"].set()
    await asyncio.wait_for(asyncio.gather(*(t.done for t in tickets if t)), 10)
    done = [(chat, e.text) for chat, e in h.log if isinstance(e, AnswerDone)]
    assert [t for c, t in done if c == "A"] == ["echo: A1 slow question here", "echo: A2", "echo: A3"]
    assert [t for c, t in done if c == "B"] == ["echo: B1", "echo: B2"]
    # One generation at a time within a conversation: A2 starts streaming after A1 is done.
    first_a2_chunk = next(i for i, (c, e) in enumerate(h.log) if c == "A" and isinstance(e, TextChunk)
                          and "A2" in e.text)
    a1_done = next(i for i, (c, e) in enumerate(h.log) if isinstance(e, AnswerDone) and "A1" in e.text)
    assert a1_done < first_a2_chunk


async def test_global_bound_on_parallel_conversations(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, delay=0.01)
    h = harness(model=engine, conversation={"max_parallel_conversations": 3})
    tickets = [await h.say(f"c{i}", "some words to echo back slowly") for i in range(10)]
    await asyncio.wait_for(asyncio.gather(*(t.done for t in tickets if t)), 10)
    assert engine.peak_active == 3
    assert all(h.sinks[f"c{i}"].answers for i in range(10))


async def test_duplicate_platform_events_are_answered_once(harness: Callable[..., Harness]) -> None:
    h = harness()
    first = await h.say("c1", "hello there", event_id="evt-1")
    assert first is not None
    assert await h.say("c1", "hello there", event_id="evt-1") is None
    await first.done
    assert h.sinks["c1"].answers == ["echo: hello there"]


async def test_too_many_pending_messages_get_a_polite_refusal(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, delay=0.02)
    h = harness(model=engine, conversation={"max_pending_per_conversation": 2})
    tickets = [await h.say("c1", f"message number {i}") for i in range(4)]
    states = await asyncio.wait_for(asyncio.gather(*(t.done for t in tickets if t)), 10)
    assert states == ["answered", "answered", "failed", "failed"]
    assert any("messages waiting for an answer" in t for t in h.texts("c1"))


# -- history and images -------------------------------------------------------------------


async def test_images_reach_the_engine_and_follow_ups_still_see_them(harness: Callable[..., Harness]) -> None:
    h = harness()
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    await h.ask("c1", "what is broken here?", files=((image_bytes(1000, 700), "machine.jpg"),))
    assert "[image 1: 1000x700, 7 tiles]" in h.sinks["c1"].answers[-1]
    await h.ask("c1", "and how do I fix it?")
    user_turns = [m for m in engine.calls[-1] if m.role == "user"]
    assert [len(m.images) for m in user_turns] == [1, 0]
    assert user_turns[0].images[0].size == (1000, 700)


async def test_history_is_trimmed_oldest_first_and_the_user_is_told(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, context_length=1700)
    h = harness(model=engine, engine={"generation": {"max_new_tokens": 100}}, media={"max_tiles": 1})
    for i in range(1, 6):
        assert await h.ask("c1", f"photo number {i}", files=((image_bytes(448, 448, color=(i, i, i)), f"p{i}.png"),)) \
            == "answered"
    last_call = engine.calls[-1]
    assert last_call[0].role == "system"
    assert last_call[-1].text == "photo number 5"
    users = [m for m in last_call if m.role == "user"]
    with_image = [m.text for m in users if m.images]
    # The newest content keeps its image; the oldest images leave the context first.
    assert with_image[-1] == "photo number 5"
    assert "photo number 4" in with_image
    assert "photo number 1" not in with_image
    assert len(with_image) < 5
    notices = h.sinks["c1"].notices
    assert any("no longer see" in n for n in notices)
    # Every prompt fitted the budget.
    for call in engine.calls:
        assert sum(message_cost(engine, m) for m in call) <= 1700 - 100


async def test_too_big_current_turn_is_refused_not_truncated(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, context_length=1000)
    h = harness(model=engine, engine={"generation": {"max_new_tokens": 100}})
    files = tuple((image_bytes(2000, 1000, color=(i, 0, 0)), f"big{i}.jpg") for i in range(4))
    assert await h.ask("c1", "look", files=files) == "failed"
    assert "more than my context" in h.last("c1")


async def test_current_images_get_less_detail_to_fit_and_the_user_is_told(harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True, context_length=4000)
    h = harness(model=engine, engine={"generation": {"max_new_tokens": 200}})
    files = tuple((image_bytes(1600, 1200, color=(i, 9, 9)), f"photo{i}.jpg") for i in range(3))
    assert await h.ask("c1", "compare these", files=files) == "answered"
    shown = engine.calls[-1][-1].images
    assert len(shown) == 3
    assert any(p.max_tiles < 12 for p in shown)
    assert i18n.text("images_reduced", "en", count=3) in h.sinks["c1"].notices


async def test_a_documents_pages_are_called_pages_when_read_in_less_detail(harness: Callable[..., Harness]) -> None:
    from tests.test_documents import invoice_pdf

    # the pages are rendered for the context; a long question then leaves them less room still
    question = "Check every line of this invoice against our order: " + "pump 12.50, filter 3.20, " * 550
    engine = EchoEngine(record=True, context_length=6000)
    h = harness(model=engine, engine={"generation": {"max_new_tokens": 200}})
    assert await h.ask("c1", "read it", files=((invoice_pdf(4), "invoice.pdf"),)) == "answered"
    wanted = [p.max_tiles for p in engine.calls[-1][-1].images]
    assert await h.ask("c2", question, files=((invoice_pdf(4), "invoice.pdf"),), locale="en") == "answered"
    notices = h.sinks["c2"].notices
    reduced = sum(1 for p, want in zip(engine.calls[-1][-1].images, wanted, strict=True) if p.max_tiles < want)
    assert reduced and i18n.text("pages_reduced", "en", count=reduced) in notices
    assert not any("image" in n for n in notices)


async def test_text_files_are_read_into_the_prompt(harness: Callable[..., Harness]) -> None:
    h = harness()
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    await h.ask("c1", "summarise", files=((b"line one\nline two\n", "notes.txt"),))
    assert "[notes.txt]\nline one\nline two" in engine.calls[-1][-1].text


# -- bad input ------------------------------------------------------------------------------


def _truncated_jpeg() -> bytes:
    data = image_bytes(800, 600)
    return data[: len(data) // 2]


def _png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "text", "expected"),
    [
        (((os.urandom(2048), "photo.jpg"),), "what is it?", "couldn't read"),
        (((b"", "empty.jpg"),), "what is it?", "couldn't read"),
        (((b"", "empty.bin"),), "what is it?", "empty file"),
        (((_truncated_jpeg(), "half.jpg"),), "what is it?", "couldn't read"),
        (((_png_bomb(), "bomb.png"),), "what is it?", "too large"),
        (((b"%PDF-1.7\n...", "invoice.pdf"),), "read this", "couldn't open the document"),
        (((b"OggS\x00\x02" + b"\x00" * 100, "voice.ogg"),), "", "audio or voice note"),
        ((), "", "empty"),
        ((), "x" * 100_000, "too long"),
    ],
)
async def test_bad_input_gets_a_polite_answer_and_the_message_is_kept(
    harness: Callable[..., Harness], tmp_path: Path, files: tuple[tuple[bytes, str], ...], text: str, expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    store = SQLiteStore(tmp_path / "bot.sqlite3")
    await store.open()
    h = harness(db=store, media={"max_image_pixels": 50_000_000})
    bad = await h.say("bad", text, files=files)
    good = await h.say("good", "a normal question")
    assert bad is not None and good is not None
    assert await asyncio.wait_for(bad.done, 10) == "failed"
    assert await good.done == "answered"
    assert expected in h.last("bad")
    assert h.sinks["good"].answers == ["echo: a normal question"]
    kept = await store.message(bad.message_id)
    # kept (a very long text kept to the limit, with a marker)
    assert (kept.text, kept.state) == (text if len(text) <= 16000 else cut_text(text, 16000), "failed")
    assert kept.error
    assert any("refused" in r.getMessage() for r in caplog.records)
    # The worker lives on: the same conversation answers the next message.
    assert await h.ask("bad", "and now a normal one") == "answered"
    await store.close()


async def test_bad_input_answer_is_in_the_user_language(harness: Callable[..., Harness]) -> None:
    h = harness()
    await h.ask("c1", "", locale="es-MX")
    assert h.last("c1") == "Tu mensaje estaba vacío. Envíame una pregunta, una foto o un archivo."
    await h.ask("c2", "Что не так с этой фотографией моего котла?", files=((b"garbage", "boiler.jpg"),))
    assert h.last("c2").startswith("Не удалось прочитать изображение «boiler.jpg»")


async def test_file_over_the_byte_limit(harness: Callable[..., Harness]) -> None:
    h = harness(media={"max_file_bytes": 1000})
    assert await h.ask("c1", "look", files=((image_bytes(900, 900, fmt="PNG"), "big.png"),)) == "failed"
    assert "too large" in h.last("c1")


async def test_engine_failure_is_polite_and_the_worker_survives(harness: Callable[..., Harness]) -> None:
    h = harness(model=EchoEngine(record=True, fail_on="explode"))
    # French, or the locale: English words would be answered in English whatever the locale says
    assert await h.ask("c1", "explode, s'il vous plaît", locale="fr") == "failed"
    assert h.last("c1").startswith("Désolé, un problème est survenu")
    assert await h.ask("c1", "a normal question") == "answered"


async def test_a_sink_refusing_for_good_fails_the_message_not_the_worker(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.broken_sinks.add("c1")
    h.failure = ValueError("the platform refuses this message")  # not something that passes
    assert await h.ask("c1", "hello") == "failed"
    h.broken_sinks.clear()
    assert await h.ask("c1", "hello again") == "answered"


async def test_a_platform_down_for_a_while_gets_every_answer_in_order_when_back(
        harness: Callable[..., Harness]) -> None:
    """The platform fails (a network error) while answers are produced: each is stored and kept, the
    conversation's lane is free meanwhile, and when the platform answers again they arrive in order —
    a newer answer waits behind older kept ones even though its own send would work."""
    h = harness()
    await h.manager.start()
    try:
        h.broken_sinks.add("c1")
        assert await h.ask("c1", "first") == "answered"  # stored; kept for the platform
        assert await h.ask("c1", "second") == "answered"
        assert [e.text for c, e in h.log if c == "c1" and isinstance(e, AnswerDone)] == []
        h.broken_sinks.clear()
        assert await h.ask("c1", "third") == "answered"
        await h.manager.outbox.deliver_due()
        for _ in range(200):
            if len([e for c, e in h.log if c == "c1" and isinstance(e, AnswerDone)]) == 3:
                break
            await asyncio.sleep(0.05)
        finals = [e.text for c, e in h.log if c == "c1" and isinstance(e, AnswerDone)]
        assert finals == ["echo: first", "echo: second", "echo: third"], finals
        assert not await h.manager.outbox.waiting(h.key("c1"))
    finally:
        await h.manager.stop(1)


async def test_missing_attachment_bytes(harness: Callable[..., Harness]) -> None:
    h = harness()
    from bot.types import Attachment

    ticket = await h.manager.submit(IncomingMessage(h.key("c1"), Sender("u"), "see file",
                                                    (Attachment(ref="gone", filename="lost.jpg"),)))
    assert ticket is not None
    assert await ticket.done == "failed"
    assert "couldn't download the file “lost.jpg”" in h.last("c1")


# -- restart recovery -----------------------------------------------------------------------

CRASHING_RUN = textwrap.dedent(
    """
    import asyncio, sys
    from bot.config import Settings
    from bot.engines import EchoEngine
    from bot.conversation.manager import ConversationManager
    from bot.store import SQLiteStore
    from bot.seams import Channel
    from bot.testing import CollectingSink, MemoryFetcher
    from bot.types import ConversationKey, IncomingMessage, Sender

    async def main():
        settings = Settings(data_dir=sys.argv[1])
        store = SQLiteStore(settings.store_path)
        await store.open()
        manager = ConversationManager(settings, store, EchoEngine(record=True, delay=30))
        manager.register(Channel("test", MemoryFetcher(), lambda context: CollectingSink()))
        await manager.start()
        key = ConversationKey("test", "crash")
        await manager.submit(IncomingMessage(key, Sender("u"), "answer me after the crash"))
        await manager.submit(IncomingMessage(key, Sender("u"), "and this one too"))
        while (await store.message(1)).state != "answering":
            await asyncio.sleep(0.01)
        print("stored", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_killed_process_answers_each_message_once_after_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, str(data)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)).strip() == "stored"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    settings = Settings(data_dir=str(data))
    for run in range(2):
        store = SQLiteStore(settings.store_path)
        await store.open()
        sink = CollectingSink()
        manager = ConversationManager(settings, store, EchoEngine(record=True))
        manager.register(Channel("test", MemoryFetcher(), lambda context, sink=sink: sink))
        resumed = await manager.start()
        await asyncio.wait_for(manager.idle(), 10)
        await manager.stop(grace=10)
        if run == 0:
            assert resumed == 2
            assert sink.answers == ["echo: answer me after the crash", "echo: and this one too"]
        else:
            assert resumed == 0
            assert sink.events == []
        await store.close()
    rows = sqlite3.connect(settings.store_path).execute(
        "SELECT role, text, state FROM messages ORDER BY id").fetchall()
    assert rows == [
        ("user", "answer me after the crash", "answered"),
        ("user", "and this one too", "answered"),
        ("assistant", "echo: answer me after the crash", "answered"),
        ("assistant", "echo: and this one too", "answered"),
    ]


async def test_shutdown_leaves_interrupted_messages_for_the_next_start(harness: Callable[..., Harness],
                                                                       tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    h = harness(model=EchoEngine(record=True, delay=0.05), db=store)
    ticket = await h.say("c1", "a long answer " * 50)
    assert ticket is not None
    while not h.sinks.get("c1") or not h.sinks["c1"].streamed:
        await asyncio.sleep(0.01)
    await h.manager.stop(grace=0.05)
    assert (await store.message(ticket.message_id)).state == "answering"
    again = Harness(h.settings, store, EchoEngine(record=True))
    assert await again.manager.start() == 1
    await asyncio.wait_for(again.manager.idle(), 10)
    await again.manager.stop(grace=5)
    assert (await store.message(ticket.message_id)).state == "answered"
    await store.close()


async def test_pending_message_of_a_disabled_platform_waits(harness: Callable[..., Harness]) -> None:
    store = MemoryStore()
    await store.add_message(ConversationKey("telegram", "9"), NewMessage(role="user", text="hi"))
    h = harness(db=store)
    assert await h.manager.start() == 0
    assert len(await store.pending()) == 1


# -- the real model -------------------------------------------------------------------------


@pytest.mark.slow
async def test_multi_turn_conversation_with_an_image_through_the_demo_model(
    demo_model: Path, tmp_path: Path,
) -> None:
    from bot.engines.transformers import TransformersEngine

    settings = make_settings(tmp_path, engine={"generation": {"max_new_tokens": 8}})
    engine = TransformersEngine(settings.engine.transformers, model_path=str(demo_model))
    await engine.start()
    store = SQLiteStore(settings.store_path)
    await store.open()
    h = Harness(settings, store, engine)
    assert await h.ask("c1", "What is wrong with this pump?", files=((image_bytes(1200, 900), "pump.jpg"),)) \
        == "answered"
    assert await h.ask("c1", "And what should I check first?") == "answered"
    sink = h.sinks["c1"]
    assert len(sink.answers) == 2
    assert all(a for a in sink.answers)
    rows = sqlite3.connect(settings.store_path).execute(
        "SELECT role, state FROM messages ORDER BY id").fetchall()
    assert rows == [("user", "answered"), ("assistant", "answered"), ("user", "answered"), ("assistant", "answered")]
    await store.close()
    await engine.close()


async def test_retention_purges_old_messages_at_start(harness: Callable[..., Harness]) -> None:
    clock = [0.0]
    store = MemoryStore(clock=lambda: clock[0])
    old = await store.add_message(ConversationKey("test", "c1"), NewMessage(role="user", text="old news"))
    await store.finish(old, "answered", reply="old answer")
    clock[0] = time.time()
    h = harness(db=store, store={"retention_days": 1})
    await h.manager.start()
    assert store.messages == {}
    await h.manager.stop()


# -- video --------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["reference", "fast"])
async def test_video_reaches_the_engine_as_frames_with_progress(
    harness: Callable[..., Harness], videos: dict[str, Path], sampling: str,
) -> None:
    h = harness(media={"video_sampling": sampling})
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    assert await h.ask("c1", "what happens in this clip?", files=((videos["phone"].read_bytes(), "clip.mp4"),)) \
        == "answered"
    [video] = engine.calls[-1][-1].videos
    assert len(video.frames) == 8
    assert all(f.max_tiles == 1 for f in video.frames)
    assert "[video 1: 8 frames]" in h.sinks["c1"].answers[-1]
    progress = [e.text for e in h.sinks["c1"].events if isinstance(e, Status) and e.kind == "progress"]
    assert progress
    assert progress[-1] == "Reading the video: frame 8 of 8…"
    # A follow-up still sees the video, without decoding it again.
    await h.ask("c1", "and at the end?")
    assert len(engine.calls[-1][1].videos) == 1


@pytest.mark.parametrize(("clip", "expected"), [("truncated", "couldn't read the video"),
                                                ("hour", "minutes long"), ("empty", "empty file")])
async def test_bad_videos_get_a_polite_answer(harness: Callable[..., Harness], videos: dict[str, Path], clip: str,
                                             expected: str) -> None:
    h = harness()
    assert await h.ask("c1", "look", files=((videos[clip].read_bytes(), f"{clip}.mp4"),)) == "failed"
    assert expected in h.last("c1")
    assert await h.ask("c1", "still there?") == "answered"


# -- documents ----------------------------------------------------------------------------


async def test_pdf_pages_and_text_layer_reach_the_engine(harness: Callable[..., Harness]) -> None:
    from tests.test_documents import invoice_pdf

    h = harness(conversation={"default_persona": "document"})
    engine: EchoEngine = h.engine  # type: ignore[assignment]
    assert await h.ask("c1", "extract the totals", files=((invoice_pdf(2), "invoice.pdf"),)) == "answered"
    current = engine.calls[-1][-1]
    assert [p.label for p in current.images] == ["Page-1", "Page-2"]
    assert "[invoice.pdf, page 1, text layer]" in current.text
    assert "TOTAL 150.00 EUR" in current.text
    assert "Markdown table" in engine.calls[-1][0].text  # the document persona


async def test_long_pdf_is_cut_and_the_user_is_told(harness: Callable[..., Harness]) -> None:
    from tests.test_documents import invoice_pdf

    h = harness()
    assert await h.ask("c1", "what is this?", files=((invoice_pdf(500), "big.pdf"),)) == "answered"
    assert any("has 500 pages; I read the first 8" in n for n in h.sinks["c1"].notices)


@pytest.mark.parametrize(("make", "expected"), [("encrypted", "protected by a password"),
                                                ("broken", "couldn't open the document")])
async def test_bad_pdfs_get_a_polite_answer(harness: Callable[..., Harness], make: str, expected: str) -> None:
    from tests.test_documents import invoice_pdf

    data = invoice_pdf(1, encrypt=True) if make == "encrypted" else b"%PDF-1.7\nnot really"
    h = harness()
    assert await h.ask("c1", "read this", files=((data, "doc.pdf"),)) == "failed"
    assert expected in h.last("c1")


async def test_pdf_that_is_really_a_jpeg_is_read_as_a_photo(harness: Callable[..., Harness]) -> None:
    h = harness()
    assert await h.ask("c1", "what is it", files=((image_bytes(800, 600), "scan.pdf"),)) == "answered"
    assert "[image 1: 800x600" in h.sinks["c1"].answers[-1]


async def test_export_sends_the_tables_of_the_last_answer_as_a_file(harness: Callable[..., Harness]) -> None:
    from tests.test_documents import TABLE_ANSWER

    h = harness()
    await h.ask("c1", "/export csv")
    assert h.last("c1") == "There is no table in my last answer to export."
    await h.ask("c1", TABLE_ANSWER)  # the echo engine repeats it, tables included
    await h.ask("c1", "/export csv")
    [file] = h.sinks["c1"].files
    assert file.filename.endswith(".csv")
    assert file.mime == "text/csv"
    assert "Number,INV-7" in file.data.decode("utf-8-sig")
    assert h.last("c1").startswith("Here are 2 tables as ")
    await h.ask("c1", "/export json")
    assert h.sinks["c1"].files[-1].mime == "application/json"
    await h.ask("c1", "/export xml")
    assert "/export csv" in h.last("c1")


def _encoded(mode: str, fmt: str, size: tuple[int, int] = (300, 200), **save: Any) -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size)
    if mode == "P":
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 128)])
        save.setdefault("transparency", 0)
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _heic_turned() -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (400, 200), (9, 99, 199)).save(buffer, "HEIF", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "name", "size"),
    [
        (lambda: _encoded("P", "PNG"), "palette.png", "300x200"),
        (lambda: _encoded("CMYK", "JPEG"), "cmyk.jpg", "300x200"),
        (lambda: _encoded("I;16", "PNG"), "deep.png", "300x200"),
        (_heic_turned, "IMG_0001.HEIC", "200x400"),
    ],
)
async def test_unusual_but_valid_images_are_answered(harness: Callable[..., Harness], data: Callable[[], bytes],
                                                     name: str, size: str) -> None:
    h = harness()
    assert await h.ask("c1", "what is this?", files=((data(), name),)) == "answered"
    assert f"[image 1: {size}," in h.sinks["c1"].answers[-1]


@pytest.mark.parametrize("clip", ["webm", "hevc", "rotated"])
async def test_other_video_formats_are_answered(harness: Callable[..., Harness], videos: dict[str, Path],
                                                clip: str) -> None:
    h = harness()
    assert await h.ask("c1", "describe", files=((videos[clip].read_bytes(), videos[clip].name),)) == "answered"
    assert "[video 1:" in h.sinks["c1"].answers[-1]


# -- what platform adapters rely on -----------------------------------------------------------


async def test_resumed_messages_come_before_new_ones_and_are_never_queued_twice(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    key = ConversationKey("test", "c1")
    old = await store.add_incoming(key, NewMessage(role="user", text="left by the last run", event_id="upd-1"))
    assert old is not None
    await store.set_state(old, "answering")
    engine = GatedEngine()
    engine.gates["left by the last run"] = asyncio.Event()
    h = Harness(make_settings(tmp_path), store, engine)
    assert await h.manager.start() == 1
    await asyncio.wait_for(engine.event(engine.started, "left by the last run").wait(), 5)
    assert await h.manager.start() == 0  # being processed: not queued again
    # the platform redelivers the old update while the service starts: it is a duplicate
    assert await h.say("c1", "left by the last run", event_id="upd-1") is None
    newer = await h.say("c1", "a newer message")
    assert newer is not None
    engine.gates["left by the last run"].set()
    assert await asyncio.wait_for(newer.done, 10) == "answered"
    assert h.sinks["c1"].answers == ["echo: left by the last run", "echo: a newer message"]
    await store.close()


async def test_metrics_count_every_turn_without_looking_labels_up(harness: Callable[..., Harness],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    h = harness()
    assert await h.ask("c1", "first question") == "answered"
    looked_up: list[tuple[str, ...]] = []
    labels = MetricWrapperBase.labels

    def counting(self: MetricWrapperBase, *values: str, **named: str) -> MetricWrapperBase:
        looked_up.append(values)
        return labels(self, *values, **named)

    monkeypatch.setattr(MetricWrapperBase, "labels", counting)
    for text in ("second question", "third question"):
        assert await h.ask("c2", text) == "answered"
    assert looked_up == []  # bound at the first message of the adapter, never looked up again
    body = h.manager.metrics.render().decode()
    assert 'internvl_bot_messages_in_total{adapter="test"} 3.0' in body
    assert 'internvl_bot_messages_out_total{adapter="test",kind="answer"} 3.0' in body
    assert 'internvl_bot_time_to_first_token_seconds_count{adapter="test"} 3.0' in body
    assert 'internvl_bot_answer_seconds_count{adapter="test"} 3.0' in body
    assert 'kind="error"' not in body and 'kind="file"' not in body  # a series shows once it has happened
    assert await h.ask("c1", "") == "failed"  # an empty message: refused with an error notice
    assert 'internvl_bot_messages_out_total{adapter="test",kind="error"} 1.0' in h.manager.metrics.render().decode()


class WatchedDetector(LanguageDetector):
    """Notes where it was built and whether it was built when each text came."""

    def __init__(self, languages: list[str]) -> None:
        super().__init__(languages)
        self.warmed_in: list[str] = []
        self.ready_at_detect: list[bool] = []

    def warm(self) -> None:
        self.warmed_in.append(threading.current_thread().name)
        super().warm()

    def detect(self, text: str) -> tuple[str | None, float]:
        self.ready_at_detect.append(self.ready)
        return super().detect(text)


async def test_the_first_start_moves_start_up_out_of_the_collectors_way(harness: Callable[..., Harness],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from bot.conversation import manager as manager_module

    collected: list[int] = []
    collect = gc.collect
    monkeypatch.setattr(manager_module, "_frozen", False)
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or collect(generation))
    frozen = gc.get_freeze_count()
    h = harness()
    await h.manager.start()
    assert collected == [2] and gc.get_freeze_count() > frozen  # start-up's garbage went first
    await harness().manager.start()
    assert collected == [2]  # once per process
    await h.manager.stop()


async def test_start_builds_the_language_detector_before_any_turn(tmp_path: Path) -> None:
    store = MemoryStore()
    key = ConversationKey("test", "c1")
    assert await store.add_incoming(key, NewMessage(role="user", text="Das hat der letzte Lauf liegen lassen, "
                                                                      "bitte beantworten.")) is not None
    settings = make_settings(tmp_path)
    h = Harness(settings, store, EchoEngine(record=True))
    detector = WatchedDetector(settings.conversation.languages)
    h.manager.languages.detector = detector
    assert not detector.ready
    assert await h.manager.start() == 1
    assert detector.ready
    assert detector.warmed_in and detector.warmed_in[0] != threading.current_thread().name  # off the loop's thread
    assert await h.ask("c1", "Und noch eine Frage zum Kühlschrank, der nicht mehr kühlt?") == "answered"
    await h.manager.idle()
    assert detector.ready_at_detect == [True, True]  # the resumed message and the new one
    await h.manager.stop()


async def test_a_failure_mid_answer_ends_on_the_sink_that_streamed(harness: Callable[..., Harness]) -> None:
    engine = GatedEngine()
    engine.fail_after["crash"] = 3
    h = harness(model=engine)
    made: list[SinkContext] = []
    original = h._sink

    def counting(context: SinkContext) -> LoggingSink:
        made.append(context)
        return original(context)

    h.manager.channel("test").__dict__["sink_for"] = counting  # frozen dataclass: replace for this test only
    assert await h.ask("c1", "please crash after a few words") == "failed"
    assert len(made) == 1  # one sink for the whole turn
    events = h.sinks["c1"].events
    done = [e for e in events if isinstance(e, AnswerDone)]
    assert [(d.outcome, d.text) for d in done] == [("failed", "echo: please crash")]
    assert isinstance(events[-1], Notice) and events[-1].kind == "error"
    assert events.index(done[0]) < len(events) - 1
    assert (await h.store.message(1)).state == "failed"


class SlowSink(CollectingSink):
    """A platform that takes its time over every chunk (a Telegram edit per chunk, say)."""

    immediate = False

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def emit(self, event: ReplyEvent) -> str | None:
        if isinstance(event, TextChunk):
            await self.gate.wait()
        return await super().emit(event)


async def test_a_slow_platform_never_holds_the_model(tmp_path: Path) -> None:
    engine = GatedEngine(max_concurrency=1)
    manager = ConversationManager(make_settings(tmp_path), MemoryStore(), engine)
    gate = asyncio.Event()
    slow, fast = SlowSink(gate), CollectingSink()
    manager.register(Channel("test", MemoryFetcher(), lambda c: slow if c.key.chat == "slow" else fast))
    words = " ".join(f"w{i}" for i in range(60))
    first = await manager.submit(IncomingMessage(ConversationKey("test", "slow"), Sender("a"), words))
    assert first is not None
    await asyncio.wait_for(engine.event(engine.finished, words).wait(), 10)
    # the model is done with the slow chat's answer although its platform has shown nothing yet ...
    assert slow.streamed == ""
    # ... and its only place is free for another conversation
    second = await manager.submit(IncomingMessage(ConversationKey("test", "fast"), Sender("b"), "quick one"))
    assert second is not None
    assert await asyncio.wait_for(second.done, 10) == "answered"
    gate.set()
    assert await asyncio.wait_for(first.done, 10) == "answered"
    chunks = [e for e in slow.events if isinstance(e, TextChunk)]
    assert "".join(c.text for c in chunks) == "echo: " + words
    assert len(chunks) <= 2 < 60  # coalesced while the platform was busy
    assert slow.answers == ["echo: " + words]


async def test_a_question_sent_while_the_last_was_answered_sees_that_answer(harness: Callable[..., Harness]) -> None:
    engine = GatedEngine(record=True)
    engine.gates["first"] = asyncio.Event()
    h = harness(model=engine)
    first = await h.say("c1", "the first question")
    await asyncio.wait_for(engine.event(engine.started, "the first question").wait(), 5)
    second = await h.say("c1", "and the second one")  # stored before the first answer exists
    assert first is not None and second is not None
    engine.gates["first"].set()
    assert await asyncio.wait_for(second.done, 10) == "answered"
    assert [m.text for m in engine.echo.calls[-1][1:]] == [
        "the first question", "echo: the first question", "and the second one"]


async def test_messages_from_bots_are_dropped(harness: Callable[..., Harness]) -> None:
    h = harness()
    ticket = await h.manager.submit(IncomingMessage(h.key("c1"), Sender("B9", "OtherBot", is_bot=True), "hello"))
    assert ticket is None
    assert await h.store.last_message_id() == 0


async def test_allow_and_deny_lists_are_enforced_by_the_core(tmp_path: Path) -> None:
    manager = ConversationManager(make_settings(tmp_path), MemoryStore(), EchoEngine(record=True))
    sink = CollectingSink()
    policy = AccessPolicy(allow_users=frozenset({"alice", "bob"}), deny_chats=frozenset({"banned"}))
    manager.register(Channel("test", MemoryFetcher(), lambda c: sink, policy=policy))

    async def say(user: str, chat: str) -> Receipt | None:
        return await manager.submit(IncomingMessage(ConversationKey("test", chat), Sender(user), "hi"))

    assert await say("mallory", "c1") is None
    assert await say("alice", "banned") is None
    ticket = await say("bob", "c1")
    assert ticket is not None and await ticket.done == "answered"
    assert sink.answers == ["echo: hi"]


async def test_usage_limits_are_polite_say_when_and_survive_a_restart(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    limits = UsageLimits(messages_per_minute=2, images_per_day=1)
    for run in range(2):
        manager = ConversationManager(make_settings(tmp_path), store, EchoEngine(record=True))
        sink = CollectingSink()
        fetcher = MemoryFetcher()
        manager.register(Channel("test", fetcher, lambda c, sink=sink: sink, policy=AccessPolicy(limits=limits)))
        key = ConversationKey("test", "c1")
        if run == 0:
            for text in ("one", "two"):
                ticket = await manager.submit(IncomingMessage(key, Sender("u1"), text, locale="de"))
                assert ticket is not None and await ticket.done == "answered"
        ticket = await manager.submit(IncomingMessage(key, Sender("u1"), "three", locale="de"))
        assert ticket is not None and await ticket.done == "failed"
        assert sink.texts[-1].startswith("Sie senden Nachrichten schneller, als ich antworten kann")
        assert re.search(r"in \d+ Sekunden weitermachen", sink.texts[-1])
        other = await manager.submit(IncomingMessage(key, Sender("u2"), "hello"))
        assert other is not None and await other.done == "answered"  # limits are per user
    photos = tuple(fetcher.add(image_bytes(100, 100, color=(i, 0, 0)), f"p{i}.png") for i in range(2))
    ticket = await manager.submit(IncomingMessage(ConversationKey("test", "c2"), Sender("u3"), "look", photos))
    assert ticket is not None and await ticket.done == "failed"
    assert "limit of 1 images" in sink.texts[-1]
    await store.close()


async def test_one_users_burst_does_not_starve_another_users_first_message(tmp_path: Path) -> None:
    engine = GatedEngine(max_concurrency=1)
    engine.gates["A0:"] = asyncio.Event()  # the model is busy with A's first message until everything is queued
    manager = ConversationManager(make_settings(tmp_path), MemoryStore(), engine)
    sink = CollectingSink()
    manager.register(Channel("test", MemoryFetcher(), lambda c: sink))
    tickets = []
    for i in range(50):  # 50 threads of user A (a Slack user firing questions in 50 threads)
        ticket = await manager.submit(IncomingMessage(ConversationKey("test", f"a{i}"), Sender("A"), f"A{i}: hi"))
        tickets.append(ticket)
    b = await manager.submit(IncomingMessage(ConversationKey("test", "b"), Sender("B"), "B's only question"))
    assert b is not None
    await asyncio.wait_for(engine.event(engine.started, "A0: hi").wait(), 10)
    engine.gates["A0:"].set()
    await asyncio.wait_for(asyncio.gather(b.done, *(t.done for t in tickets if t)), 30)
    answers = sink.answers
    assert answers.index("echo: B's only question") < answers.index("echo: A4: hi")


async def test_a_channel_can_use_another_command_prefix(tmp_path: Path) -> None:
    manager = ConversationManager(make_settings(tmp_path), MemoryStore(), EchoEngine(record=True))
    sink = CollectingSink()
    manager.register(Channel("test", MemoryFetcher(), lambda c: sink, command_prefixes=("!", "/")))
    for text in ("!help", "!frobnicate"):
        ticket = await manager.submit(IncomingMessage(ConversationKey("test", "c1"), Sender("u"), text))
        assert ticket is not None
        await ticket.done
    assert "!reset" in sink.texts[0] and "/reset" not in sink.texts[0]
    assert sink.texts[1] == "echo: !frobnicate"  # only the framework's commands take the other prefix


async def test_an_operator_takes_over_mid_answer(harness: Callable[..., Harness]) -> None:
    engine = GatedEngine()
    engine.gates["long"] = asyncio.Event()
    h = harness(model=engine)
    running = await h.say("c1", "a long question")
    queued = await h.say("c1", "and a follow-up")
    assert running is not None and queued is not None
    await asyncio.wait_for(engine.event(engine.started, "a long question").wait(), 5)
    assert await h.manager.take_over(h.key("c1"), by="Ana") is True
    assert await h.manager.take_over(h.key("c1"), by="Ana") is False
    assert await asyncio.wait_for(running.done, 5) == "held"
    assert await queued.done == "held"
    updates = [e for e in h.sinks["c1"].events if isinstance(e, HandoffUpdate)]
    assert [(u.state, u.mode, u.by) for u in updates] == [("taken", "human", "Ana")]
    assert updates[0].text == "Ana from our team has joined the conversation and will answer you here."
    later = await h.say("c1", "hello?")
    assert later is not None and await later.done == "held"
    assert engine.order == ["a long question"]
    assert await h.manager.hand_back(h.key("c1"), by="Ana") is True
    assert await h.ask("c1", "back to the bot") == "answered"


async def test_replies_are_found_by_their_platform_ids(harness: Callable[..., Harness]) -> None:
    h = harness()
    ticket = await h.say("c1", "hello")
    assert ticket is not None and await ticket.done == "answered"
    found = await h.store.find_by_platform_id("test", "c1", "m1")
    assert found is not None and (found.role, found.text, found.reply_to) == ("assistant", "echo: hello", 1)


async def test_a_restart_completes_the_message_a_killed_run_left(tmp_path: Path) -> None:
    from adapters.common.renderer import MemoryTransport, StreamingRenderer

    store = MemoryStore()
    key = ConversationKey("test", "c1")
    transport = MemoryTransport()
    left = transport.seed("Half of an ans")  # what the killed process had streamed
    mid = await store.add_incoming(key, NewMessage(role="user", text="question", platform_message_id="u1"))
    assert mid is not None
    await store.set_state(mid, "answering")
    await store.set_drafts(mid, [left])
    manager = ConversationManager(make_settings(tmp_path), store, EchoEngine(record=True))
    manager.register(Channel("test", MemoryFetcher(), lambda c: StreamingRenderer(transport, c, min_interval=0)))
    assert await manager.start() == 1
    await asyncio.wait_for(manager.idle(), 10)
    assert transport.visible == ["echo: question"]  # completed in place, no second answer beside it
    reply = await store.find_by_platform_id("test", "c1", left)
    assert reply is not None and reply.role == "assistant"


async def test_a_text_pasted_long_past_the_limit_is_refused_without_the_model(harness: Callable[..., Harness]) -> None:
    h = harness(conversation={"max_message_chars": 100})
    assert await h.ask("c1", "x" * 5000, locale="en") == "failed"
    assert h.last("c1") == i18n.text("message_too_long", "en", chars=5000, limit=100)
    # the store keeps the limit and a marker, not the whole paste
    [row] = [r for r in await h.store.transcript(ConversationKey("test", "c1")) if r.role == "user"]
    assert row.text == "x" * 100 + "\n[… cut: 5000 characters in all]"


async def test_control_characters_from_the_model_never_reach_the_user(harness: Callable[..., Harness]) -> None:
    """The echo engine repeats them as a model might produce them: every adapter gets the text without them
    (newlines and tabs kept), and so does the store."""
    h = harness()
    assert await h.ask("c1", "a\x08b\x11c\x1b[31md\x7fe\x9bf\tg\nh\ri") == "answered"
    assert h.sinks["c1"].answers == ["echo: abc[31mdef\tg\nhi"]
    [answer] = [r for r in await h.store.transcript(ConversationKey("test", "c1")) if r.role == "assistant"]
    assert answer.text == "echo: abc[31mdef\tg\nhi"


async def test_images_past_the_turns_pixel_cap_are_left_out_and_the_user_told(
        harness: Callable[..., Harness]) -> None:
    engine = EchoEngine(record=True)
    h = harness(model=engine, media={"max_pixels_per_message": 1_000_000})
    files = tuple((image_bytes(800, 600, color=(80 * i, 9, 9)), f"photo{i}.jpg") for i in range(3))
    assert await h.ask("c1", "compare", files=files, locale="en") == "answered"
    assert len(engine.calls[-1][-1].images) == 2  # 0.48 MP each: two fit under 1 MP, the third does not
    assert i18n.text("images_over_total", "en", count=1, names="photo2.jpg", limit=1) in h.sinks["c1"].notices
    assert h.manager.resolver.pixels.used == 0  # given back when the turn ended


async def test_the_shared_pixel_budget_waits_and_never_fails() -> None:
    from bot.media.images import PixelBudget, PixelLease

    budget = PixelBudget(10)
    first = PixelLease(budget, 100)
    assert await first.take(6)
    second = PixelLease(budget, 100)
    waiting = asyncio.create_task(second.take(6))
    await asyncio.sleep(0)
    assert not waiting.done() and budget.waits == 1  # no room: it waits, it does not fail
    await first.release()
    assert await asyncio.wait_for(waiting, 5) is True and budget.used == 6
    await second.release()
    alone = PixelLease(budget, 100)
    assert await asyncio.wait_for(alone.take(50), 5)  # larger than the budget: goes when nothing else is held
    assert not await alone.take(60)  # past its own cap: refused, nothing more held
    assert budget.used == 50
    await alone.release()
    assert budget.used == 0 and budget.peak == 50
