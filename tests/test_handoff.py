"""Human handoff in the core: /human, plain requests, held messages, /bot, operators, restarts, the webhook."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine
from bot.handoff.notifiers import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LogNotifier,
    Notifiers,
    WebhookNotifier,
    verify,
)
from bot.l10n.i18n import text
from bot.seams import Channel
from bot.store import MemoryStore, SQLiteStore, Store
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import (
    AnswerDone,
    ConversationKey,
    HandoffEvent,
    IncomingMessage,
    Sender,
    SinkContext,
    TextChunk,
)
from tests.conftest import image_bytes, make_settings
from tests.contracts import Desk, NotifierContract

KEY = ConversationKey("web", "s1")


class RecordingNotifier:
    """Records events; stands for a notifier that reaches people (an operator inbox, a webhook)."""

    reaches_people = True

    def __init__(self) -> None:
        self.events: list[HandoffEvent] = []

    async def notify(self, event: HandoffEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


class Bot:
    def __init__(self, tmp_path: Path, store: Store, engine: EchoEngine | None = None) -> None:
        self.engine = engine or EchoEngine(record=True)
        self.notifier = RecordingNotifier()
        self.manager = ConversationManager(make_settings(tmp_path), store, self.engine, notifier=self.notifier)
        self.sinks: dict[ConversationKey, CollectingSink] = {}
        self.fetcher = MemoryFetcher()
        self.manager.register(Channel("web", self.fetcher, self.sink))
        self.n = 0

    def sink(self, context: SinkContext) -> CollectingSink:
        return self.sinks.setdefault(context.key, CollectingSink())

    async def say(self, text: str, key: ConversationKey = KEY, locale: str | None = None, wait: bool = True,
                  attachments: tuple = ()) -> str | None:
        self.n += 1
        ticket = await self.manager.submit(IncomingMessage(key, Sender("u1", "Ana"), text, attachments=attachments,
                                                           locale=locale, event_id=f"e{id(self)}-{self.n}"))
        assert ticket is not None
        return await ticket.done if wait else None


async def test_a_human_request_refused_at_intake_changes_nothing(tmp_path: Path) -> None:
    """Over the pending limit, /human is refused like any message: the conversation stays with the bot (the
    bot would otherwise go silent with nobody told), and the refusal counts what really waits."""
    engine = EchoEngine(record=True, delay=0.3)
    bot = Bot(tmp_path, MemoryStore(), engine)
    bot.manager = ConversationManager(make_settings(tmp_path, conversation={"max_pending_per_conversation": 1}),
                                      MemoryStore(), engine, notifier=bot.notifier)
    bot.manager.register(Channel("web", bot.fetcher, bot.sink))
    first = asyncio.ensure_future(bot.say("my printer shows E5", locale="en"))
    await asyncio.sleep(0)
    while not engine.calls:
        await asyncio.sleep(0.01)
    assert await bot.say("/human") == "failed"
    assert await first == "answered"
    conv = await bot.manager.store.conversation(KEY)
    assert conv.mode == "bot" and bot.notifier.kinds() == []
    refusal = bot.sinks[KEY].notices[-1]
    assert refusal == text("too_many_pending", "en", count=1), refusal
    assert await bot.say("what does E5 mean?") == "answered"


async def test_a_turn_reset_before_its_first_text_still_ends_on_its_sink(tmp_path: Path) -> None:
    """The sink learns the turn is over (typing stops at once, not after minutes of "typing…")."""
    engine = EchoEngine(record=True, delay=2.0)
    bot = Bot(tmp_path, MemoryStore(), engine)
    first = asyncio.ensure_future(bot.say("my printer shows E5", locale="en"))
    while not engine.calls:
        await asyncio.sleep(0.01)
    await bot.say("/reset")
    assert await first == "cancelled"
    events = bot.sinks[KEY].events
    ends = [e for e in events if isinstance(e, AnswerDone)]
    assert ends and ends[0].silent, events
    assert not any(isinstance(e, TextChunk) for e in events)


async def test_human_command_hands_off_and_bot_stops_answering_until_bot(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore())
    await bot.say("my printer shows E5", locale="en")
    assert await bot.say("/human") == "answered"
    sink = bot.sinks[KEY]
    assert sink.notices[-1] == text("handoff_started", "en")
    assert bot.notifier.kinds() == ["requested"]
    requested = bot.notifier.events[0]
    assert requested.conversation == "web:s1" and requested.user == "Ana"
    assert [t["text"] for t in requested.transcript] == ["my printer shows E5", "echo: my printer shows E5"]

    calls = len(bot.engine.calls)
    answers = len(sink.answers)
    photo = bot.fetcher.add(image_bytes(), "broken.jpg", "image/jpeg")
    assert await bot.say("are you there?", attachments=(photo,)) == "held"
    assert len(bot.engine.calls) == calls and len(sink.answers) == answers  # the bot kept quiet
    assert bot.notifier.events[-1].kind == "message"
    assert bot.notifier.events[-1].text == "are you there?\n[broken.jpg]"
    assert sink.notices[-1] == text("handoff_passed_on", "en")  # a receipt while nobody has answered yet
    rows = await bot.manager.store.transcript(KEY)
    [held] = [r for r in rows if r.text == "are you there?"]
    assert held.state == "held"
    assert held.attachments[0].sha256  # the photo is kept for the person
    assert await bot.manager.store.pending() == []

    assert await bot.say("/human") == "answered"
    assert sink.notices[-1] == text("handoff_already", "en")
    assert await bot.say("/bot") == "answered"
    assert sink.notices[-1] == text("handoff_ended", "en")
    assert bot.notifier.kinds()[-1] == "returned"
    await bot.say("and now?")
    assert sink.answers[-1] == "echo: and now?"
    assert await bot.say("/bot") == "answered"
    assert sink.notices[-1] == text("handoff_not_active", "en")
    assert bot.manager.metrics.handoffs.labels("web")._value.get() == 1


@pytest.mark.parametrize(("request_text", "lang"), [
    ("I want to talk to a person", "en"),
    ("Quero falar com um atendente humano, por favor, o aparelho não liga", "pt"),
    ("Quiero hablar con una persona", "es"),
    ("Je voudrais parler à un conseiller", "fr"),
    ("Ich möchte mit einem Menschen sprechen", "de"),
    ("我要转人工客服", "zh"),
    ("Хочу поговорить с оператором", "ru"),
    ("担当者と話したいです", "ja"),
])
async def test_plain_language_requests_hand_off_in_the_users_language(tmp_path: Path, request_text: str,
                                                                      lang: str) -> None:
    bot = Bot(tmp_path, MemoryStore())
    assert await bot.say(request_text) == "answered"
    assert bot.sinks[KEY].texts == [text("handoff_started", lang)]
    assert bot.engine.calls == []
    assert bot.notifier.events[0].language == lang
    assert (await bot.manager.store.conversation(KEY)).mode == "human"


async def test_questions_about_people_are_not_requests(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore())
    for question in ("Is the person in the photo wearing a helmet?", "What does this human gene do?"):
        await bot.say(question, locale="en")
    assert len(bot.sinks[KEY].answers) == 2 and bot.notifier.events == []


async def test_a_message_sent_right_after_the_request_goes_to_the_person(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore(), EchoEngine(record=True, delay=0.05))
    first = asyncio.create_task(bot.say("what is this noise?", locale="en"))
    await asyncio.sleep(0)
    await bot.say("I want to talk to a person", wait=False)
    assert await bot.say("it started yesterday") == "held"
    await first
    assert len(bot.engine.calls) == 1  # only the message before the request was answered


async def test_handoff_survives_a_restart_and_operators_hand_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "bot.sqlite3")
    await store.open()
    bot = Bot(tmp_path, store)
    await bot.say("/human", locale="pt")
    await bot.manager.stop()
    await store.close()

    store = SQLiteStore(tmp_path / "bot.sqlite3")
    await store.open()
    try:
        bot = Bot(tmp_path, store)
        await bot.manager.start()
        assert await bot.say("ainda esperando", locale="pt") == "held"
        assert bot.engine.calls == []
        await bot.manager.operator_reply(KEY, "Olá, aqui é a Maria.", author="Maria")
        sink = bot.sinks[KEY]
        assert sink.events[-1].text == "Olá, aqui é a Maria." and sink.events[-1].author == "Maria"
        assert await bot.manager.hand_back(KEY, by="Maria") is True
        assert sink.notices[-1] == text("handoff_ended", "pt")
        assert bot.notifier.events[-1].kind == "returned" and bot.notifier.events[-1].by == "Maria"
        assert await bot.manager.hand_back(KEY) is False
        await bot.say("e agora?", locale="pt")
        assert isinstance(sink.events[-1], AnswerDone)
        rows = await store.transcript(KEY)
        assert [(r.role, r.sender_name) for r in rows if r.text == "Olá, aqui é a Maria."] == [("assistant", "Maria")]
    finally:
        await bot.manager.stop()
        await store.close()


class _Receiver(BaseHTTPRequestHandler):
    fail_first: int = 0
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        cls.received.append(({k: v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"fail_first": 1, "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/handoff", handler
    server.shutdown()
    server.server_close()


async def test_webhook_is_signed_and_retried_after_a_5xx(tmp_path: Path, receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    webhook = WebhookNotifier(url, "s3cret", backoff=0.01)
    bot = Bot(tmp_path, MemoryStore())
    bot.manager.add_notifier(webhook)
    await bot.say("I need to speak with a human", locale="en")
    await webhook.drain()
    await webhook.close()
    assert len(handler.received) == 1 and webhook.delivered == 1
    headers, body = handler.received[0]
    assert verify(b"s3cret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(b"wrong", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(b"s3cret", headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
    event = json.loads(body)
    assert (event["kind"], event["conversation"], event["language"]) == ("requested", "web:s1", "en")


async def test_an_unreachable_webhook_never_blocks_the_conversation(tmp_path: Path) -> None:
    webhook = WebhookNotifier("http://127.0.0.1:9/unreachable", "k", attempts=2, backoff=0.01)
    bot = Bot(tmp_path, MemoryStore())
    bot.manager.add_notifier(webhook)
    assert await bot.say("/human", locale="en") == "answered"
    assert bot.sinks[KEY].notices == [text("handoff_started", "en")]
    await webhook.drain()
    await webhook.close()
    assert webhook.failed == 1 and webhook.delivered == 0


# -- the notifier contract --------------------------------------------------------------------


class TestLogNotifier(NotifierContract):
    @pytest.fixture
    def desk(self, caplog: pytest.LogCaptureFixture) -> Desk:
        caplog.set_level(logging.INFO, logger="bot.handoff.notifiers")

        async def received() -> list[str]:
            return [r.getMessage().split(":")[0].removeprefix("handoff ") for r in caplog.records
                    if r.name == "bot.handoff.notifiers"]

        async def broken() -> LogNotifier:
            return LogNotifier()

        return Desk(LogNotifier(), received, broken)


class TestWebhookNotifier(NotifierContract):
    @pytest.fixture
    async def desk(self, receiver: tuple[str, type[_Receiver]]) -> AsyncIterator[Desk]:
        url, handler = receiver
        handler.fail_first = 0
        notifier = WebhookNotifier(url, "s3cret", backoff=0.01)

        async def received() -> list[str]:
            await notifier.drain()
            return [json.loads(body)["kind"] for _, body in handler.received]

        async def broken() -> WebhookNotifier:
            return WebhookNotifier("http://127.0.0.1:9/nobody", "k", attempts=2, backoff=0.001)

        yield Desk(notifier, received, broken)
        await notifier.close()


class TestNotifiers(NotifierContract):
    @pytest.fixture
    def desk(self) -> Desk:
        recorder = RecordingNotifier()

        class Exploding(RecordingNotifier):
            async def notify(self, event: HandoffEvent) -> None:
                raise RuntimeError("down")

        async def received() -> list[str]:
            return recorder.kinds()

        async def broken() -> Notifiers:
            return Notifiers([Exploding(), LogNotifier()])

        return Desk(Notifiers([LogNotifier(), recorder]), received, broken)


# -- the persona's handoff policy and the model's own handoff ----------------------------------


def _support_bot(tmp_path: Path, engine: EchoEngine | None = None) -> Bot:
    bot = Bot(tmp_path, MemoryStore(), engine)
    bot.manager.settings = make_settings(tmp_path, conversation={"default_persona": "support"})
    bot.manager.conf = bot.manager.settings.conversation
    return bot


@pytest.mark.parametrize(("message", "lang", "word"), [
    ("I was charged twice and I want a refund", "en", "refund"),
    ("Quero o estorno da minha compra", "pt", "estorno"),
    ("我要退款", "zh", "退款"),
])
async def test_the_personas_policy_sends_some_messages_to_a_person(tmp_path: Path, message: str, lang: str,
                                                                   word: str) -> None:
    bot = _support_bot(tmp_path)
    assert await bot.say(message, locale=lang) == "answered"
    assert bot.sinks[KEY].notices[-1] == text("handoff_policy", lang)
    assert bot.engine.calls == []  # the model never saw it
    event = bot.notifier.events[-1]
    assert (event.kind, event.reason) == ("requested", f"policy: {word}")
    assert await bot.say("still there?") == "held"


async def test_a_word_inside_another_word_is_not_a_policy_hit(tmp_path: Path) -> None:
    bot = _support_bot(tmp_path)
    assert await bot.say("is the refunding button broken? fireworks?", locale="en") == "answered"
    assert bot.notifier.events == []


async def test_the_model_saying_it_cannot_help_hands_off_after_its_answer(tmp_path: Path) -> None:
    bot = _support_bot(tmp_path, EchoEngine(record=True, delay=0.001))
    assert await bot.say("I need help with my invoice, sorry [handoff]", locale="en") == "answered"
    sink = bot.sinks[KEY]
    assert sink.answers == ["echo: I need help with my invoice, sorry"]  # the marker never shows
    assert "[hand" not in sink.streamed
    assert sink.notices[-1] == text("handoff_model", "en")
    assert bot.notifier.events[-1].reason == "model"
    assert await bot.say("hello?") == "held"


async def test_a_platform_moving_the_conversation_is_followed_silently(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore())
    assert await bot.manager.set_mode(KEY, "human", by="chatwoot") is True
    assert await bot.say("anyone?") == "held"
    assert await bot.manager.set_mode(KEY, "bot", by="chatwoot") is True
    assert await bot.say("back?") == "answered"
    assert bot.sinks[KEY].texts == ["echo: back?"]  # nothing was said about the moves
    assert [e.kind for e in bot.notifier.events if e.kind != "message"] == ["taken", "returned"]


def test_the_marker_filter_never_shows_half_a_marker() -> None:
    from bot.conversation.relay import MarkerFilter

    f = MarkerFilter("[handoff]")
    shown = "".join(f.feed(c) for c in ["Sorry, I can't ", "[hand", "off", "]\nbye", " [ok]"]) + f.rest()
    assert shown == "Sorry, I can't \nbye [ok]" and f.found
    g = MarkerFilter("[handoff]")
    assert "".join(g.feed(c) for c in ["a [h", "ello]"]) + g.rest() == "a [hello]" and not g.found


async def test_nobody_to_hand_over_to_is_said_and_the_assistant_keeps_answering(tmp_path: Path) -> None:
    """No notifier reaches a person (no operator token, no webhook, not a helpdesk): /human or a plain
    request says so, instead of promising an answer nobody will give."""
    bot = Bot(tmp_path, MemoryStore())
    bot.notifier.reaches_people = False  # type: ignore[misc]
    assert await bot.say("/human", locale="en") == "answered"
    assert bot.sinks[KEY].notices[-1] == text("handoff_unavailable", "en")
    assert (await bot.manager.store.conversation(KEY)).mode == "bot"
    assert await bot.say("Quiero hablar con una persona") == "answered"
    assert bot.sinks[KEY].notices[-1] == text("handoff_unavailable", "es")
    assert await bot.say("then tell me about E5") == "answered"
    assert bot.sinks[KEY].answers[-1] == "echo: then tell me about E5"
    assert bot.notifier.events == []


async def test_a_helpdesk_channel_reaches_people_by_itself(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore())
    bot.notifier.reaches_people = False  # type: ignore[misc]
    desk = ConversationKey("desk", "t1")
    bot.manager.register(Channel("desk", bot.fetcher, bot.sink, reaches_people=True))
    assert await bot.say("/human", key=desk, locale="en") == "answered"
    assert bot.sinks[desk].notices[-1] == text("handoff_started", "en")
    assert await bot.say("hello?", key=desk) == "held"
    assert bot.sinks[desk].notices[-1] == text("handoff_started", "en")  # its agents see it: no receipt


async def test_receipts_while_waiting_stop_once_a_person_writes(tmp_path: Path) -> None:
    bot = Bot(tmp_path, MemoryStore())
    await bot.say("/human", locale="en")
    assert await bot.say("hello?") == "held"
    assert await bot.say("anyone?") == "held"
    assert bot.sinks[KEY].notices[-2:] == [text("handoff_passed_on", "en")] * 2
    await bot.manager.operator_reply(KEY, "Hi, Marta here.", author="Marta")
    assert await bot.say("great, my printer shows E5") == "held"
    assert bot.sinks[KEY].notices[-1] == "Hi, Marta here."
