"""Feedback on answers through the platforms' fakes (a press recorded once, a redelivered press not twice, the
comment a 👎 asks for), the implicit signals, and the ``internvl_bot_feedback_total`` counter."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.engines import EchoEngine
from bot.l10n.i18n import text as t
from tests.conftest import make_settings
from tests.live_server import exchange, live_server, open_session
from tests.test_telegram import ANA, DM, Harness, message, telegram
from tests.test_web import metric


def counted(h: Harness, kind: str, platform: str) -> float:
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



