"""The Telegram adapter, driving the real python-telegram-bot Application against the protocol-faithful Bot API
server of tests/fakes/telegram_api.py, in polling and in webhook mode. Assertions are on what the users see
in their chats: the final text, its topic, its reply target, the number of edits, nothing lost or doubled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.server import Service, build_app
from adapters.telegram import TelegramSettings
from adapters.telegram.adapter import TelegramAdapter
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.l10n.i18n import text as t
from bot.runtime import Runtime
from bot.seams import MediaFetcher
from bot.types import Attachment, ConversationKey
from tests.conftest import ROOT, image_bytes, make_settings
from tests.contracts import FetcherContract, FileSource, HarnessChat, PlatformContract, Screen, SinkContract
from tests.fakes.serving import free_port, serve_asgi
from tests.fakes.telegram_api import BotMessage, FakeTelegram, UserSpec, forum, group, private
from tests.media_corpus import needs_ffmpeg

# PTB_TIMEDELTA is opted into by the adapter: a deprecation warning of PTB is a failure here
pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")

ANA = UserSpec(111, "Ana", "ana_test")
RUI = UserSpec(333, "Rui", "rui_test", language_code="pt")
DM = private(111)
GROUP = group()
FORUM = forum()
BOT_USERNAME = "internvl_test_bot"
RECORDED_DM = 111111111  # the private chat of the recorded payloads (tests/payloads/telegram)



@dataclass
class Harness:
    tg: FakeTelegram
    runtime: Runtime
    adapter: TelegramAdapter
    url: str = ""

    def shown(self, chat_id: int) -> list[BotMessage]:
        return [m for m in self.tg.chat(chat_id) if not m.deleted]

    def texts(self, chat_id: int) -> list[str]:
        return [m.text or "" for m in self.shown(chat_id)]

    async def answered(self, chat_id: int, expected: str, timeout: float = 15) -> BotMessage:  # noqa: ASYNC109
        """Wait until a message in the chat shows exactly ``expected``; return it."""
        await self.tg.wait_for(lambda: expected in self.texts(chat_id), timeout)
        return next(m for m in self.shown(chat_id) if m.text == expected)

    async def idle(self) -> None:
        assert self.runtime.manager is not None
        await asyncio.wait_for(self.runtime.manager.idle(), 15)


@contextlib.asynccontextmanager
async def telegram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, mode: str = "polling",
                   engine: EchoEngine | None = None, flood: bool = False, tg: FakeTelegram | None = None,
                   max_new_tokens: int = 512, store: dict[str, Any] | None = None,
                   conversation: dict[str, Any] | None = None, **conf: Any) -> AsyncIterator[Harness]:
    """A running Telegram adapter (and, in webhook mode, the service's HTTP server) against the fake."""
    async with contextlib.AsyncExitStack() as stack:
        if tg is None:
            tg = await stack.enter_async_context(FakeTelegram(flood_control=flood, webhook_retry_delay=0.05))
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
        monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "hook-secret_123")
        port = free_port()
        section = {"enabled": True, "mode": mode, "base_url": tg.base_url, "base_file_url": tg.base_file_url,
                   "album_debounce": 0.3, "edit_interval": 0.3, "group_edit_interval": 1.0, "poll_timeout": 2, **conf}
        settings = make_settings(tmp_path, adapters={"telegram": section},
                                 server={"public_url": f"http://127.0.0.1:{port}"},
                                 engine={"generation": {"max_new_tokens": max_new_tokens}},
                                 conversation=conversation or {}, **({"store": store} if store else {}))
        runtime = await stack.enter_async_context(Runtime(settings, engine=engine or EchoEngine(delay=0.005)))
        assert runtime.manager is not None
        adapter = TelegramAdapter(runtime.manager, runtime.settings, settings.adapters.telegram)  # type: ignore[attr-defined]
        harness = Harness(tg, runtime, adapter)
        if mode == "webhook":
            service = Service(runtime.settings, runtime, [adapter])
            service.ready = True
            harness.url = await stack.enter_async_context(serve_asgi(build_app(service), port=port))
        await runtime.manager.start()
        await adapter.start()
        try:
            yield harness
        finally:
            adapter.stop_intake()
            await runtime.manager.stop(2)
            await adapter.close()


def message(tg: FakeTelegram, chat: Any, user: UserSpec, text: str, **kw: Any) -> int:
    return tg.push_update(tg.user_message(chat, user, text=text, **kw))


# -- lifecycle ---------------------------------------------------------------------------------


async def test_a_private_question_streams_with_drafts_and_ends_as_one_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = EchoEngine(delay=0.05)
    async with telegram(tmp_path, monkeypatch, engine=engine) as h:
        message(h.tg, DM, ANA, "why does my kettle click and switch off early?")
        final = await h.answered(111, "echo: why does my kettle click and switch off early?")
        assert len(h.shown(111)) == 1 and final.edits == 0  # previews were drafts, not edits
        drafts = [d["text"] for d in h.tg.drafts if d["chat_id"] == 111]
        assert drafts and drafts[-1] != final.text and final.text.startswith(drafts[0])
        assert [b["callback_data"] for row in final.buttons for b in row] == ["fb:up", "fb:down", "regen", "reset"]
        assert [b["text"] for b in final.buttons[0]] == ["👍", "👎"]
        assert any(a["action"] == "typing" for a in h.tg.chat_actions)
        await h.idle()
        assert h.tg.pending_updates == []  # confirmed: Telegram will not send it again
        # the command menu, in every language the framework speaks
        languages = {lang for (_, lang) in h.tg.commands}
        assert {"", "pt", "de", "ru", "ja"} <= languages
        assert any(c["description"] == t("cmd_human", "pt") for c in h.tg.commands[next(
            k for k in h.tg.commands if k[1] == "pt")])


async def test_the_operator_inbox_names_telegram_users_by_name_and_username(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    joana = UserSpec(444, "Joana", "joana_p", last_name="Prado")
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        message(h.tg, private(444), joana, "hello")
        await h.answered(444, "echo: hello")
        async with httpx.AsyncClient(base_url=h.url, headers={"Authorization": "Bearer op-token"}) as op:
            [listed] = (await op.get("/api/operator/conversations")).json()["active"]
        assert (listed["platform"], listed["name"], listed["key"]) == ("telegram", "Joana Prado (@joana_p)",
                                                                        "telegram:444")


async def test_groups_answer_mentions_replies_and_commands_only(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        tg = h.tg
        message(tg, GROUP, ANA, "nobody asked the bot")
        message(tg, GROUP, ANA, "/help@some_other_bot")
        question = tg.user_message(GROUP, ANA, text=f"@{BOT_USERNAME} is this normal?",
                                   entities=[{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}])
        tg.push_update(question)
        answer = await h.answered(GROUP.id, "echo: is this normal?")
        assert answer.reply_to_message_id == question["message"]["message_id"]  # a reply to the question
        message(tg, GROUP, ANA, "and what about this?", reply_to_bot_message=answer.message_id)
        await h.answered(GROUP.id, "echo: and what about this?")
        message(tg, GROUP, ANA, "/start@" + BOT_USERNAME,
                entities=[{"type": "bot_command", "offset": 0, "length": len(BOT_USERNAME) + 7}])
        await tg.wait_for(lambda: any(text.startswith("Hi! Send me a photo") for text in h.texts(GROUP.id)))
        await h.idle()
        assert not any("nobody asked" in text for text in h.texts(GROUP.id))
        assert len(h.shown(GROUP.id)) == 3
        # /start@bot came through PTB's CommandHandler (another bot's command matched none of its commands)
        from telegram.ext import CommandHandler

        handlers = [handler for group in h.adapter.app.handlers.values() for handler in group]
        assert any(isinstance(x, CommandHandler) and {"start", "reset", "find"} <= x.commands for x in handlers)


async def test_forum_topics_are_conversations_and_answers_stay_in_their_topic(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        tg = h.tg
        message(tg, FORUM, ANA, f"@{BOT_USERNAME} remember the blue valve", message_thread_id=7,
                entities=[{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}])
        answer = await h.answered(FORUM.id, "echo: remember the blue valve")
        assert answer.message_thread_id == 7
        message(tg, FORUM, ANA, f"@{BOT_USERNAME} hello", message_thread_id=9,
                entities=[{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}])
        other = await h.answered(FORUM.id, "echo: hello")
        assert other.message_thread_id == 9
        store = h.runtime.store
        assert store is not None
        from bot.types import ConversationKey

        assert [m.text for m in await store.transcript(ConversationKey("telegram", str(FORUM.id), "7"))] == [
            "remember the blue valve", "echo: remember the blue valve"]


async def test_edited_messages_and_other_bots_are_not_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        for name in ("edited_message", "from_bot"):
            payload = h.tg.load_payload(name)
            async with httpx.AsyncClient() as client:
                response = await client.post(h.url + "/telegram/webhook", json=payload,
                                             headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret_123"})
            assert response.status_code == 200
        await h.idle()
        assert h.runtime.store is not None and await h.runtime.store.last_message_id() == 0
        assert h.tg.calls_to("sendMessage") == []


# -- webhook -------------------------------------------------------------------------------------


async def test_webhook_mode_sets_the_webhook_and_refuses_wrong_secrets(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        assert h.tg.webhook is not None
        assert h.tg.webhook["url"] == h.url + "/telegram/webhook"
        assert h.tg.webhook["secret_token"] == "hook-secret_123"
        message(h.tg, DM, ANA, "hello over the webhook")
        await h.answered(111, "echo: hello over the webhook")
        payload = h.tg.load_payload("private_text")
        async with httpx.AsyncClient() as client:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                refused = await client.post(h.url + "/telegram/webhook", json=payload, headers=headers)
                assert refused.status_code == 401
            bad = await client.post(h.url + "/telegram/webhook", content=b"[not json",
                                    headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret_123"})
            assert bad.status_code == 400
        await h.idle()
        assert len(h.shown(111)) == 1  # the refused update was never processed


@pytest.mark.parametrize(("public_url", "warned"), [("http://bot.example.com", True), ("https://bot.example.com", False),
                                                    ("http://127.0.0.1:8080", False)])
async def test_webhook_mode_warns_when_telegram_could_not_call_the_public_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, public_url: str,
        warned: bool) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456789:AAF-test-token_xyz")
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "hook-secret_123")
    settings = make_settings(tmp_path, server={"public_url": public_url},
                             adapters={"telegram": {"enabled": True, "mode": "webhook"}})
    async with Runtime(settings, engine=EchoEngine()) as runtime:
        assert runtime.manager is not None
        TelegramAdapter(runtime.manager, runtime.settings, settings.adapters.telegram)  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "not https" in r.getMessage()]
    assert len(said) == int(warned), said
    if warned:
        assert public_url in said[0] and "server.public_url" in said[0]


async def test_replicas_poll_one_at_a_time_and_another_takes_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Any) -> None:
    """Two replicas on one PostgreSQL database: one long poll at a time (Telegram answers a second one with
    409 Conflict), each message answered once, and when the polling replica stops the other polls."""
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", postgres.database())
    async with FakeTelegram(webhook_retry_delay=0.05) as tg:
        first, second = contextlib.AsyncExitStack(), contextlib.AsyncExitStack()
        async with second:
            await first.enter_async_context(telegram(tmp_path / "a", monkeypatch, tg=tg, store={"backend": "postgres"}))
            await tg.wait_for(lambda: tg.polling >= 1, 10)  # the first replica leads: it polls
            b = await second.enter_async_context(telegram(tmp_path / "b", monkeypatch, tg=tg,
                                                          store={"backend": "postgres", "lease_seconds": 3}))
            for n in range(3):
                message(tg, DM, ANA, f"question {n}")
            for n in range(3):
                await b.answered(111, f"echo: question {n}")
            await first.aclose()  # the polling replica stops
            message(tg, DM, ANA, "still there?")
            await b.answered(111, "echo: still there?", timeout=20)
            await b.tg.wait_for(lambda: tg.pending_updates == [], 10)
            assert b.texts(111) == [f"echo: question {n}" for n in range(3)] + ["echo: still there?"]
            assert [c for c in tg.calls_to("getUpdates") if c.status == 409] == []


async def test_a_redelivered_update_is_answered_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in ("polling", "webhook"):
        async with telegram(tmp_path / mode, monkeypatch, mode=mode) as h:
            h.tg.duplicate_next(2)
            message(h.tg, DM, ANA, f"only once please ({mode})")
            await h.answered(111, f"echo: only once please ({mode})")
            await h.idle()
            assert h.texts(111) == [f"echo: only once please ({mode})"]


# -- media ----------------------------------------------------------------------------------------


async def test_an_album_is_one_turn_with_its_caption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, engine=EchoEngine(context_length=32768)) as h:
        tg = h.tg
        photos = {f"FILE_ALBUM{i}_L": image_bytes(800, 600, color=(i * 40, 10, 10)) for i in (1, 2, 3)}
        for name in ("album_1", "album_2", "album_3"):
            tg.push_update(tg.load_payload(name, files=photos))
        await tg.wait_for(lambda: any((m.text or "").startswith("[image 1:") and "echo:" in (m.text or "")
                                      for m in h.shown(GROUP.id)), 15)
        await h.idle()
        assert len(h.shown(GROUP.id)) == 1, [m.text for m in h.shown(GROUP.id)]
        [answer] = h.shown(GROUP.id)
        assert answer.text is not None
        assert answer.text.count("[image") == 3
        assert answer.text.endswith("echo: which of these is the original?")
        assert tg.calls_to("getFile") and len(tg.calls_to("getFile")) == 3


async def test_a_late_album_part_is_answered_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that reaches the bot after the album was handed over joins as a follow-up turn, never vanishes."""
    async with telegram(tmp_path, monkeypatch, engine=EchoEngine(context_length=32768)) as h:
        tg = h.tg
        photos = {f"FILE_ALBUM{i}_L": image_bytes(800, 600, color=(i * 40, 10, 10)) for i in (1, 2, 3)}
        for name in ("album_1", "album_2"):
            tg.push_update(tg.load_payload(name, files=photos))
        await tg.wait_for(lambda: any("echo: which of these is the original?" in (m.text or "")
                                      for m in h.shown(GROUP.id)), 15)
        await h.idle()
        tg.push_update(tg.load_payload("album_3", files=photos))  # long after the debounce
        await tg.wait_for(lambda: len(h.shown(GROUP.id)) == 2, 15)
        await h.idle()
        first, late = h.shown(GROUP.id)
        assert (first.text or "").count("[image") == 2
        assert (late.text or "").count("[image") == 1, late.text
        assert t("album_late_part", "en") in (late.text or "")
        assert len(tg.calls_to("getFile")) == 3
        stash = await h.runtime.manager.store.stashed("telegram:album:")  # type: ignore[union-attr]
        assert not any(item.isdigit() for parts in stash.values() for item, _ in parts)


@needs_ffmpeg
async def test_video_pdf_and_the_polite_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  videos: dict[str, Path]) -> None:
    from tests.test_documents import invoice_pdf

    async with telegram(tmp_path, monkeypatch) as h:
        tg = h.tg
        tg.push_update(tg.load_payload("video", files={"FILE_VIDEO": videos["phone"].read_bytes()}))
        await tg.wait_for(lambda: any("[video 1: 8 frames]" in (m.text or "") for m in h.shown(RECORDED_DM)), 30)
        tg.push_update(tg.load_payload("pdf", files={"FILE_PDF": invoice_pdf(2)}))
        await tg.wait_for(lambda: any("[page-2:" in (m.text or "") for m in h.shown(RECORDED_DM)), 30)
        downloads = len(tg.calls_to("getFile"))
        tg.push_update(tg.load_payload("big_video"))
        await tg.wait_for(lambda: any("too large" in (m.text or "") for m in h.shown(RECORDED_DM)), 15)
        assert len(tg.calls_to("getFile")) == downloads  # refused from the metadata, before any download
        tg.push_update(tg.load_payload("voice"))
        await h.answered(RECORDED_DM, t("voice_not_supported", "en"))
        tg.push_update(tg.load_payload("sticker"))
        await h.answered(RECORDED_DM, t("sticker_not_supported", "en"))
        await h.idle()
        assert len(tg.calls_to("getFile")) == downloads


async def test_the_users_language_from_telegram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        message(h.tg, private(333), RUI, "/start")
        await h.tg.wait_for(lambda: any(text.startswith("Olá") for text in h.texts(333)))


# -- answers ---------------------------------------------------------------------------------------


async def test_markdown_becomes_entities_and_plain_text_when_refused(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, drafts=False) as h:
        message(h.tg, DM, ANA, "**Drain** the `E15` tank")
        answer = await h.answered(111, "echo: Drain the E15 tank")
        assert {e["type"] for e in answer.entities} >= {"bold", "code"}
        # Telegram refusing the entities: the same words go out as plain text, for a new message and an edit
        from adapters.telegram.transport import TelegramTransport
        from bot.types import ConversationKey, SinkContext

        transport = TelegramTransport(h.adapter, SinkContext(ConversationKey("telegram", "111"),
                                                             route={"chat_type": "private"}))
        h.tg.fail("sendMessage", 400, description="Bad Request: can't parse entities: Unsupported start tag")
        sent = await transport.send("**bold** again", final=True)
        assert h.texts(111)[-1] == "**bold** again"
        h.tg.fail("editMessageText", 400, description="Bad Request: can't parse entities: Unsupported start tag")
        await transport.edit(sent, "**bold** and more", final=True)
        assert h.texts(111)[-1] == "**bold** and more"
        await transport.edit(sent, "**bold** and more", final=False)  # unchanged: "not modified" is fine


async def test_custom_emoji_keep_their_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, drafts=False) as h:
        message(h.tg, DM, ANA, "done ![👍](tg://emoji?id=5368324170671202286)")
        await h.tg.wait_for(lambda: any(e.get("type") == "custom_emoji" for m in h.shown(111) for e in m.entities), 15)
        [emoji] = [e for m in h.shown(111) for e in m.entities if e["type"] == "custom_emoji"]
        assert emoji["custom_emoji_id"] == "5368324170671202286"


async def test_a_long_answer_is_split_at_paragraphs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paragraphs = "\n\n".join(f"Paragraph {i}. " + "word " * 150 for i in range(8))
    async with telegram(tmp_path, monkeypatch, drafts=False, max_new_tokens=4096,
                        engine=EchoEngine(delay=0.001, context_length=32768)) as h:
        message(h.tg, DM, ANA, paragraphs)
        await h.tg.wait_for(lambda: len(h.shown(111)) >= 2 and bool(h.shown(111)[-1].buttons), 30)
        await h.idle()
        shown = h.shown(111)
        assert all(len(m.text or "") <= 4096 for m in shown)
        assert all((m.text or "").startswith(("echo: Paragraph", "Paragraph")) for m in shown)
        assert " ".join((m.text or "").strip() for m in shown).count("Paragraph") == 8
        assert [bool(m.buttons) for m in shown] == [False] * (len(shown) - 1) + [True]


async def test_a_429_storm_is_waited_out_nothing_lost_nothing_doubled(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, drafts=False) as h:
        h.tg.fail("sendMessage", 429, retry_after=1, times=2)
        h.tg.fail("editMessageText", 429, retry_after=1, times=2)
        for i in range(3):
            message(h.tg, DM, ANA, f"question {i} about the boiler")
        for i in range(3):
            await h.answered(111, f"echo: question {i} about the boiler", timeout=30)
        await h.idle()
        assert h.texts(111) == [f"echo: question {i} about the boiler" for i in range(3)]
        assert h.tg.served_429 == 4 and h.adapter.limiter.honoured >= 4


async def test_flood_limits_in_a_busy_group_are_honoured_not_hit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, flood=True) as h:
        mention = [{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}]
        for i in range(5):
            message(h.tg, GROUP, ANA, f"@{BOT_USERNAME} question {i}", entities=mention)
        for i in range(5):
            await h.answered(GROUP.id, f"echo: question {i}", timeout=60)
        assert h.tg.served_429 == 0


async def test_a_buttons_toast_speaks_the_language_the_user_writes_not_their_app_language(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rui's Telegram is in Portuguese (language_code pt) but he writes English: "Regenerating…" in English."""
    async with telegram(tmp_path, monkeypatch) as h:
        message(h.tg, private(333), RUI, "Can you help me with my boiler?")
        first = await h.answered(333, "echo: Can you help me with my boiler?")
        h.tg.push_update(h.tg.callback(private(333), RUI, first.message_id, "regen"))
        await h.tg.wait_for(lambda: len(h.tg.answered_callbacks) == 1)
        assert h.tg.answered_callbacks[0].get("text") == t("regenerating", "en")


async def test_buttons_regenerate_and_start_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = EchoEngine(record=True)
    async with telegram(tmp_path, monkeypatch, engine=engine) as h:
        tg = h.tg
        message(tg, DM, ANA, "first question")
        first = await h.answered(111, "echo: first question")
        tg.push_update(tg.callback(DM, ANA, first.message_id, "regen"))
        await tg.wait_for(lambda: h.texts(111).count("echo: first question") == 2)
        await tg.wait_for(lambda: len(tg.answered_callbacks) == 1)
        assert tg.answered_callbacks[0].get("text") == t("regenerating", "en")
        # the old question and answer left the context: the model saw the question once
        assert [m.text for m in engine.calls[-1][1:]] == ["first question"]
        latest = h.shown(111)[-1]
        tg.push_update(tg.callback(DM, ANA, latest.message_id, "reset"))
        await tg.wait_for(lambda: any(text.startswith("Done — I have started a fresh conversation")
                                      for text in h.texts(111)))


async def test_export_arrives_as_a_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        message(h.tg, DM, ANA, "| item | total |\n|---|---|\n| pump | 12.50 |")
        await h.tg.wait_for(lambda: len(h.shown(111)) == 1 and bool(h.shown(111)[0].buttons))
        message(h.tg, DM, ANA, "/export csv")
        await h.tg.wait_for(lambda: any(m.document is not None for m in h.shown(111)))
        document = next(m.document for m in h.shown(111) if m.document is not None)
        assert document.filename.endswith(".csv") and b"pump,12.50" in document.data


async def test_handoff_silences_the_bot_and_operator_replies_reach_the_chat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with telegram(tmp_path, monkeypatch) as h:
        from adapters.operator import OperatorInbox

        assert h.runtime.manager is not None
        h.runtime.manager.add_notifier(OperatorInbox(h.runtime.manager, h.runtime.settings))  # someone to hand over to
        message(h.tg, DM, ANA, "/human")
        await h.answered(111, t("handoff_started", "en"))
        message(h.tg, DM, ANA, "is anyone there?")
        await h.answered(111, t("handoff_passed_on", "en"))  # held for the person, not answered: a receipt
        await h.idle()
        assert len(h.shown(111)) == 2
        from bot.types import ConversationKey

        assert h.runtime.manager is not None
        await h.runtime.manager.operator_reply(ConversationKey("telegram", "111"), "Hi, Ana here.", author="Ana")
        await h.answered(111, "Ana: Hi, Ana here.")


def test_start_up_fails_closed_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    settings = make_settings(tmp_path, adapters={"telegram": {"enabled": True}})
    with pytest.raises(Exception, match="TELEGRAM_BOT_TOKEN"):
        settings.check_secrets()
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456789:AAF-test-token_xyz")
    monkeypatch.delenv("TELEGRAM_WEBHOOK_SECRET", raising=False)
    webhook = make_settings(tmp_path, adapters={"telegram": {"enabled": True, "mode": "webhook"}})
    with pytest.raises(Exception, match="TELEGRAM_WEBHOOK_SECRET"):
        webhook.check_secrets()
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "has spaces!")
    conf = TelegramSettings(enabled=True, mode="webhook")
    with pytest.raises(StartupError, match="1-256 characters"):
        TelegramAdapter(object(), webhook, conf)  # type: ignore[arg-type]


# -- kill -9 ----------------------------------------------------------------------------------------


SERVE = """
import sys
from adapters.cli import main
sys.exit(main(["serve", "--port", "0"]))
"""


@pytest.mark.slow
async def test_kill_9_mid_answer_then_restart_answers_once_in_the_same_message(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    async with FakeTelegram(webhook_retry_delay=0.05) as tg:
        config.write_text(
            f"data_dir: {tmp_path / 'data'}\nengine:\n  kind: echo\n  echo:\n    delay_ms: 150\n"
            "adapters:\n  web:\n    enabled: false\n  telegram:\n    enabled: true\n"
            f"    base_url: {tg.base_url}\n    base_file_url: {tg.base_file_url}\n    poll_timeout: 1\n"
            "    group_edit_interval: 1.0\n", encoding="utf-8")
        env = {**os.environ, "INTERNVL_BOT_CONFIG": str(config), "TELEGRAM_BOT_TOKEN": tg.token,
               "PYTHONPATH": str(ROOT)}

        def serve() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-c", SERVE], cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        first = serve()
        try:
            words = " ".join(f"w{i}" for i in range(40))
            mention = [{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}]
            message(tg, GROUP, ANA, f"@{BOT_USERNAME} {words}", entities=mention)
            # wait for a partial answer on screen (one message, being edited), then kill the process
            await tg.wait_for(lambda: any((m.text or "").startswith("echo: w0") and m.edits >= 1
                                          for m in tg.chat(GROUP.id)), 60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            partial = [m.text for m in tg.chat(GROUP.id)]
            assert len(partial) == 1 and partial[0] != f"echo: {words}"
            second = serve()
            try:
                await tg.wait_for(lambda: any(m.text == f"echo: {words}" for m in tg.chat(GROUP.id)), 90)
            finally:
                second.send_signal(signal.SIGTERM)  # an answer still under way gets the grace period to show
                await asyncio.to_thread(second.wait, 30)
            shown = [m for m in tg.chat(GROUP.id) if not m.deleted]
            assert [m.text for m in shown] == [f"echo: {words}"]
            assert shown[0].message_id == tg.chat(GROUP.id)[0].message_id  # completed in place
            rows = sqlite3.connect(tmp_path / "data" / "internvl-bot.sqlite3").execute(
                "SELECT role, state FROM messages ORDER BY id").fetchall()
            assert rows == [("user", "answered"), ("assistant", "answered")]
        finally:
            if first.poll() is None:
                first.kill()


@pytest.mark.parametrize(("payload", "chat", "expected", "thread"), [
    ("private_text", RECORDED_DM, "echo: Hello! What can you do?", None),
    ("group_mention", GROUP.id, "echo: what is the capital of Portugal?", None),
    ("group_photo_no_mention", GROUP.id, None, None),
    ("forum_topic", FORUM.id, "echo: hello from the Questions topic", 42),
    ("group_reply_to_bot", GROUP.id, "echo: and what is its population?", None),
    ("text_mention", GROUP.id, "echo: , what is in the first photo?", None),
])
async def test_recorded_updates_through_the_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: str,
                                                   chat: int | None, expected: str | None, thread: int | None) -> None:
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        update_id = h.tg.push_update(h.tg.load_payload(payload))  # Telegram POSTs it to the webhook
        await h.tg.wait_for(lambda: any(a.update_id == update_id and a.status == 200 for a in h.tg.webhook_attempts))
        await h.idle()
        if expected is None:
            assert h.tg.calls_to("sendMessage") == []
            return
        assert chat is not None
        answer = await h.answered(chat, expected)
        assert answer.message_thread_id == thread


async def test_edits_are_not_even_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        h.tg.push_update(h.tg.load_payload("edited_message"))
        assert h.tg.webhook is not None and set(h.tg.webhook["allowed_updates"]) == {"message", "callback_query"}
        assert [u.get("edited_message", {}).get("text") for u in h.tg.filtered_updates]  # filtered out by Telegram


async def test_a_recorded_button_press_is_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch, mode="webhook") as h:
        h.tg.push_update(h.tg.load_payload("callback"))
        await h.tg.wait_for(lambda: len(h.tg.answered_callbacks) == 1)


async def test_an_adapter_failing_to_start_closes_those_already_started(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Telegram starts polling, then Slack cannot reach its API: serve stops with the error, and Telegram's
    polling and the HTTP server are closed (no half-started process left behind)."""
    from adapters.server import serve

    async with FakeTelegram() as tg:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test-token")
        monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-test-token")
        port, dead = free_port(), free_port()
        settings = make_settings(tmp_path, engine={"kind": "echo"}, adapters={
            "telegram": {"enabled": True, "base_url": tg.base_url, "base_file_url": tg.base_file_url,
                         "poll_timeout": 2},
            "slack": {"enabled": True, "api_url": f"http://127.0.0.1:{dead}/api/"}})
        with pytest.raises(Exception):  # noqa: B017, PT011 - whichever error Slack's client raises
            await asyncio.wait_for(serve(settings, host="127.0.0.1", port=port), 60)
        await tg.wait_for(lambda: tg.polling == 0, 10)
        calls = len(tg.calls_to("getUpdates"))
        await asyncio.sleep(0.5)
        assert len(tg.calls_to("getUpdates")) == calls  # nobody polls any more
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # the HTTP server let go of its port


# -- the platform contract --------------------------------------------------------------------------


class TelegramChat(HarnessChat):
    """Ana's private chat with the bot, by polling (webhook mode shares the same intake after the request)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tg: FakeTelegram) -> None:
        super().__init__(EchoEngine(delay=0.005))
        self.tmp_path, self.monkeypatch, self.tg = tmp_path, monkeypatch, tg

    def open_harness(self) -> contextlib.AbstractAsyncContextManager[Harness]:
        return telegram(self.tmp_path, self.monkeypatch, engine=self.engine, tg=self.tg,
                        conversation={"max_pending_per_conversation": 1})

    async def say(self, text: str) -> dict[str, Any]:
        update = self.tg.user_message(DM, ANA, text=text)
        return {**update, "update_id": self.tg.push_update(update)}

    async def redeliver(self, delivery: dict[str, Any]) -> None:
        self.tg.redeliver(delivery)

    def seen(self) -> list[str]:
        return [m.text or "" for m in self.tg.chat(DM.id) if not m.deleted]

    def outage(self, down: bool) -> None:
        if down:
            self.tg.fail("*", 503, times=10**6)
        else:
            self.tg.heal()

    async def idle(self) -> None:
        await super().idle()
        await self.tg.wait_for(lambda: not self.tg.pending_updates, 15)


class TestTelegramPlatform(PlatformContract):
    @pytest.fixture
    async def chat(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TelegramChat]:
        async with FakeTelegram(webhook_retry_delay=0.05) as tg, \
                HarnessChat.running(TelegramChat(tmp_path, monkeypatch, tg)) as chat:
            yield chat  # type: ignore[misc]

    async def test_a_late_album_part_is_answered_not_dropped(self, chat: TelegramChat) -> None:
        """A part reaching the bot after its album was handed over: a follow-up turn that says so."""
        tg = chat.tg
        for n in (1, 2):
            tg.push_update(tg.user_message(DM, ANA, photo=image_bytes(64, 48), media_group_id="album-7",
                                           caption="which one is the original?" if n == 1 else None))
        await tg.wait_for(lambda: any("echo: which one is the original?" in t for t in chat.seen()), 15)
        await chat.idle()
        tg.push_update(tg.user_message(DM, ANA, photo=image_bytes(64, 48), media_group_id="album-7"))
        await tg.wait_for(lambda: len(chat.seen()) == 2, 15)
        await chat.idle()
        first, late = chat.seen()
        assert first.count("[image") == 2 and late.count("[image") == 1, chat.seen()
        assert t("album_late_part", "en") in late


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    async with telegram(tmp_path, monkeypatch) as h:
        message(h.tg, DM, ANA, "hello")  # the chat exists: Ana wrote first
        await h.answered(DM.id, "echo: hello")
        await h.idle()
        yield h


class TestTelegramSink(SinkContract):
    @pytest.fixture
    def screen(self, running: Harness) -> Screen:
        async def visible() -> list[str]:
            await running.idle()
            return running.texts(DM.id)

        async def files() -> list[str]:
            return [m.document.filename for m in running.shown(DM.id) if m.document is not None]

        return Screen(running.adapter.channel.sink_for, visible, files, ConversationKey("telegram", str(DM.id)))


class TestTelegramFetcher(FetcherContract):
    @pytest.fixture
    def files(self, running: Harness) -> FileSource:
        async def add(data: bytes, name: str) -> tuple[MediaFetcher, Attachment]:
            file_id, _ = running.tg.add_file(data, path_hint=f"documents/{name}")
            return running.adapter.channel.fetcher, Attachment(ref=file_id, filename=name)

        async def missing() -> tuple[MediaFetcher, Attachment]:
            return running.adapter.channel.fetcher, Attachment(ref="BQACAgQAAxkBAAIBgone", filename="gone.pdf")

        return FileSource(add, missing)
