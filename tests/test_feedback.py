"""Feedback on answers through the platforms' fakes (a press recorded once, a redelivered press not twice, the
comment a 👎 asks for), the implicit signals, and the ``internvl_bot_feedback_total`` counter."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters import cli
from bot.engines import EchoEngine
from bot.l10n.i18n import text as t
from bot.l10n.personas import load_personas
from bot.store import AnswerMeta, NewFeedback, NewMessage, SQLiteStore, sha256_of
from bot.training.export import ExportOptions, export_mpo, export_sft
from bot.training.privacy import redact, strip_metadata, strip_salutations
from bot.types import Attachment, ConversationKey
from tests.conftest import make_settings
from tests.helpdesk_peer import RESOLVED
from tests.live_server import exchange, live_server, open_session, sse_events, streams, subscribed
from tests.media_corpus import ffmpeg, needs_ffmpeg
from tests.test_chatwoot import chatwoot
from tests.test_django_helpdesk import helpdesk_bot, helpdesk_peer
from tests.test_slack import CHANNEL, USER, mention, slack
from tests.test_telegram import ANA, DM, message, telegram
from tests.test_web import metric


def counted(h: Any, kind: str, platform: str) -> float:
    assert h.runtime.manager is not None
    return sum(sample.value for metric in h.runtime.manager.metrics.feedback.collect() for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels["kind"] == kind
               and sample.labels["platform"] == platform)


async def test_telegram_thumbs_up_is_recorded_once_and_becomes_thanks(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        message(h.tg, DM, ANA, "how do I descale a kettle?")
        answer = await h.answered(111, "echo: how do I descale a kettle?")
        await h.idle()
        press = h.tg.callback(DM, ANA, answer.message_id, "fb:up")
        h.tg.push_update(press)
        await h.tg.wait_for(lambda: len(h.tg.answered_callbacks) == 1)
        assert h.tg.answered_callbacks[0].get("text") == t("feedback_thanks", "en")
        await h.tg.wait_for(lambda: answer.buttons[0][0]["callback_data"] == "fb:done")
        assert [b["callback_data"] for row in answer.buttons for b in row] == ["fb:done", "regen", "reset"]
        assert answer.buttons[0][0]["text"] == t("btn_feedback_thanks", "en")
        h.tg.push_update(press)  # Telegram delivers the same press again (a webhook retry, a restart)
        await h.tg.wait_for(lambda: len(h.tg.answered_callbacks) == 2)
        rows = await store.feedback()
        stored = await store.find_by_platform_id("telegram", "111", str(answer.message_id))
        assert stored is not None and stored.role == "assistant"
        assert [(f.kind, f.signal, f.message_id, f.user, f.model) for f in rows] == [
            ("up", "explicit", stored.id, "111", "echo")]
        assert rows[0].persona == h.runtime.settings.conversation.default_persona
        assert counted(h, "up", "telegram") == 1
        assert t("feedback_ask_comment", "en") not in h.texts(111)


async def test_telegram_thumbs_down_asks_once_and_keeps_the_next_message_as_its_comment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = EchoEngine(record=True)
    async with telegram(tmp_path, monkeypatch, engine=engine) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        message(h.tg, DM, ANA, "which fuse for the pump?")
        answer = await h.answered(111, "echo: which fuse for the pump?")
        await h.idle()
        h.tg.push_update(h.tg.callback(DM, ANA, answer.message_id, "fb:down"))
        await h.answered(111, t("feedback_ask_comment", "en"))
        calls = len(engine.calls)
        message(h.tg, DM, ANA, "it named the wrong fuse rating")
        await h.answered(111, t("feedback_comment_thanks", "en"))
        await h.idle()
        assert len(engine.calls) == calls  # a comment, not a question
        assert "echo: it named the wrong fuse rating" not in h.texts(111)
        [down] = await store.feedback()
        assert (down.kind, down.comment) == ("down", "it named the wrong fuse rating")
        # asked once: the next message is a question again
        message(h.tg, DM, ANA, "and for the heater?")
        await h.answered(111, "echo: and for the heater?")
        assert h.texts(111).count(t("feedback_ask_comment", "en")) == 1
        assert counted(h, "down", "telegram") == 1


async def test_regenerate_reset_and_handoff_right_after_an_answer_are_implicit_signals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        message(h.tg, DM, ANA, "first question")
        first = await h.answered(111, "echo: first question")
        await h.idle()  # the answer is stored with its platform id
        lost = await store.find_by_platform_id("telegram", "111", str(first.message_id))
        h.tg.push_update(h.tg.callback(DM, ANA, first.message_id, "regen"))
        await h.tg.wait_for(lambda: h.texts(111).count("echo: first question") == 2)
        await h.idle()
        kept = h.shown(111)[-1]
        h.tg.push_update(h.tg.callback(DM, ANA, kept.message_id, "reset"))
        await h.tg.wait_for(lambda: any(x.startswith("Done — I have started a fresh conversation") for x in h.texts(111)))
        await h.idle()
        message(h.tg, DM, ANA, "second question")
        await h.answered(111, "echo: second question")
        shown = len(h.shown(111))
        message(h.tg, DM, ANA, "/human")
        await h.tg.wait_for(lambda: len(h.shown(111)) > shown)  # told that no one can take it, or who will
        await h.idle()
        rows = await store.feedback()
        assert [(f.kind, f.signal) for f in rows] == [("regenerated", "implicit"), ("reset_after_answer", "implicit"),
                                                      ("handoff_after_answer", "implicit")]
        assert lost is not None and rows[0].message_id == lost.id
        new_question = await store.message(int(rows[0].value))
        assert new_question.text == "first question" and new_question.id > lost.id
        assert counted(h, "regenerated", "telegram") == 1


async def test_a_question_after_a_reset_is_no_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with telegram(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        message(h.tg, DM, ANA, "/reset")
        await h.tg.wait_for(lambda: len(h.shown(111)) == 1)
        message(h.tg, DM, ANA, "/human")
        await h.tg.wait_for(lambda: len(h.shown(111)) == 2)
        await h.idle()
        assert await store.feedback() == []


async def test_web_thumbs_are_recorded_once_per_answer_and_counted(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.01)) as live, live.client() as client:
        await open_session(client)
        ui = (await client.get("/api/session")).json()["ui"]
        assert (ui["feedback_up"], ui["feedback_down"]) == (t("ui_feedback_up", "en"), t("ui_feedback_down", "en"))
        _, events = await exchange(live, client, "is the filter washable?")
        question = events[-1]["reply_to"]
        headers = {"X-InternVL-Bot": "1"}
        assert (await client.post("/api/feedback", json={"question": question, "rating": "sideways"},
                                  headers=headers)).status_code == 400
        assert (await client.post("/api/feedback", json={"question": question, "rating": "down"})).status_code == 403
        assert (await client.post("/api/feedback", json={"question": 10**6, "rating": "up"},
                                  headers=headers)).status_code == 404
        first = await client.post("/api/feedback", json={"question": question, "rating": "up"}, headers=headers)
        assert first.json() == {"recorded": True}
        again = await client.post("/api/feedback", json={"question": question, "rating": "up"}, headers=headers)
        assert again.json() == {"recorded": False}  # the same press sent twice (a retry, a second tab)
        rows = await live.runtime.manager.store.feedback()  # type: ignore[union-attr]
        assert [(f.kind, f.key.platform) for f in rows] == [("up", "web")]
        answer = await live.runtime.manager.store.message(rows[0].message_id)  # type: ignore[union-attr]
        assert (answer.role, answer.reply_to, answer.text) == ("assistant", question, "echo: is the filter washable?")
        body = (await client.get("/metrics")).text
        persona = live.runtime.settings.conversation.default_persona
        assert metric(body, "internvl_bot_feedback_total", kind="up", platform="web", persona=persona) == 1
        # another browser cannot rate this conversation's answers
        async with live.client() as other:
            await open_session(other)
            assert (await other.post("/api/feedback", json={"question": question, "rating": "down"},
                                     headers=headers)).status_code == 404




async def test_web_thumbs_down_asks_once_and_keeps_the_next_message_as_its_comment(tmp_path: Path) -> None:
    engine = EchoEngine(delay=0.01, record=True)
    async with live_server(make_settings(tmp_path), engine) as live, live.client() as client:
        store = live.runtime.manager.store  # type: ignore[union-attr]
        await open_session(client)
        _, events = await exchange(live, client, "is the filter washable?")
        question = events[-1]["reply_to"]
        before = streams(live)
        reader = asyncio.create_task(sse_events(client, until="notice"))
        await subscribed(live, before)
        down = await client.post("/api/feedback", json={"question": question, "rating": "down"},
                                 headers={"X-InternVL-Bot": "1"})
        assert down.json() == {"recorded": True}
        asked = (await asyncio.wait_for(reader, 10))[-1]
        assert asked["text"] == t("feedback_ask_comment", "en")
        calls = len(engine.calls)
        _, events = await exchange(live, client, "it is not washable, only replaceable", until="notice")
        assert events[-1]["text"] == t("feedback_comment_thanks", "en")
        assert not [e for e in events if e["type"] == "done"] and len(engine.calls) == calls  # not a question
        [row] = await store.feedback()
        assert (row.kind, row.comment) == ("down", "it is not washable, only replaceable")
        # asked once: the same press again is not a new 👎, and the next message is a question again
        again = await client.post("/api/feedback", json={"question": question, "rating": "down"},
                                  headers={"X-InternVL-Bot": "1"})
        assert again.json() == {"recorded": False}
        _, events = await exchange(live, client, "and the hose?")
        assert events[-1]["type"] == "done" and "echo: and the hose?" in events[-1]["html"]
        texts = [m.text for m in await store.transcript(row.key)]  # notices are stored with the conversation
        assert texts.count(t("feedback_ask_comment", "en")) == 1


async def test_slack_feedback_buttons_record_a_press_once_and_thank_the_presser(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        payload = mention(h, "how do I reset the router?")
        await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        answer = await h.answered(CHANNEL, ts, "echo: how do I reset the router?")
        await h.idle()
        [block] = answer.blocks or []
        assert block["type"] == "context_actions" and block["elements"][0]["type"] == "feedback_buttons"
        press = h.slack.feedback_press(CHANNEL, answer.ts, USER, positive=True)
        first = await h.slack.send_block_actions(press)
        await h.slack.wait_for(lambda: len(h.slack.ephemerals) == 1)
        await h.slack.wait_for(lambda: h.slack.acked(first))
        assert h.slack.ephemerals[0]["user"] == USER and h.slack.ephemerals[0]["thread_ts"] == ts
        assert h.slack.ephemerals[0]["text"] == t("feedback_thanks", "en")
        await h.slack.send_block_actions(press)  # the same press delivered again (a reconnect)
        await h.slack.wait_for(lambda: len(h.slack.ephemerals) == 2)
        stored = await store.find_by_platform_id("slack", CHANNEL, answer.ts)
        assert stored is not None and stored.role == "assistant"
        assert [(f.kind, f.message_id, f.user) for f in await store.feedback()] == [("up", stored.id, USER)]
        assert counted(h, "up", "slack") == 1
        # a 👎 (another press, its own action_ts) is a second row and asks what was wrong
        await h.slack.send_block_actions(h.slack.feedback_press(CHANNEL, answer.ts, USER, positive=False))
        await h.slack.wait_for(lambda: len(h.slack.ephemerals) == 3)
        assert h.slack.ephemerals[2]["text"] == t("feedback_ask_comment", "en")
        assert [f.kind for f in await store.feedback()] == ["up", "down"]


async def test_slack_answers_posted_without_streaming_carry_the_feedback_buttons_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, native_streaming=False) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        payload = mention(h, "how do I reset the **router**?")
        await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        answer = await h.answered(CHANNEL, ts, "echo: how do I reset the *router*?")  # the notification text
        await h.idle()
        assert h.slack.calls_to("chat.startStream") == []
        markdown, actions = answer.blocks or []
        assert (markdown["type"], markdown["text"]) == ("markdown", "echo: how do I reset the **router**?")
        assert actions["type"] == "context_actions" and actions["elements"][0]["type"] == "feedback_buttons"
        await h.slack.send_block_actions(h.slack.feedback_press(CHANNEL, answer.ts, USER, positive=False))
        await h.slack.wait_for(lambda: len(h.slack.ephemerals) == 1)
        assert h.slack.ephemerals[0]["text"] == t("feedback_ask_comment", "en")
        stored = await store.find_by_platform_id("slack", CHANNEL, answer.ts)
        assert stored is not None
        assert [(f.kind, f.message_id, f.user) for f in await store.feedback()] == [("down", stored.id, USER)]


async def test_chatwoot_csat_rates_the_bots_answers_once_per_survey(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        h.cw.add_inbox(3, "Shop", csat_survey_enabled=True)
        conv = h.cw.conversation(inbox_id=3)
        for question in ("is the pump covered?", "and the hose?"):
            await h.cw.customer_message(conv, question)
            await h.replied(conv, f"echo: {question}")
            await h.idle()
        await h.cw.set_status(conv, "resolved")
        assert h.cw.csat_survey(conv) is not None
        payload = await h.cw.csat_response(conv, 4, "quick, but the hose answer was vague")
        await h.cw.deliver("message_updated", payload)  # Chatwoot sends the same rating again
        rows = await store.feedback()
        answers = [m for m in await store.transcript(ConversationKey("chatwoot", "1", str(conv)))
                   if m.role == "assistant"]
        assert [(f.kind, f.message_id, f.value, f.comment) for f in rows] == [
            ("csat", a.id, "4", "quick, but the hose answer was vague") for a in answers]
        assert len(rows) == 2 and counted(h, "csat", "chatwoot") == 2


async def test_chatwoot_agent_replies_judge_the_bots_drafts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch, agent_assist_inboxes=[2]) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        h.cw.add_inbox(2, "Email")
        convs = [h.cw.conversation(status="open", inbox_id=2) for _ in range(4)]
        for n, conv in enumerate(convs):
            await h.cw.customer_message(conv, f"Where is my parcel number {n}?")
            await h.cw.wait_for(lambda conv=conv, n=n: f"echo: Where is my parcel number {n}?"
                                in h.cw.private_notes(conv))
        await h.idle()
        sent = await h.cw.agent_message(convs[0], "echo: Where is my parcel number 0? ")  # as is
        await h.cw.deliver("message_created", sent)  # redelivered: judged once
        await h.cw.agent_message(convs[1], "Your parcel number 1 left our warehouse today.")  # edited
        await h.cw.agent_message(convs[2], "Hello! Could you send me your order id, please?")  # discarded
        await h.cw.agent_message(convs[2], "echo: Where is my parcel number 2?")  # decided already
        await h.cw.agent_message(convs[3], "a note for colleagues", private=True)  # not a reply
        await h.cw.set_status(convs[3], "resolved")  # closed without using the draft
        by_conv = {f.key.thread: (f.kind, f.value) for f in await store.feedback()}
        assert by_conv == {
            str(convs[0]): ("sent_as_is", ""),
            str(convs[1]): ("edited", "Your parcel number 1 left our warehouse today."),
            str(convs[2]): ("discarded", "Hello! Could you send me your order id, please?"),
            str(convs[3]): ("discarded", ""),
        }
        assert len(await store.feedback()) == 4 and counted(h, "sent_as_is", "chatwoot") == 1


@pytest.mark.slow
async def test_django_helpdesk_staff_replies_judge_the_bots_private_drafts_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real django-helpdesk: in an agent-assist queue each staff reply (or closing without one) judges the
    newest private draft before it, once, whether the webhook, a redelivery or the catch-up sweep brings it."""
    async with helpdesk_peer(tmp_path, monkeypatch) as peer, \
            helpdesk_bot(tmp_path, peer, agent_assist_queues=["billing"]) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]

        async def swept() -> bool:
            return h.adapter.sweeps >= 1

        await h.until(swept)  # the first sweep sets the mark: a later sweep sees all that follows again
        tickets = [await h.site.customer_ticket(f"Invoice {n}", f"Why was I charged {n} EUR?", queue="billing",
                                                via="email") for n in range(4)]
        drafts = [(await h.until(lambda ticket=ticket: h.bot_followups(ticket)))[0] for ticket in tickets]
        assert [d["public"] for d in drafts] == [False] * 4
        support = await h.site.customer_ticket("Kettle", "Does it descale itself?", via="email")
        await h.until(lambda: h.bot_followups(support))
        await h.idle()

        as_is = await h.site.staff_followup(tickets[0], drafts[0]["comment"] + " ")  # copied, zero-width spaces too
        redelivery = peer.front.body(lambda b: b.get("followup_id") == as_is["id"])
        async with httpx.AsyncClient(timeout=20) as client:
            assert (await client.post(h.hook, json=redelivery)).status_code == 200
        app, peer.front.app = peer.front.app, None  # the bot is away: the edited reply's webhook is lost (503)
        await h.site.staff_followup(tickets[1], "Invoice 1: you were charged 1 EUR for the yearly plan.")
        peer.front.app = app
        await h.site.staff_followup(tickets[2], "Hello! Could you send me your customer number, please?")
        await h.site.staff_followup(tickets[2], drafts[2]["comment"])  # the first reply decided the draft
        await h.site.customer_followup(tickets[2], "It is 4711.")  # a new draft, newer than both replies
        await h.until(lambda: _drafted(h, tickets[2], "echo: It is 4711."))
        await h.site.staff_followup(tickets[3], "a note for colleagues", public=False)  # not a reply
        await h.site.staff_followup(tickets[3], "", public=False, new_status=RESOLVED)  # closed without one
        await h.site.staff_followup(support, "Staff here: yes, every month.")  # a public answer is no draft
        await h.idle()

        def judged() -> dict[str, tuple[str, str]]:
            return {f.key.chat: (f.kind, f.value) for f in rows}

        rows = await store.feedback()
        expected = {
            str(tickets[0]): ("sent_as_is", ""),
            str(tickets[2]): ("discarded", "Hello! Could you send me your customer number, please?"),
            str(tickets[3]): ("discarded", ""),
        }
        assert judged() == expected and len(rows) == 3
        # the sweep finds the lost reply, and hands on every other staff follow-up again: nothing twice, and the
        # old replies of ticket 2 do not judge its newer draft
        assert await h.adapter.catch_up() == 0  # the customers' follow-ups again too: the store drops them
        await h.idle()
        rows = await store.feedback()
        expected[str(tickets[1])] = ("edited", "Invoice 1: you were charged 1 EUR for the yearly plan.")
        assert judged() == expected and len(rows) == 4
        assert counted(h, "discarded", "django_helpdesk") == 2 and counted(h, "sent_as_is", "django_helpdesk") == 1


async def _drafted(h: Any, ticket: int, text: str) -> bool:
    return any(f["comment"].strip() == text and not f["public"] for f in await h.bot_followups(ticket))


# -- training data out -------------------------------------------------------------------------

GPS_EXIF = 0x8825


def photo_with_gps(color: tuple[int, int, int]) -> bytes:
    image = Image.new("RGB", (64, 48), color)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[GPS_EXIF] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_redaction_replaces_addresses_numbers_and_the_platforms_names() -> None:
    text = ("I'm Ana Lima (@ana_test), write to ana.lima@example.com or call +351 912 345 678; card "
            "4111 1111 1111 1111. Model X200 from 2019, order 12345.")
    assert redact(text, ["Ana Lima (@ana_test)"]) == (
        "I'm [name], write to [email] or call [phone]; card [card]. Model X200 from 2019, order 12345.")
    assert redact("Lima called Ana; ANA agreed", ["Ana Lima"]) == "[name] called [name]; [name] agreed"



def test_greetings_and_sign_offs_are_dropped_and_the_answer_kept() -> None:
    answer = ("Hi Jane,\n\nHold the reset button for ten seconds.\nThen plug it in again.\n\nBest regards,\n"
              "Ana Lima\nSupport team, Acme")
    assert strip_salutations(answer) == "Hold the reset button for ten seconds.\nThen plug it in again."
    assert strip_salutations("Dear Mr Smith!\nYour refund is on its way.\nCheers\nBob") == "Your refund is on its way."
    # a line that only starts like a greeting or a sign-off is content
    kept = "Hello world is the first program.\nThanks to the new firmware the pump restarts by itself after a cut."
    assert strip_salutations(kept) == kept
    assert strip_salutations("Thanks, that fixed it.") == "Thanks, that fixed it."
    # advice that begins with a sign-off's word is the answer, not its farewell (the steps after it stay)
    steps = "E21 means a blocked impeller.\nBest to switch the pump off first.\nThen remove the debris."
    assert strip_salutations(steps) == steps
    care = "Open the front cover.\nTake care not to touch the impeller.\nRinse it under the tap."
    assert strip_salutations(care) == care
    assert strip_salutations("Replace the filter.\nReplace the seal.\nThanks, that fixed it.").endswith("fixed it.")
    assert strip_salutations("Replace the filter.\nKind regards, Ana Lima") == "Replace the filter."
    assert strip_salutations("Replace the filter.\nThanks!\n-- \nACME support") == "Replace the filter."

def test_image_metadata_is_stripped_and_pixels_kept() -> None:
    data = photo_with_gps((10, 200, 30))
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_EXIF)
    clean, ext = strip_metadata(data)
    assert ext == "jpg" and b"Exif" not in clean and b"PhoneMaker" not in clean
    with Image.open(io.BytesIO(clean)) as image:
        assert not image.getexif() and image.size == (64, 48)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "WEBP")
    assert strip_metadata(buffer.getvalue())[1] == "png"


def internvl_loader(meta_path: Path) -> list[dict[str, Any]]:
    """What internvl_chat's build_datasets and LazySupervisedDataset do with a meta file and its JSONL
    (internvl_chat_finetune.py): each dataset's annotation read line by line, an image path joined to the
    root and opened, every ``<image>`` of the human turns replaced by one image's tokens in order with the
    count asserted equal to the number of images, roles alternating human/gpt. A ``video`` line (used only when
    the line has no ``image``, as in LazySupervisedDataset.__getitem__) goes to video_get_item: the path joined
    to the root and decoded (decord, as its tcs_loader), the one ``<video>\\n`` of the first human turn (or the
    pair's question) replaced by a ``Frame-N: <image>`` line per sampled frame, whose count must then match the
    frames. Raises on any mismatch."""
    import decord
    items = []
    for name, ds in json.loads(meta_path.read_text()).items():
        assert set(ds) >= {"root", "annotation", "data_augment", "repeat_time", "length"}, name
        raw = Path(ds["annotation"]).read_text(encoding="utf-8").splitlines()
        assert ds["length"] == len(raw) and ds["repeat_time"] == 1
        for line in raw:
            item = json.loads(line)
            images = item.get("image") or []
            paths = images if isinstance(images, list) else [images]
            for path in paths:
                with Image.open(os.path.join(ds["root"], path)) as image:
                    image.convert("RGB")
            video = item.get("video") if not paths else None
            assert not (paths and item.get("video")), "internvl_chat would ignore the video beside images"
            if video:  # video_get_item: 8 frames sampled over the decoded video
                reader = decord.VideoReader(os.path.join(ds["root"], video), num_threads=1)
                frames = reader.get_batch([round(i * (len(reader) - 1) / 7) for i in range(8)]).asnumpy()
                paths = [f"{video}#{i}" for i in range(len(frames))]
            if "conversations" in item:
                turns = [dict(t) for t in item["conversations"]]  # replaced in a copy: items are returned as written
                assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
                if video:
                    assert turns[0]["value"].count("<video>") == 1 and "<video>" not in str(turns[1:])
                    turns[0]["value"] = turns[0]["value"].replace("<video>\n", "\n".join(
                        f"Frame-{i + 1}: <image>" for i in range(len(paths))) + "\n")
                placeholders = sum(t["value"].count("<image>") for t in turns if t["from"] == "human")
                assert all("<image>" not in t["value"] for t in turns if t["from"] == "gpt")
            else:  # a preference pair
                assert set(item) - {"image", "video"} == {"question", "chosen", "rejected"}
                question = item["question"]
                if video:
                    assert question.count("<video>") == 1 and "<video>" not in item["chosen"] + item["rejected"]
                    question = question.replace("<video>\n", "\n".join(
                        f"Frame{i + 1}: <image>" for i in range(len(paths))))
                placeholders = question.count("<image>")
            assert placeholders == len(paths), f"{placeholders} <image> for {len(paths)} image(s) or frame(s)"
            items.append(item)
    return items


async def rated_store(tmp_path: Path) -> tuple[SQLiteStore, Any, dict[str, Any]]:
    """A store with the cases an export must tell apart; the settings and personas it is exported with."""
    personas_dir = tmp_path / "personas"
    personas_dir.mkdir()
    (personas_dir / "support.yaml").write_text(
        "name: support\ntitle: Support\nsystem: You help.\ntraining_export: allowed\n", encoding="utf-8")
    settings = make_settings(tmp_path, conversation={"personas_dir": str(personas_dir)},
                             adapters={"telegram": {"training_export": "allowed"}})
    store = SQLiteStore(tmp_path / "data" / "internvl-bot.sqlite3")
    await store.open()
    ids: dict[str, Any] = {}

    async def turn(key: ConversationKey, text: str, answer: str, *, user: str = "u1", name: str = "Ana Lima",
                   photos: tuple[bytes, ...] = (), persona: str = "support") -> tuple[int, int]:
        q = await store.add_message(key, NewMessage(
            role="user", text=text, sender_id=user, sender_name=name,
            attachments=[Attachment(f"p{i}", f"p{i}.jpg", "image/jpeg") for i in range(len(photos))]))
        for i, data in enumerate(photos):
            await store.save_attachment(q, i, data, "image/jpeg")
        a = await store.finish(q, "answered", reply=answer)
        assert a is not None
        await store.record_answer(a, AnswerMeta(persona, "internvl3-1b"))
        return q, a

    tg, other = ConversationKey("telegram", "1"), ConversationKey("slack", "C1")
    _, ids["good"] = await turn(tg, "Ana Lima here, what is this part? mail me at ana@example.com", "A pump valve.",
                                photos=(photo_with_gps((200, 0, 0)), photo_with_gps((0, 0, 200))))
    await store.add_feedback(NewFeedback(ids["good"], "up", event_id="e1"))
    _, ids["sources"] = await turn(tg, "fuse rating?", "Use a 10 A fuse [1].\n\n**Sources**\n\n1. Manual p.3")
    await store.add_feedback(NewFeedback(ids["sources"], "up", event_id="e2"))
    _, down = await turn(tg, "bad one", "wrong")
    await store.add_feedback(NewFeedback(down, "down", event_id="e3"))
    _, _unrated = await turn(tg, "no rating", "fine")
    _, ids["edited"] = await turn(tg, "warranty?", "draft: two years maybe")
    await store.add_feedback(NewFeedback(ids["edited"], "edited", value="Two years from purchase."))
    _, elsewhere = await turn(other, "slack question", "slack answer")
    await store.add_feedback(NewFeedback(elsewhere, "up", event_id="e4"))
    _, private = await turn(tg, "other persona", "answer", persona="diagnosis")
    await store.add_feedback(NewFeedback(private, "up", event_id="e5"))
    gone = ConversationKey("telegram", "2")
    _, _forgot = await turn(gone, "forget me", "ok", user="u9")
    await store.forget(gone)
    _, later = await turn(ConversationKey("telegram", "3"), "I am back", "welcome", user="u9")
    await store.add_feedback(NewFeedback(later, "up", event_id="e6"))
    # a regeneration chain: the first answer lost, the second lost, the third kept and rated up
    _q1, lost1 = await turn(tg, "what does E4 mean?", "no idea")
    q2, lost2 = await turn(tg, "what does E4 mean?", "maybe water")
    q3, ids["kept"] = await turn(tg, "what does E4 mean?", "E4: the water pressure is low.")
    await store.add_feedback(NewFeedback(lost1, "regenerated", value=str(q2)))
    await store.add_feedback(NewFeedback(lost2, "regenerated", value=str(q3)))
    await store.add_feedback(NewFeedback(ids["kept"], "up", event_id="e7"))
    ids.update(lost1=lost1, lost2=lost2)
    return store, settings, ids


async def test_sft_export_reads_as_internvl_reads_it_and_keeps_only_what_may_leave(tmp_path: Path) -> None:
    store, settings, ids = await rated_store(tmp_path)
    try:
        out = tmp_path / "sft"
        report = await export_sft(store, settings, load_personas(settings.conversation.personas_dir),
                                  ExportOptions(out, name="bot"))
    finally:
        await store.close()
    items = internvl_loader(out / "bot.json")
    assert report.samples == len(items) == 4 and report.images == 2
    by_id = {item["id"]: item for item in items}
    assert set(by_id) == {f"telegram-{ids[k]}" for k in ("good", "sources", "edited", "kept")}
    good = by_id[f"telegram-{ids['good']}"]
    assert len(good["image"]) == 2 and good["conversations"] == [
        {"from": "human", "value": "<image>\n<image>\n[name] here, what is this part? mail me at [email]"},
        {"from": "gpt", "value": "A pump valve."}]
    assert by_id[f"telegram-{ids['sources']}"]["conversations"][1]["value"] == "Use a 10 A fuse [1]."
    assert by_id[f"telegram-{ids['edited']}"]["conversations"][1]["value"] == "Two years from purchase."
    for path in good["image"]:  # stable names, no metadata
        data = (out / "images" / path).read_bytes()
        assert Path(path).stem == sha256_of(photo_with_gps((200, 0, 0)) if path == good["image"][0]
                                            else photo_with_gps((0, 0, 200)))
        assert b"Exif" not in data
    assert report.skipped == {"adapter does not allow training export": 1, "persona does not allow training export": 1,
                              "user forgot their conversation": 1}


async def test_mpo_export_pairs_what_was_regenerated_or_corrected_with_what_was_kept(tmp_path: Path) -> None:
    store, settings, _ids = await rated_store(tmp_path)
    try:
        out = tmp_path / "mpo"
        report = await export_mpo(store, settings, load_personas(settings.conversation.personas_dir),
                                  ExportOptions(out))
    finally:
        await store.close()
    items = internvl_loader(out / "internvl_bot.json")
    assert report.samples == 3
    assert sorted((i["question"], i["chosen"], i["rejected"]) for i in items) == [
        ("warranty?", "Two years from purchase.", "draft: two years maybe"),
        ("what does E4 mean?", "E4: the water pressure is low.", "maybe water"),
        ("what does E4 mean?", "E4: the water pressure is low.", "no idea")]


def test_the_export_command_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def prepare() -> None:
        store, _, _ = await rated_store(tmp_path)
        await store.close()

    asyncio.run(prepare())
    (tmp_path / "config.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"conversation:\n  personas_dir: {tmp_path / 'personas'}\nadapters:\n  telegram:\n    training_export: allowed\n",
        encoding="utf-8")
    assert cli.main(["--config", str(tmp_path / "config.yaml"), "export", "sft", "--out", str(tmp_path / "x"),
                     "--persona", "support", "--since", "1970-01-02"]) == 0
    assert "exported 4 sft sample(s), 2 image(s) and 0 video(s)" in capsys.readouterr().out
    assert len(internvl_loader(tmp_path / "x" / "internvl_bot.json")) == 4


def located_clip(folder: Path) -> bytes:
    """A 2 s phone-like MP4 whose container says where and when it was shot and on what."""
    return ffmpeg(folder / "located.mp4", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", "2",
                  "-c:v", "libx264", "-pix_fmt", "yuv420p", "-metadata", "location=+48.8584+002.2945/",
                  "-metadata", "creation_time=2024-05-01T10:00:00Z", "-metadata", "make=PhoneMaker",
                  "-metadata:s:v:0", "creation_time=2024-05-01T10:00:00Z").read_bytes()


def probed_tags(path: Path) -> str:
    """Every container and stream tag ffprobe finds in ``path``, one ``key=value`` a line."""
    return subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format_tags:stream_tags", "-of",
                           "default=noprint_wrappers=1", str(path)], check=True, capture_output=True,
                          text=True).stdout


async def video_turns(store: SQLiteStore, clip: bytes) -> dict[str, int]:
    """Video questions beside rated_store's: one rated up, one asked again after a regeneration, one with a photo
    too, one whose bytes are no video; the answers' ids."""
    tg = ConversationKey("telegram", "1")
    ids = {}

    async def turn(name: str, text: str, answer: str, media: list[tuple[bytes, str]]) -> tuple[int, int]:
        q = await store.add_message(tg, NewMessage(
            role="user", text=text, sender_id="u1", sender_name="Ana Lima",
            attachments=[Attachment(f"m{i}", f"m{i}", mime) for i, (_, mime) in enumerate(media)]))
        for i, (data, mime) in enumerate(media):
            await store.save_attachment(q, i, data, mime)
        a = await store.finish(q, "answered", reply=answer)
        assert a is not None
        await store.record_answer(a, AnswerMeta("support", "internvl3-1b"))
        ids[name] = a
        return q, a

    await turn("video", "Ana here: why does it blink?", "The test pattern scrolls.", [(clip, "video/mp4")])
    await store.add_feedback(NewFeedback(ids["video"], "up", event_id="v1"))
    await turn("mixed", "and this?", "both", [(clip, "video/mp4"), (photo_with_gps((0, 200, 0)), "image/jpeg")])
    await store.add_feedback(NewFeedback(ids["mixed"], "up", event_id="v2"))
    await turn("broken", "broken clip", "hmm", [(b"\x00\x00\x00\x18ftypmp42 not really a video", "video/mp4")])
    await store.add_feedback(NewFeedback(ids["broken"], "up", event_id="v3"))
    _, lost = await turn("lost", "what moves?", "nothing moves", [(clip, "video/mp4")])
    q2, _ = await turn("kept", "what moves?", "The colour bars scroll left.", [(clip, "video/mp4")])
    await store.add_feedback(NewFeedback(lost, "regenerated", value=str(q2)))
    await store.add_feedback(NewFeedback(ids["kept"], "up", event_id="v4"))
    return ids


@needs_ffmpeg
def test_a_video_question_is_exported_as_internvl_reads_videos_without_its_metadata(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = located_clip(tmp_path)
    assert "location=+48.8584+002.2945/" in probed_tags(tmp_path / "located.mp4")  # the tag is there to strip

    async def prepare() -> dict[str, int]:
        store, _, _ = await rated_store(tmp_path)
        try:
            return await video_turns(store, clip)
        finally:
            await store.close()

    ids = asyncio.run(prepare())
    (tmp_path / "config.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"conversation:\n  personas_dir: {tmp_path / 'personas'}\nadapters:\n  telegram:\n    training_export: allowed\n",
        encoding="utf-8")
    assert cli.main(["--config", str(tmp_path / "config.yaml"), "export", "sft", "--out", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr()
    # the 4 earlier samples, the video rated up and the kept answer to the regenerated video question
    assert "exported 6 sft sample(s), 2 image(s) and 1 video(s)" in printed.out
    assert "left out 1: a video beside other images or videos" in printed.err
    assert "left out 1: video not exported: not readable" in printed.err
    by_id = {item["id"]: item for item in internvl_loader(tmp_path / "x" / "internvl_bot.json")}
    video = by_id[f"telegram-{ids['video']}"]
    assert video["video"] == f"{sha256_of(clip)[:2]}/{sha256_of(clip)}.mp4"  # one copy, named by content
    assert by_id[f"telegram-{ids['kept']}"]["video"] == video["video"]
    assert video["conversations"] == [{"from": "human", "value": "<video>\n[name] here: why does it blink?"},
                                      {"from": "gpt", "value": "The test pattern scrolls."}]
    copy = tmp_path / "x" / "images" / video["video"]
    tags = probed_tags(copy)
    assert "48.8584" not in tags and "2024-05-01" not in tags and "PhoneMaker" not in tags, tags
    assert b"PhoneMaker" not in copy.read_bytes() and b"48.8584" not in copy.read_bytes()


@needs_ffmpeg
async def test_mpo_pairs_a_regenerated_answer_to_a_video_question(tmp_path: Path) -> None:
    store, settings, _ = await rated_store(tmp_path)
    try:
        await video_turns(store, located_clip(tmp_path))
        out = tmp_path / "mpo"
        report = await export_mpo(store, settings, load_personas(settings.conversation.personas_dir),
                                  ExportOptions(out))
    finally:
        await store.close()
    items = internvl_loader(out / "internvl_bot.json")
    assert report.samples == 4 and report.videos == 1
    [pair] = [i for i in items if "video" in i]
    assert pair == {"video": pair["video"], "question": "<video>\nwhat moves?",
                    "chosen": "The colour bars scroll left.", "rejected": "nothing moves"}
