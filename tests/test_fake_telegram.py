"""The fake Telegram Bot API server, driven by the real python-telegram-bot over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeChat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    Update,
)
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import ApplicationBuilder, CallbackQueryHandler, ContextTypes, MessageHandler, filters
from telegram.request import HTTPXRequest

from tests.fakes.telegram_api import (
    PAYLOADS,
    ChatSpec,
    FakeTelegram,
    FloodLimits,
    UserSpec,
    forum,
    group,
    private,
)

# PTB warns about RetryAfter.retry_after's coming type from inside RetryAfter.__init__.
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")

ANA = UserSpec(111, "Ana", "ana_test")
BOB = UserSpec(222, "Bob", "bob_test", language_code="de")
DM = private(111)
GROUP = group()
FORUM = forum()


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(item, callback_data=item) for item in data]])


def seconds(error: RetryAfter) -> float:
    """RetryAfter.retry_after is an int or a timedelta, by PTB's PTB_TIMEDELTA switch."""
    value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def jpeg(width: int = 640, height: int = 480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as tg:
        tg.add_chat(DM, ANA)
        tg.add_chat(GROUP)
        yield tg


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url) as client:
        yield client


# ------------------------------------------------------------------------------------------ basics


async def test_get_me_tokens_and_unknown_methods(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (123456789, "internvl_test_bot", True)
    assert me.can_join_groups is True and me.can_read_all_group_messages is False
    assert me.supports_inline_queries is False

    for token in ("123456789:wrong", "not-a-token"):  # 401 and 404, both InvalidToken in PTB
        with pytest.raises(InvalidToken):
            async with Bot(token, base_url=fake.base_url):
                pass

    async with httpx.AsyncClient(base_url=fake.url) as client:
        wrong = await client.post("/bot123456789:wrong/getMe")
        assert wrong.status_code == 401
        assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
        unknown = await client.post(f"/bot{fake.token}/sendTelepathy")
        assert unknown.status_code == 404 and unknown.json()["description"] == "Not Found"
        # Method names are case-insensitive; GET with a query string works too.
        assert (await client.get(f"/bot{fake.token}/GETME")).json()["result"]["id"] == 123456789
        # JSON bodies carry typed values: reply_markup is an object, not a JSON string.
        sent = await client.post(f"/bot{fake.token}/sendMessage", json={
            "chat_id": 111, "text": "json", "reply_markup": {"inline_keyboard": [[{"text": "a", "callback_data": "a"}]]}})
        assert sent.json()["result"]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a"
    assert fake.calls[-1].params["chat_id"] == 111


async def test_get_updates_offset_limit_and_allowed_updates(fake: FakeTelegram, bot: Bot) -> None:
    first = fake.push_update(fake.user_message(DM, ANA, text="one"))
    second = fake.push_update(fake.user_message(DM, ANA, text="two"))
    assert second == first + 1

    assert [u.update_id for u in await bot.get_updates(limit=1)] == [first]
    updates = await bot.get_updates()
    assert [u.message.text for u in updates] == ["one", "two"]  # nothing is confirmed yet
    assert [u.message.text for u in await bot.get_updates(offset=first + 1)] == ["two"]
    assert await bot.get_updates(offset=second + 1) == ()
    assert await bot.get_updates(offset=first) == ()  # confirmed updates are gone for good

    third = fake.push_update(fake.user_message(DM, ANA, text="three"))
    assert [u.update_id for u in await bot.get_updates(offset=-1)] == [third]

    # allowed_updates sticks; updates of other types are never created.
    assert await bot.get_updates(offset=third + 1, allowed_updates=["callback_query"]) == ()
    fake.push_update(fake.user_message(DM, ANA, text="filtered"))
    assert await bot.get_updates() == ()
    assert fake.filtered_updates[-1]["message"]["text"] == "filtered"


async def test_long_poll_returns_as_soon_as_an_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await fake.wait_for(lambda: fake.polling == 1)
    fake.push_update(fake.user_message(DM, ANA, text="wake up"))
    (update,) = await poll
    assert update.message.text == "wake up"
    assert loop.time() - started < 5

    # A second bot instance polling terminates the first one's poll, as on Telegram.
    first = asyncio.create_task(bot.get_updates(offset=update.update_id + 1, timeout=10))
    await fake.wait_for(lambda: fake.polling == 1)
    async with Bot(fake.token, base_url=fake.base_url) as other:
        second = asyncio.create_task(other.get_updates(offset=update.update_id + 1, timeout=10))
        with pytest.raises(Conflict, match="terminated by other getUpdates request"):
            await first
        await fake.wait_for(lambda: fake.polling == 1)

        # A client that gives up (PTB cancels the request on stop) is noticed: the poll ends server side.
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second
        await fake.wait_for(lambda: fake.polling == 0)
        assert fake.calls[-1].status == 499

    # Short polling answers at once; PTB sends fractional timeouts as floats.
    assert await bot.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert await bot.get_updates(offset=update.update_id + 1, timeout=dtm.timedelta(milliseconds=50)) == ()


async def test_duplicate_delivery_by_get_updates(fake: FakeTelegram, bot: Bot) -> None:
    fake.duplicate_next()
    update_id = fake.push_update(fake.user_message(DM, ANA, text="twice"))
    assert [u.update_id for u in await bot.get_updates()] == [update_id]
    # The confirmation "got lost": the same update comes again, then never more.
    assert [u.update_id for u in await bot.get_updates(offset=update_id + 1)] == [update_id]
    assert await bot.get_updates(offset=update_id + 1) == ()


# ------------------------------------------------------------------------------------------ messages


async def test_send_edit_delete_and_replies(fake: FakeTelegram, bot: Bot) -> None:
    fake.push_update(fake.user_message(DM, ANA, text="question"))
    (update,) = await bot.get_updates()

    sent = await update.message.reply_text("Thinking…", reply_markup=keyboard("stop"), do_quote=True)
    assert sent.reply_to_message.message_id == update.message.message_id
    assert sent.from_user.id == 123456789 and sent.chat.id == 111
    (message,) = fake.chat(111)
    assert message.reply_to_message_id == update.message.message_id
    assert message.buttons[0][0]["callback_data"] == "stop"

    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("Thinking…", 111, sent.message_id, reply_markup=keyboard("stop"))
    edited = await bot.edit_message_text("The answer", 111, sent.message_id, reply_markup=keyboard("stop"))
    assert edited.text == "The answer" and edited.edit_date is not None
    # An edit without reply_markup drops the keyboard, as on Telegram.
    await bot.edit_message_text("The answer.", 111, sent.message_id)
    assert fake.chat(111)[0].reply_markup is None
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("  The answer.\n", 111, sent.message_id)  # Telegram trims
    await bot.edit_message_reply_markup(111, sent.message_id, reply_markup=keyboard("again"))
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_reply_markup(111, sent.message_id, reply_markup=keyboard("again"))
    with pytest.raises(BadRequest, match="Message to edit not found"):
        await bot.edit_message_text("nope", 111, 9999)
    with pytest.raises(BadRequest, match="Message can't be edited"):
        await bot.edit_message_text("not mine", 111, update.message.message_id)

    message = fake.chat(111)[0]
    assert (message.text, message.edits) == ("The answer.", 3)
    assert message.history == ["Thinking…", "The answer", "The answer."]

    with pytest.raises(BadRequest, match="Message to be replied not found"):
        await bot.send_message(111, "late", reply_to_message_id=9999)
    alone = await bot.send_message(111, "late", reply_to_message_id=9999, allow_sending_without_reply=True)
    assert alone.reply_to_message is None

    assert await bot.delete_message(111, sent.message_id) is True
    assert fake.chat(111)[0].deleted and fake.texts(111) == ["late"]
    with pytest.raises(BadRequest, match="Message to delete not found"):
        await bot.delete_message(111, sent.message_id)
    with pytest.raises(BadRequest, match="Message to be replied not found"):
        await bot.send_message(111, "re", reply_to_message_id=sent.message_id)

    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.send_message(999, "who?")
    fake.block(111)
    with pytest.raises(Forbidden, match="blocked by the user"):
        await bot.send_message(111, "hello?")


@pytest.mark.parametrize(("kwargs", "text", "entities"), [
    ({"text": "<b>bold</b> &lt;tag&gt; <a href='https://x.org'>link</a>", "parse_mode": "HTML"},
     "bold <tag> link", [(0, 4, "bold"), (11, 4, "text_link")]),
    ({"text": "<pre><code class=\"language-py\">x = 1</code></pre>", "parse_mode": "HTML"},
     "x = 1", [(0, 5, "pre")]),
    ({"text": "*bold* _it_ 1\\.5 `a.b`", "parse_mode": "MarkdownV2"}, "bold it 1.5 a.b",
     [(0, 4, "bold"), (5, 2, "italic"), (12, 3, "code")]),
    ({"text": "😀 *x*", "parse_mode": "MarkdownV2"}, "😀 x", [(3, 1, "bold")]),  # offsets in UTF-16
    ({"text": "see https://example.org/a. and @someone /help"}, "see https://example.org/a. and @someone /help",
     [(4, 21, "url"), (31, 8, "mention"), (40, 5, "bot_command")]),
    ({"text": "  padded\n\n"}, "padded", []),
    ({"text": "AT&T &#128512; &bogus; &#99999999;", "parse_mode": "HTML"}, "AT&T 😀 &bogus; &#99999999;", []),
])
async def test_formatting_is_parsed_like_telegram(bot: Bot, kwargs: dict[str, Any], text: str,
                                                  entities: list[tuple[int, int, str]]) -> None:
    message = await bot.send_message(111, **kwargs)
    assert message.text == text
    assert [(e.offset, e.length, e.type) for e in message.entities] == entities


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"text": "<b>unclosed", "parse_mode": "HTML"}, 'Can\'t find end tag corresponding to start tag "b"'),
    ({"text": "line<br>break", "parse_mode": "HTML"}, 'Unsupported start tag "br" at byte offset 4'),
    ({"text": "1 < 2", "parse_mode": "HTML"}, 'Unsupported start tag "" at byte offset 2'),
    ({"text": "<b><i>x</b></i>", "parse_mode": "HTML"}, 'Unmatched end tag at byte offset 7, expected "</i>"'),
    ({"text": "Done. Next", "parse_mode": "MarkdownV2"}, "Character '.' is reserved"),
    ({"text": "*open", "parse_mode": "MarkdownV2"}, "Can't find end of Bold entity at byte offset 0"),
    ({"text": "x", "parse_mode": "Fancy"}, "Unsupported parse_mode"),
    ({"text": "abc", "entities": [{"type": "bold", "offset": 2, "length": 5}]}, "Can't parse entities"),
    ({"text": ""}, "Message text is empty"),
    ({"text": " \n "}, "Message text is empty"),
    ({"text": "<b></b>", "parse_mode": "HTML"}, "Message text is empty"),
    ({"text": "x" * 4097}, "Message is too long"),
])
async def test_bad_requests_read_like_telegram(bot: Bot, kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(BadRequest) as caught:
        await bot.send_message(111, **kwargs)
    assert error.lower() in str(caught.value).lower()


async def test_length_limit_counts_characters_after_parsing(bot: Bot) -> None:
    assert len((await bot.send_message(111, "<b>" + "x" * 4096 + "</b>", parse_mode="HTML")).text) == 4096


async def test_message_drafts_and_chat_actions(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.send_message_draft(111, 7, "Hel") is True
    assert await bot.send_message_draft(111, 7, "<b>Hello</b>", parse_mode="HTML") is True
    assert await bot.send_message_draft(111, 7) is True  # no text: the "Thinking..." placeholder
    assert [(d["draft_id"], d["text"]) for d in fake.drafts] == [(7, "Hel"), (7, "Hello"), (7, "")]
    assert fake.drafts[1]["entities"] == [{"offset": 0, "length": 5, "type": "bold"}]
    with pytest.raises(BadRequest):
        await bot.send_message_draft(GROUP.id, 7, "not here")
    with pytest.raises(BadRequest):
        await bot.send_message_draft(111, 0, "zero id")

    assert await bot.send_chat_action(111, "typing") is True
    with pytest.raises(BadRequest, match="Wrong parameter action"):
        await bot.send_chat_action(111, "dancing")
    assert [a["action"] for a in fake.chat_actions] == ["typing"]

    chat = await bot.get_chat(111)
    assert (chat.id, chat.type, chat.first_name) == (111, "private", "Ana")

    def never_true() -> bool:
        return False

    with pytest.raises(TimeoutError, match=r"never_true.*last calls: .*getChat:200"):
        await fake.wait_for(never_true, timeout=0.05)


async def test_forum_topics(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.user_message(FORUM, ANA, text="in a topic", message_thread_id=42)
    message = update["message"]
    assert message["message_thread_id"] == 42 and message["is_topic_message"] is True
    assert message["reply_to_message"]["message_id"] == 42
    assert message["reply_to_message"]["forum_topic_created"]["name"] == "Topic 42"
    fake.push_update(update)
    (received,) = await bot.get_updates()
    assert received.message.is_topic_message and received.message.reply_to_message.forum_topic_created

    sent = await bot.send_message(FORUM.id, "answer", message_thread_id=42)
    assert sent.message_thread_id == 42 and sent.is_topic_message
    assert sent.reply_to_message.forum_topic_created is not None
    # A reply to a message in a topic lands in that topic.
    reply = await received.message.reply_text("reply")
    assert reply.message_thread_id == 42
    with pytest.raises(BadRequest, match="Message thread not found"):
        await bot.send_message(FORUM.id, "x", message_thread_id=77)
    assert [m.message_thread_id for m in fake.chat(FORUM.id)] == [42, 42]

    # Outside forums message_thread_id names a reply thread: no topic.
    threaded = fake.user_message(GROUP, ANA, text="in a thread", message_thread_id=9)["message"]
    assert threaded["message_thread_id"] == 9 and "is_topic_message" not in threaded
    assert "reply_to_message" not in threaded

    follow_up = fake.user_message(FORUM, ANA, text="thanks", message_thread_id=42,
                                  reply_to_bot_message=sent.message_id)["message"]
    assert follow_up["reply_to_message"]["message_id"] == sent.message_id
    assert "reply_to_message" not in follow_up["reply_to_message"]  # Telegram never nests further


# ------------------------------------------------------------------------------------------ files


async def test_documents_photos_and_downloads(fake: FakeTelegram, bot: Bot) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    sent = await bot.send_document(111, InputFile(pdf, filename="answer.pdf"), caption="<i>here</i>",
                                   parse_mode="HTML")
    document = sent.document
    assert (document.file_name, document.mime_type, document.file_size) == ("answer.pdf", "application/pdf", len(pdf))
    assert sent.caption == "here" and sent.caption_entities[0].type == "italic"
    (message,) = fake.chat(111)
    assert message.kind == "document" and message.document.data == pdf and message.caption == "here"

    file = await bot.get_file(document.file_id)
    assert file.file_path.startswith(fake.base_file_url) and file.file_size == len(pdf)
    buffer = io.BytesIO()
    await file.download_to_memory(buffer)
    assert buffer.getvalue() == pdf

    again = await bot.send_document(111, document.file_id)  # resend by file_id
    assert again.document.file_unique_id == document.file_unique_id
    with pytest.raises(BadRequest, match="Message caption is too long"):
        await bot.send_document(111, InputFile(b"x", filename="a.txt"), caption="y" * 1025)
    with pytest.raises(BadRequest, match="Wrong file identifier"):
        await bot.send_document(111, "no-such-file-id")

    photo = await bot.send_photo(111, InputFile(jpeg(1000, 750), filename="p.jpg"), caption="a photo")
    assert [p.width for p in photo.photo] == [90, 320, 800, 1000]
    with pytest.raises(BadRequest, match="Image_process_failed"):
        await bot.send_photo(111, InputFile(b"not an image", filename="p.jpg"))

    file_id, unique_id = fake.add_file(b"user bytes", path_hint="documents/notes.txt")
    user_file = await bot.get_file(file_id)
    assert user_file.file_unique_id == unique_id and bytes(await user_file.download_as_bytearray()) == b"user bytes"
    big_id, _ = fake.add_file(b"", size=50 * 1024 * 1024, path_hint="videos/big.mp4")
    with pytest.raises(BadRequest, match="File is too big"):
        await bot.get_file(big_id)
    with pytest.raises(BadRequest, match="Invalid file_id"):
        await bot.get_file("missing")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{fake.base_file_url}{fake.token}/documents/nothing.pdf")).status_code == 404


async def test_user_media_shapes(fake: FakeTelegram, bot: Bot) -> None:
    photo = fake.user_message(GROUP, BOB, photo=jpeg(640, 480), caption="@internvl_test_bot look",
                              media_group_id="555")["message"]
    sizes = photo["photo"]
    assert [(s["width"], s["height"]) for s in sizes] == [(90, 68), (320, 240), (640, 480)]
    assert all({"file_id", "file_unique_id", "file_size"} <= s.keys() for s in sizes)
    assert photo["caption_entities"] == [{"offset": 0, "length": 18, "type": "mention"}]
    assert photo["media_group_id"] == "555"
    largest = await bot.get_file(sizes[-1]["file_id"])
    assert Image.open(io.BytesIO(bytes(await largest.download_as_bytearray()))).size == (640, 480)

    animation = fake.user_message(DM, ANA, animation=b"gif")["message"]
    assert animation["document"]["file_id"] == animation["animation"]["file_id"]
    note = fake.user_message(DM, ANA, video_note={"data": b"note", "length": 240})["message"]["video_note"]
    assert note["length"] == 240 and note["file_size"] == 4
    video = fake.user_message(DM, ANA, video={"data": b"v", "file_size": 60_000_000})["message"]["video"]
    assert video["file_size"] == 60_000_000 and video["mime_type"] == "video/mp4"
    document = fake.user_message(DM, ANA, document=("scan.pdf", b"%PDF"))["message"]["document"]
    assert document["mime_type"] == "application/pdf"
    edited = fake.user_message(DM, ANA, text="fixed", edited=True, message_id=5)
    assert edited["edited_message"]["message_id"] == 5 and "edit_date" in edited["edited_message"]

    for update in (photo, animation):
        assert Update.de_json({"update_id": 1, "message": update}, bot).message is not None


# ------------------------------------------------------------------------------------------ faults


async def test_injected_faults(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail("sendMessage", 429, retry_after=3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(111, "x")
    assert seconds(caught.value) == 3
    assert fake.calls[-1].response["description"] == "Too Many Requests: retry after 3"
    assert fake.served_429 == 1

    fake.fail("sendMessage", 500)
    with pytest.raises(NetworkError) as server_error:
        await bot.send_message(111, "x")
    assert not isinstance(server_error.value, BadRequest)
    fake.fail("*", 502)  # nginx's HTML page, as Telegram's front answers
    with pytest.raises(NetworkError, match="Bad Gateway"):
        await bot.get_me()
    fake.fail("editMessageText", 400, description="Bad Request: custom", times=2)
    sent = await bot.send_message(111, "ok")
    for _ in range(2):
        with pytest.raises(BadRequest, match="Custom"):
            await bot.edit_message_text("new", 111, sent.message_id)
    assert (await bot.edit_message_text("new", 111, sent.message_id)).text == "new"


async def test_slow_answer_times_out_but_the_message_was_sent(fake: FakeTelegram) -> None:
    fake.delay("sendMessage", 0.6)
    request = HTTPXRequest(read_timeout=0.1)
    async with Bot(fake.token, base_url=fake.base_url, request=request) as bot:
        with pytest.raises(TimedOut):
            await bot.send_message(111, "slow")
    assert fake.texts(111) == ["slow"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_flood_control() -> None:
    clock = Clock()
    async with FakeTelegram(flood_control=True, clock=clock) as fake, \
            Bot(fake.token, base_url=fake.base_url) as bot:
        fake.add_chat(DM, ANA)
        for n in range(3):  # the burst
            await bot.send_message(111, f"m{n}")
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(111, "m3")
        assert seconds(caught.value) == 1
        await bot.send_chat_action(111, "typing")  # not counted
        await bot.send_message_draft(111, 1, "draft")  # not counted
        clock.now += 1
        sent = await bot.send_message(111, "m3")
        with pytest.raises(RetryAfter):  # edits count too
            await bot.edit_message_text("m3!", 111, sent.message_id)
        assert fake.served_429 == 2

    limits = FloodLimits(per_chat_per_second=100, per_chat_burst=100)
    async with FakeTelegram(flood_control=True, limits=limits, clock=clock) as fake, \
            Bot(fake.token, base_url=fake.base_url) as bot:
        fake.add_chat(GROUP)
        for n in range(20):
            await bot.send_message(GROUP.id, f"g{n}")
            clock.now += 0.1
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(GROUP.id, "g20")
        assert seconds(caught.value) == 58  # 20 per minute, a sliding window
        clock.now += 58
        await bot.send_message(GROUP.id, "g20")

        chats = [ChatSpec(1000 + n) for n in range(31)]
        for chat in chats:
            fake.add_chat(chat)
        clock.now += 100
        for chat in chats[:30]:
            await bot.send_message(chat.id, "hi")
        with pytest.raises(RetryAfter):  # 30 per second overall
            await bot.send_message(chats[30].id, "hi")


# ------------------------------------------------------------------------------------------ webhook


@dataclass
class Receiver:
    url: str = ""
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    script: list[int | asyncio.Event] = field(default_factory=list)


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint: answers by ``script`` (a status, or an Event to wait for, then 200)."""
    state = Receiver()

    async def hook(request: Request) -> Response:
        state.received.append((dict(request.headers), json.loads(await request.body())))
        step = state.script.pop(0) if state.script else 200
        if isinstance(step, asyncio.Event):
            await step.wait()
            step = 200
        return Response(status_code=step)

    server = _Quiet(uvicorn.Config(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), host="127.0.0.1",
                                   port=0, log_config=None, access_log=False, lifespan="off",
                                   timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    state.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/hook"
    try:
        yield state
    finally:
        server.should_exit = True
        await task


async def test_webhook_delivery(fake: FakeTelegram, bot: Bot) -> None:
    async with receiver() as hook:
        with pytest.raises(BadRequest):
            await bot.set_webhook(hook.url, secret_token="not allowed!")
        hook.script = [500]
        assert await bot.set_webhook(hook.url, secret_token="s3cret_-X", allowed_updates=["message"])
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()

        first = fake.push_update(fake.user_message(DM, ANA, text="one"))
        second = fake.push_update(fake.user_message(DM, ANA, text="two"))
        await fake.wait_for(lambda: len(hook.received) == 3)
        assert [body["update_id"] for _, body in hook.received] == [first, first, second]
        assert [a.status for a in fake.webhook_attempts] == [500, 200, 200]
        assert all(headers["x-telegram-bot-api-secret-token"] == "s3cret_-X" for headers, _ in hook.received)
        assert Update.de_json(hook.received[0][1], bot).message.text == "one"
        info = await bot.get_webhook_info()
        assert info.url == hook.url and info.pending_update_count == 0
        assert info.last_error_message == "Wrong response from the webhook: 500 Internal Server Error"

        fake.duplicate_next()
        third = fake.push_update(fake.user_message(DM, ANA, text="three"))
        await fake.wait_for(lambda: len(fake.webhook_attempts) == 5)
        assert [body["update_id"] for _, body in hook.received[3:]] == [third, third]

        assert await bot.delete_webhook()
        fourth = fake.push_update(fake.user_message(DM, ANA, text="four"))
        assert [u.update_id for u in await bot.get_updates()] == [fourth]
        assert len(hook.received) == 5


async def test_webhook_retries_after_a_timeout() -> None:
    async with FakeTelegram(webhook_timeout=0.2, webhook_retry_delay=0.05) as fake, receiver() as hook, \
            Bot(fake.token, base_url=fake.base_url) as bot:
        release = asyncio.Event()
        hook.script = [release]
        await bot.set_webhook(hook.url)
        update_id = fake.push_update(fake.user_message(DM, ANA, text="slow receiver"))
        await fake.wait_for(lambda: [a.status for a in fake.webhook_attempts] == [None, 200])
        assert fake.webhook_attempts[0].error == "Read timeout expired"
        assert [body["update_id"] for _, body in hook.received] == [update_id, update_id]
        assert "secret" not in " ".join(hook.received[0][0])  # no secret set, no header
        release.set()


# ------------------------------------------------------------------------------------------ commands


async def test_commands_by_scope_and_language(fake: FakeTelegram, bot: Bot) -> None:
    await bot.set_my_commands([BotCommand("start", "Start"), BotCommand("reset", "Forget")])
    await bot.set_my_commands([BotCommand("start", "Starten")], language_code="de")
    await bot.set_my_commands([BotCommand("admin", "Admin")], scope=BotCommandScopeChat(111))
    assert [c.command for c in await bot.get_my_commands()] == ["start", "reset"]
    assert [c.description for c in await bot.get_my_commands(language_code="de")] == ["Starten"]
    assert [c.command for c in await bot.get_my_commands(scope=BotCommandScopeChat(111))] == ["admin"]
    assert ('{"type":"default"}', "de") in fake.commands
    with pytest.raises(BadRequest):
        await bot.set_my_commands([BotCommand("Bad-Name", "x")])
    await bot.delete_my_commands(language_code="de")
    assert await bot.get_my_commands(language_code="de") == ()


# ------------------------------------------------------------------------------------------ PTB's Application


async def test_application_polling_end_to_end(fake: FakeTelegram) -> None:
    app = ApplicationBuilder().token(fake.token).base_url(fake.base_url).base_file_url(fake.base_file_url).build()

    async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text(f"echo: {update.message.text}", reply_markup=keyboard("again"))

    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.callback_query is not None
        await update.callback_query.answer("thanks")
        await update.callback_query.edit_message_text("done")

    app.add_handler(MessageHandler(filters.TEXT, on_text))
    app.add_handler(CallbackQueryHandler(on_button))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=dtm.timedelta(seconds=5), allowed_updates=Update.ALL_TYPES)
        fake.push_update(fake.user_message(DM, ANA, text="hello"))
        await fake.wait_for(lambda: fake.texts(111) == ["echo: hello"])
        (sent,) = fake.chat(111)
        fake.push_update(fake.callback(DM, ANA, sent.message_id, "again"))
        await fake.wait_for(lambda: fake.texts(111) == ["done"] and bool(fake.answered_callbacks))
        assert fake.answered_callbacks[0]["text"] == "thanks"
        with pytest.raises(ValueError, match="no button"):
            fake.callback(DM, ANA, sent.message_id, "again")  # the edit removed the keyboard
        await app.updater.stop()
        await app.stop()
    assert fake.pending_updates == []  # PTB confirmed everything on stop
    assert any(call.method == "deleteWebhook" for call in fake.calls)  # PTB's bootstrap
    async with Bot(fake.token, base_url=fake.base_url) as bot:
        with pytest.raises(BadRequest, match="Query is too old"):
            await bot.answer_callback_query("12345")


# ------------------------------------------------------------------------------------------ recorded payloads


PAYLOAD_NAMES = sorted(path.stem for path in PAYLOADS.glob("*.json"))


def test_all_payloads_are_recorded() -> None:
    assert set(PAYLOAD_NAMES) >= {
        "private_text", "group_mention", "group_photo_no_mention", "album_1", "album_2", "album_3", "video", "pdf",
        "forum_topic", "edited_message", "callback", "group_reply_to_bot", "voice", "sticker", "big_video",
        "from_bot", "text_mention",
    }


async def test_payloads_parse_with_ptb(fake: FakeTelegram) -> None:
    bot = Bot(fake.token, base_url=fake.base_url)
    for name in PAYLOAD_NAMES:
        payload = fake.load_payload(name)
        update = Update.de_json(payload, bot)
        assert update is not None and update.update_id == payload["update_id"], name
        assert update.effective_chat is not None and update.effective_user is not None, name
        assert not any("FILE_" in value for value in _strings(payload)), name  # placeholders are replaced
    messages = {name: Update.de_json(fake.load_payload(name), bot).effective_message for name in PAYLOAD_NAMES}
    assert messages["group_photo_no_mention"].photo[-1].width == 800
    assert messages["sticker"].sticker.thumbnail is not None
    assert messages["from_bot"].from_user.is_bot
    assert messages["text_mention"].entities[0].user.id == 123456789
    assert messages["group_reply_to_bot"].reply_to_message.from_user.username == "internvl_test_bot"
    assert messages["edited_message"].edit_date is not None
    assert messages["voice"].voice.mime_type == "audio/ogg"
    assert messages["big_video"].video.file_size == 50 * 1024 * 1024


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


async def test_payloads_through_the_wire(fake: FakeTelegram, bot: Bot) -> None:
    pdf = b"%PDF-1.7 recorded"
    fake.push_update(fake.load_payload("pdf", files={"FILE_PDF": pdf}))
    for index in (1, 2, 3):
        fake.push_update(fake.load_payload(f"album_{index}"))
    fake.push_update(fake.load_payload("forum_topic"))
    fake.push_update(fake.load_payload("big_video"))
    fake.push_update(fake.load_payload("group_mention", text="@internvl_test_bot overridden", chat__title="Renamed"))
    fake.push_update(fake.load_payload("callback"))
    pdf_update, *album, topic, big, mention, button = await bot.get_updates()

    file = await bot.get_file(pdf_update.message.document.file_id)
    assert bytes(await file.download_as_bytearray()) == pdf and file.file_size == len(pdf)
    assert len({u.message.media_group_id for u in album}) == 1
    assert [bool(u.message.caption) for u in album] == [True, False, False]
    assert album[0].message.parse_caption_entities() == {album[0].message.caption_entities[0]: "@internvl_test_bot"}
    assert topic.message.reply_to_message.forum_topic_created.name == "Questions"
    assert topic.message.message_thread_id == 42 and topic.message.chat.is_forum
    with pytest.raises(BadRequest, match="File is too big"):
        await bot.get_file(big.message.video.file_id)
    assert mention.message.text == "@internvl_test_bot overridden" and mention.message.chat.title == "Renamed"
    assert button.callback_query.data == "regenerate"
    assert await button.callback_query.answer() is True
    # The recorded bot message under the button is the bot's: it can edit it.
    edited = await button.callback_query.edit_message_text("Regenerated answer")
    assert edited.text == "Regenerated answer"
    assert fake.chat(button.callback_query.message.chat.id)[-1].edits == 1

    fake.push_update(fake.load_payload("group_reply_to_bot"))
    (reply_to_bot,) = await bot.get_updates(offset=button.update_id + 1)
    replied = reply_to_bot.message.reply_to_message
    assert replied.from_user.id == 123456789 and replied.message_id < reply_to_bot.message.message_id
    assert fake.chat(GROUP.id)[-1].message_id == replied.message_id

    # The bot may answer into the recorded chats and topics.
    assert (await bot.send_message(topic.message.chat.id, "hi", message_thread_id=42)).is_topic_message
    reply = await topic.message.reply_text("to you")
    assert reply.reply_to_message.message_id == topic.message.message_id
