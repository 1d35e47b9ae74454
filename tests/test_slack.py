"""The Slack adapter, driving the real slack-bolt AsyncApp (Socket Mode and the Events API over HTTP) against
the protocol-faithful Slack of tests/fakes/slack_api.py. Assertions are on what users see in the thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.server import Service, build_app
from adapters.slack.adapter import SlackAdapter
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.l10n.i18n import text as t
from bot.runtime import Runtime
from bot.seams import MediaFetcher, Notifier
from bot.types import Attachment, ConversationKey
from tests.conftest import ROOT, image_bytes, make_settings
from tests.contracts import (
    Desk,
    FetcherContract,
    FileSource,
    HarnessChat,
    NotifierContract,
    PlatformContract,
    Screen,
    SinkContract,
)
from tests.fakes.serving import serve_asgi
from tests.fakes.slack_api import FakeSlack, SlackMessage

CHANNEL = "C0GENERAL"
USER = "U0USER1"



@dataclass
class Harness:
    slack: FakeSlack
    runtime: Runtime
    adapter: SlackAdapter
    url: str = ""

    def thread(self, channel: str, thread_ts: str) -> list[SlackMessage]:
        return [m for m in self.slack.messages(channel, thread_ts) if not m.deleted and m.ts != thread_ts]

    def texts(self, channel: str, thread_ts: str) -> list[str]:
        return [m.text for m in self.thread(channel, thread_ts)]

    async def answered(self, channel: str, thread_ts: str, expected: str, timeout: float = 15,  # noqa: ASYNC109
                       *, ending: bool = False) -> SlackMessage:
        """Wait for a finished message in the thread that shows ``expected`` (or ends with it)."""
        def shows(m: SlackMessage) -> bool:
            return not m.streaming and (m.text.strip().endswith(expected) if ending else m.text.strip() == expected)

        await self.slack.wait_for(lambda: any(shows(m) for m in self.thread(channel, thread_ts)), timeout)
        return next(m for m in self.thread(channel, thread_ts) if shows(m))

    async def idle(self) -> None:
        assert self.runtime.manager is not None
        await asyncio.wait_for(self.runtime.manager.idle(), 15)


@contextlib.asynccontextmanager
async def slack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, mode: str = "socket",
                engine: EchoEngine | None = None, fake: dict[str, Any] | None = None,
                shared: FakeSlack | None = None, store: dict[str, Any] | None = None,
                conversation: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
                **conf: Any) -> AsyncIterator[Harness]:
    async with contextlib.AsyncExitStack() as stack:
        fake_slack = shared or await stack.enter_async_context(FakeSlack(**(fake or {})))
        fake_slack.add_user(USER, name="ana", locale="en-US")
        monkeypatch.setenv("SLACK_BOT_TOKEN", fake_slack.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", fake_slack.app_token)
        monkeypatch.setenv("SLACK_SIGNING_SECRET", fake_slack.signing_secret)
        section = {"enabled": True, "mode": mode, "api_url": fake_slack.api_url, "update_interval": 0.5, **conf}
        settings = make_settings(tmp_path, adapters={"slack": section}, conversation=conversation or {},
                                 **({"store": store} if store else {}), **({"server": server} if server else {}))
        async with Runtime(settings, engine=engine or EchoEngine(delay=0.005)) as runtime:
            assert runtime.manager is not None
            adapter = SlackAdapter(runtime.manager, runtime.settings, settings.adapters.slack)  # type: ignore[attr-defined]
            harness = Harness(fake_slack, runtime, adapter)
            if mode == "http":
                service = Service(runtime.settings, runtime, [adapter])
                service.ready = True
                base = await stack.enter_async_context(serve_asgi(build_app(service)))
                harness.url = f"{base}/slack/events"
            connected = fake_slack.socket_connections
            await runtime.manager.start()
            await adapter.start()
            if mode == "socket":
                await fake_slack.wait_for(lambda: fake_slack.socket_connections > connected)
            try:
                yield harness
            finally:
                adapter.stop_intake()
                await runtime.manager.stop(2)
                await adapter.close()


def mention(h: Harness, text: str, *, thread_ts: str | None = None, files: Any = None) -> dict[str, Any]:
    return h.slack.event_callback(h.slack.app_mention(CHANNEL, USER, f"<@{h.slack.bot_user_id}> {text}",
                                                      thread_ts=thread_ts, files=files))


# -- socket mode -------------------------------------------------------------------------------


async def test_replicas_each_open_a_socket_and_answer_each_thread_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Any) -> None:
    """Two replicas on one PostgreSQL database, each with its own Socket Mode connection: Slack spreads the
    events over both, and an event sent on both connections is still answered once, in its thread."""
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", postgres.database())
    async with FakeSlack() as fake, \
            slack(tmp_path / "a", monkeypatch, shared=fake, store={"backend": "postgres"}) as a, \
            slack(tmp_path / "b", monkeypatch, shared=fake, store={"backend": "postgres"}):
        assert fake.socket_connections == 2
        asked = []
        for n in range(8):
            payload = mention(a, f"question {n}")
            await fake.send_socket_event(payload, to="all" if n == 0 else "one")
            asked.append((payload["event"]["channel"], payload["event"]["ts"], f"echo: question {n}"))
        for channel, ts, expected in asked:
            await a.answered(channel, ts, expected)
        await asyncio.sleep(0.5)  # time for a second answer, were one coming
        assert [a.texts(channel, ts) for channel, ts, _ in asked] == [[expected] for _, _, expected in asked]


async def test_a_mention_with_an_image_streams_natively_into_its_thread(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        payload = h.slack.load_payload("mention_with_image", files={"F0IMAGE01": image_bytes(1280, 800, fmt="PNG")})
        envelope = await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        answer = await h.answered(payload["event"]["channel"], ts,
                                  "[image 1: 1280x800, 7 tiles]\necho: what is wrong here?")
        assert h.slack.acked(envelope)
        assert answer.thread_ts == ts and answer.stream_appends >= 1  # chat.startStream + appendStream
        assert [c.method for c in h.slack.calls if c.method.startswith("chat.")][:1] == ["chat.startStream"]
        assert h.slack.calls_to("chat.startStream")[0].params["recipient_user_id"] == USER
        assert any("looking at your files" in s["status"] for s in h.slack.statuses)
        assert h.slack.downloads  # fetched with the bot token


async def test_a_dm_with_a_pdf_is_answered_in_the_dm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_documents import invoice_pdf

    async with slack(tmp_path, monkeypatch) as h:
        payload = h.slack.load_payload("dm_with_pdf", files={"F0PDF0001": invoice_pdf(1)})
        await h.slack.send_socket_event(payload)
        event = payload["event"]
        await h.slack.wait_for(lambda: any("[page-1:" in m.text and not m.streaming and m.thread_ts is None
                                           for m in h.slack.messages(event["channel"])), 20)


async def test_thread_follow_ups_and_what_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        first = mention(h, "remember the blue valve")
        await h.slack.send_socket_event(first)
        ts = first["event"]["ts"]
        await h.answered(CHANNEL, ts, "echo: remember the blue valve")
        follow = h.slack.event_callback(h.slack.message_event(CHANNEL, USER, "and then?", thread_ts=ts))
        await h.slack.send_socket_event(follow)
        await h.answered(CHANNEL, ts, "echo: and then?")
        ignored = [
            h.slack.event_callback(h.slack.message_event(CHANNEL, USER, "chatting among humans")),
            h.slack.event_callback(h.slack.message_event(CHANNEL, USER, "in someone's thread",
                                                         thread_ts=h.slack.new_ts())),
            h.slack.load_payload("bot_message"), h.slack.load_payload("message_changed"),
            h.slack.load_payload("message_deleted"),
        ]
        envelopes = [await h.slack.send_socket_event(p) for p in ignored]
        await h.slack.wait_for(lambda: all(h.slack.acked(e) for e in envelopes))  # acknowledged, so not redelivered
        await h.idle()
        store = h.runtime.store
        assert store is not None
        assert len([r for r in await store.transcript(ConversationKey("slack", CHANNEL, ts)) if r.role == "user"]) == 2
        assert await store.last_message_id() == 4


COLLEAGUE = "U0BEA"


async def say(h: Harness, user: str, text: str, thread_ts: str | None, *, mentioning: bool = False) -> dict[str, Any]:
    """``user`` writes in a channel thread (``thread_ts``; None: at the top), mentioning the bot or not; returns once Slack has the ack, so the
    adapter has decided whether the message is for the bot (it stores before it acknowledges)."""
    event = (h.slack.app_mention(CHANNEL, user, f"<@{h.slack.bot_user_id}> {text}", thread_ts=thread_ts)
             if mentioning else h.slack.message_event(CHANNEL, user, text, thread_ts=thread_ts))
    envelope = await h.slack.send_socket_event(h.slack.event_callback(event))
    await h.slack.wait_for(lambda: h.slack.acked(envelope))
    return event


def answers(h: Harness, thread_ts: str) -> list[str]:
    return [m.text for m in h.thread(CHANNEL, thread_ts) if m.bot_id and not m.streaming]


async def questions(h: Harness, thread_ts: str) -> list[tuple[str, str]]:
    """(sender, text) of the questions stored for the thread."""
    assert h.runtime.store is not None
    return [(m.sender_id, m.text) for m in await h.runtime.store.transcript(ConversationKey("slack", CHANNEL, thread_ts))
            if m.role == "user"]


@pytest.mark.parametrize("root_mentions", [True, False])
async def test_a_colleagues_reply_in_the_thread_is_theirs_the_askers_follow_up_is_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_mentions: bool) -> None:
    """Default ``thread_followups: asker``: two colleagues talking in a thread that began with a question to
    the bot do not trigger it; the one who asked continues without a mention, the other mentions it. Also
    when the bot was first asked in a reply (the thread's root is a person's message, never stored)."""
    async with slack(tmp_path, monkeypatch) as h:
        h.slack.add_user(COLLEAGUE, name="bea", locale="en-US")
        if root_mentions:
            ts = (await say(h, USER, "why does the pump hum?", None, mentioning=True))["ts"]
        else:
            ts = (await say(h, COLLEAGUE, "the pump hums again", None))["ts"]
            await say(h, USER, "why does the pump hum?", ts, mentioning=True)
        await h.answered(CHANNEL, ts, "echo: why does the pump hum?")
        await say(h, COLLEAGUE, "I think it's the valve, I'll check", ts)
        await say(h, USER, "ok thanks, tell me when you know", ts)
        await say(h, USER, "and how loud is too loud?", ts)
        await h.answered(CHANNEL, ts, "echo: and how loud is too loud?")
        await say(h, COLLEAGUE, "what does a worn valve sound like?", ts, mentioning=True)
        await h.answered(CHANNEL, ts, "echo: what does a worn valve sound like?")
        await say(h, COLLEAGUE, "thanks, that helps", ts)  # a mention once does not make her the asker
        await h.idle()
        assert answers(h, ts) == ["echo: why does the pump hum?", "echo: ok thanks, tell me when you know",
                                  "echo: and how loud is too loud?", "echo: what does a worn valve sound like?"]
        assert await questions(h, ts) == [(USER, "why does the pump hum?"),
                                          (USER, "ok thanks, tell me when you know"),
                                          (USER, "and how loud is too loud?"),
                                          (COLLEAGUE, "what does a worn valve sound like?")]


async def test_the_asker_is_remembered_by_the_store_across_a_restart(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (a restart, or another replica on the same store) knows who asked in the thread."""
    async with FakeSlack() as fake:
        async with slack(tmp_path, monkeypatch, shared=fake) as h:
            fake.add_user(COLLEAGUE, name="bea", locale="en-US")
            ts = (await say(h, USER, "why does the pump hum?", None, mentioning=True))["ts"]
            await h.answered(CHANNEL, ts, "echo: why does the pump hum?")
        async with slack(tmp_path, monkeypatch, shared=fake) as h:
            await say(h, COLLEAGUE, "I think it's the valve", ts)
            await say(h, USER, "and how loud is too loud?", ts)
            await h.answered(CHANNEL, ts, "echo: and how loud is too loud?")
            await h.idle()
            assert answers(h, ts) == ["echo: why does the pump hum?", "echo: and how loud is too loud?"]


@pytest.mark.parametrize(("followups", "answered"), [
    ("everyone", ["echo: why does the pump hum?", "echo: I think it's the valve", "echo: and how loud?",
                  "echo: is it the valve?"]),
    ("mention", ["echo: why does the pump hum?", "echo: is it the valve?"]),
])
async def test_thread_followups_everyone_or_only_mentions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          followups: str, answered: list[str]) -> None:
    """``everyone``: anyone's reply in the thread is for the bot; ``mention``: none is without a mention, the
    asker's neither. DMs are not channel threads: always answered."""
    async with slack(tmp_path, monkeypatch, thread_followups=followups) as h:
        h.slack.add_user(COLLEAGUE, name="bea", locale="en-US")
        ts = (await say(h, USER, "why does the pump hum?", None, mentioning=True))["ts"]
        await h.answered(CHANNEL, ts, "echo: why does the pump hum?")
        await say(h, COLLEAGUE, "I think it's the valve", ts)
        await say(h, USER, "and how loud?", ts)
        await say(h, USER, "is it the valve?", ts, mentioning=True)
        await h.answered(CHANNEL, ts, "echo: is it the valve?")
        await h.idle()
        assert answers(h, ts) == answered
        assert [text for _, text in await questions(h, ts)] == [a.removeprefix("echo: ") for a in answered]
        dm = h.slack.dm_channel(USER)
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.message_event(dm, USER, "and in a DM?",
                                                                                     channel_type="im")))
        await h.slack.wait_for(lambda: any(m.text == "echo: and in a DM?" for m in h.slack.messages(dm)))


async def test_a_mention_and_its_message_twin_and_a_redelivery_are_answered_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        payload = h.slack.load_payload("mention_with_image", files={"F0IMAGE01": image_bytes(300, 200, fmt="PNG")})
        twin = h.slack.load_payload("channel_mention_as_message", files={"F0IMAGE01": image_bytes(300, 200, fmt="PNG")})
        event = payload["event"]
        await h.slack.send_socket_event(payload)
        await h.slack.send_socket_event(twin)
        await h.slack.send_socket_event(payload, retry_attempt=1, retry_reason="timeout")
        answer = await h.answered(event["channel"], event["ts"], "echo: what is wrong here?", ending=True)
        assert answer.text.startswith("[image 1: 300x200,")
        await h.idle()
        assert len(h.thread(event["channel"], event["ts"])) == 1


async def test_an_unacknowledged_event_is_redelivered_and_answered_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, fake={"socket_ack_timeout": 0.5}) as h:
        h.adapter.stop_intake()  # a process going down: it stores nothing and acknowledges nothing
        payload = mention(h, "are you there?")
        envelope = await h.slack.send_socket_event(payload)
        await h.slack.wait_for(lambda: len(h.slack.deliveries(envelope)) >= 2)  # Slack tried again
        h.adapter.accepting = True  # the next process takes it
        await h.answered(CHANNEL, payload["event"]["ts"], "echo: are you there?")
        await h.slack.wait_for(lambda: h.slack.acked(envelope), 10)
        await h.idle()
        assert len(h.thread(CHANNEL, payload["event"]["ts"])) == 1


async def test_the_assistant_panel_greets_suggests_and_titles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, persona="support") as h:
        h.slack.add_user("U0PT", name="rui", locale="pt-BR")
        dm = h.slack.dm_channel("U0PT")
        thread = h.slack.new_ts()
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.assistant_thread_started(dm, "U0PT", thread)))
        await h.slack.wait_for(lambda: bool(h.slack.suggested_prompts))
        assert h.texts(dm, thread)[0].startswith("Olá! Como posso ajudar")
        assert next(p["message"] for p in h.slack.suggested_prompts[-1]["prompts"]) == "Tenho um problema com meu pedido"
        question = h.slack.event_callback(h.slack.message_event(dm, "U0PT", "Tenho um problema com meu pedido",
                                                                channel_type="im", thread_ts=thread))
        await h.slack.send_socket_event(question)
        await h.answered(dm, thread, "echo: Tenho um problema com meu pedido")
        assert h.slack.titles and h.slack.titles[-1]["title"] == "Tenho um problema com meu pedido"


# -- the Events API over HTTP -------------------------------------------------------------------


async def test_while_restarting_slack_gets_a_503_it_retries_not_an_unhandled_404(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Intake stopped (a deploy): the event is not acknowledged with bolt's "unhandled request" 404 but with a
    503 Slack sends again; and no filter on bolt's own loggers hides its warnings."""
    caplog.set_level(logging.WARNING)
    async with slack(tmp_path, monkeypatch, mode="http") as h:
        h.adapter.stop_intake()
        payload = mention(h, "are you restarting?")
        response = await h.slack.post_event(h.url, payload)
        assert response.status_code == 503 and response.headers.get("retry-after") == "1"
        h.adapter.accepting = True
        assert (await h.slack.post_event(h.url, payload, retry_num=1, retry_reason="http_error")).status_code == 200
        await h.answered(CHANNEL, payload["event"]["ts"], "echo: are you restarting?")
    assert not any("unhandled" in r.getMessage().lower() for r in caplog.records), caplog.text
    assert not any(logging.getLogger(name).filters for name in ("slack_bolt", "slack_bolt.AsyncApp"))


async def test_signed_events_over_http_and_refused_ones_never_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, mode="http") as h:
        refused = mention(h, "unsigned")
        assert (await h.slack.post_event(h.url, refused, sign=False)).status_code == 401
        assert (await h.slack.post_event(h.url, refused, signing_secret="wrong")).status_code == 401
        stale = int(__import__("time").time()) - 600
        assert (await h.slack.post_event(h.url, refused, timestamp=stale)).status_code == 401
        challenge = await h.slack.url_verification(h.url)
        assert challenge.status_code == 200
        payload = mention(h, "hello over http")
        first = await h.slack.post_event(h.url, payload)
        retry = await h.slack.post_event(h.url, payload, retry_num=1, retry_reason="http_timeout")
        assert (first.status_code, retry.status_code) == (200, 200)
        await h.answered(CHANNEL, payload["event"]["ts"], "echo: hello over http")
        await h.idle()
        assert len(h.thread(CHANNEL, payload["event"]["ts"])) == 1
        store = h.runtime.store
        assert store is not None
        assert [m.text for m in await store.pending()] == []
        assert not any(r.text == "unsigned" for r in await store.transcript(ConversationKey("slack", CHANNEL,
                                                                                            refused["event"]["ts"])))


async def test_nothing_network_bound_runs_before_the_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """users.info (rate-limited) and assistant.threads.setTitle are slow: the event is stored and acknowledged
    at once (no redelivery from Slack's 3-second budget), the locale and title follow after the ack."""
    async with slack(tmp_path, monkeypatch, mode="http") as h:
        h.slack.add_user("U0SLOW", name="rui", locale="pt-BR")
        h.slack.fail("users.info", status=429, retry_after=2, times=2)
        h.slack.delay("assistant.threads.setTitle", 4.0)
        dm = h.slack.dm_channel("U0SLOW")
        thread = h.slack.new_ts()
        question = h.slack.event_callback(h.slack.message_event(dm, "U0SLOW", "is the ack quick?",
                                                                channel_type="im", thread_ts=thread))
        delivery = await h.slack.deliver_event(h.url, question, timeout=3.0)
        assert [a.status for a in delivery.attempts] == [200], delivery.attempts
        assert delivery.attempts[0].elapsed < 1.0, delivery.attempts
        await h.answered(dm, thread, "echo: is the ack quick?")
        await h.slack.wait_for(lambda: bool(h.slack.titles), 15)
        assert h.slack.titles[-1]["title"] == "is the ack quick?"
        await h.slack.wait_for(lambda: h.adapter.cached_locale("U0SLOW") == "pt-BR", 15)


async def test_the_operator_inbox_names_slack_users_by_their_real_name(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """users.info, after the ack (cached with the locale): the first message was stored under the bare user id,
    the inbox shows the real name all the same."""
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with slack(tmp_path, monkeypatch, mode="http") as h:
        h.slack.add_user("U0JOANA", name="joana", real_name="Joana Prado", locale="pt-BR")
        payload = h.slack.event_callback(h.slack.app_mention(CHANNEL, "U0JOANA", f"<@{h.slack.bot_user_id}> oi"))
        assert (await h.slack.post_event(h.url, payload)).status_code == 200
        await h.answered(CHANNEL, payload["event"]["ts"], "echo: oi")
        await asyncio.wait_for(asyncio.gather(*list(h.adapter._extras)), 15)  # what followed the ack is done
        base = h.url.removesuffix("/slack/events")
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer op-token"}) as op:
            [conversation] = (await op.get("/api/operator/conversations")).json()["active"]
        assert (conversation["platform"], conversation["name"]) == ("slack", "Joana Prado")
        assert conversation["key"] == f"slack:{CHANNEL}:{payload['event']['ts']}"


async def test_recorded_payloads_through_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, mode="http") as h:
        first = h.slack.load_payload("mention_with_image", files={"F0IMAGE01": image_bytes(320, 240, fmt="PNG")})
        delivery = await h.slack.deliver_event(h.url, first)
        assert delivery.attempts[0].status == 200 and len(delivery.attempts) == 1  # acknowledged within 3 s
        retried = h.slack.load_payload("retried_delivery", files={"F0IMAGE01": image_bytes(320, 240, fmt="PNG")})
        assert (await h.slack.post_event(h.url, retried, retry_num=1, retry_reason="timeout")).status_code == 200
        event = first["event"]
        await h.answered(event["channel"], event["ts"], "echo: what is wrong here?", ending=True)
        follow = h.slack.load_payload("thread_follow_up")
        await h.slack.post_event(h.url, follow)
        await h.slack.wait_for(lambda: len(h.thread(event["channel"], event["ts"])) == 2, 15)
        for name in ("bot_message", "message_changed", "message_deleted"):
            assert (await h.slack.post_event(h.url, h.slack.load_payload(name))).status_code == 200
        await h.idle()
        assert len(h.thread(event["channel"], event["ts"])) == 2


# -- answers ---------------------------------------------------------------------------------


async def test_rate_limits_are_waited_out_nothing_lost_nothing_doubled(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, fake={"rate_limits": True}) as h:
        h.slack.fail("chat.startStream", status=429, retry_after=1, times=2)
        h.slack.fail("chat.appendStream", status=429, retry_after=1)
        payloads = [mention(h, f"question {i}") for i in range(4)]
        for p in payloads:
            await h.slack.send_socket_event(p)
        for i, p in enumerate(payloads):
            await h.answered(CHANNEL, p["event"]["ts"], f"echo: question {i}", timeout=40)
        await h.idle()
        assert all(len(h.thread(CHANNEL, p["event"]["ts"])) == 1 for p in payloads)
        assert h.slack.served_429 >= 3 and h.adapter.limiter.honoured >= 3


async def test_an_expired_stream_ends_with_chat_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = EchoEngine(delay=0.05)
    async with slack(tmp_path, monkeypatch, engine=engine) as h:
        payload = mention(h, " ".join(f"w{i}" for i in range(30)))
        await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        await h.slack.wait_for(lambda: any(m.stream_appends >= 1 for m in h.thread(CHANNEL, ts)))
        h.slack.expire_streams()
        answer = await h.answered(CHANNEL, ts, "echo: " + " ".join(f"w{i}" for i in range(30)), timeout=20)
        assert answer.updates >= 1 and len(h.thread(CHANNEL, ts)) == 1


async def test_without_native_streaming_messages_are_posted_and_updated(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, native_streaming=False) as h:
        payload = mention(h, "**bold** words")
        await h.slack.send_socket_event(payload)
        answer = await h.answered(CHANNEL, payload["event"]["ts"], "echo: *bold* words")  # notifications' text
        # Markdown, rendered by Slack, in a markdown block: the feedback buttons' block follows it
        assert [(b["type"], b.get("text")) for b in answer.blocks or []] == [
            ("markdown", "echo: **bold** words"), ("context_actions", None)]
        assert h.slack.calls_to("chat.startStream") == []


async def test_files_only_from_slack_and_within_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        foreign = h.slack.add_file(image_bytes(100, 100), name="evil.jpg", mimetype="image/jpeg", host="evil.example")
        payload = mention(h, "look", files=[foreign])
        await h.slack.send_socket_event(payload)
        await h.answered(CHANNEL, payload["event"]["ts"], t("file_host_refused", "en", name="evil.jpg"))
        big = h.slack.add_file(b"x" * 10, name="huge.mov", mimetype="video/quicktime", size=900_000_000)
        payload = mention(h, "and this", files=[big])
        await h.slack.send_socket_event(payload)
        await h.slack.wait_for(lambda: any("too large" in m.text for m in h.thread(CHANNEL, payload["event"]["ts"])))
        assert h.slack.downloads == []


async def test_commands_take_the_bang_prefix_and_the_users_language(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        h.slack.add_user("U0DE", name="jonas", locale="de-DE")
        payload = h.slack.event_callback(h.slack.app_mention(CHANNEL, "U0DE", f"<@{h.slack.bot_user_id}> !help"))
        await h.slack.send_socket_event(payload)
        await h.slack.wait_for(lambda: any(m.text.startswith("Schicken Sie mir eine Frage")
                                           for m in h.thread(CHANNEL, payload["event"]["ts"])))
        [help_text] = h.texts(CHANNEL, payload["event"]["ts"])
        assert "!reset" in help_text and "/reset" not in help_text


async def test_export_is_uploaded_into_the_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        first = mention(h, "| item | total |\n|---|---|\n| pump | 12.50 |")
        await h.slack.send_socket_event(first)
        ts = first["event"]["ts"]
        await h.slack.wait_for(lambda: any("pump" in m.text and not m.streaming for m in h.thread(CHANNEL, ts)))
        await h.slack.send_socket_event(h.slack.event_callback(
            h.slack.message_event(CHANNEL, USER, "!export csv", thread_ts=ts)))
        await h.slack.wait_for(lambda: bool(h.slack.uploads))
        upload = h.slack.uploads[-1]
        assert upload["filename"].endswith(".csv") and b"pump,12.50" in upload["bytes"] and upload["thread_ts"] == ts


async def test_handoff_tells_the_support_channel_and_operator_replies_reach_the_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, support_channel="C0SUPPORT", slash_command="/internvl") as h:
        payload = mention(h, "!human")
        await h.slack.send_socket_event(payload)
        ts = payload["event"]["ts"]
        await h.answered(CHANNEL, ts, t("handoff_started", "en").replace("/bot", "!bot"))
        await h.slack.wait_for(lambda: bool(h.slack.messages("C0SUPPORT")))
        notice = h.slack.messages("C0SUPPORT")[0].text
        assert f"/archives/{CHANNEL}/p{ts.replace('.', '')}" in notice
        assert h.runtime.manager is not None
        await h.runtime.manager.operator_reply(ConversationKey("slack", CHANNEL, ts), "Hi, Ana here.", author="Ana")
        await h.answered(CHANNEL, ts, "**Ana:** Hi, Ana here.")
        # the slash command runs the framework's commands too, on the thread it is about: the user's latest
        await h.slack.send_slash_command("/internvl", "bot", CHANNEL, USER)
        await h.slack.wait_for(lambda: any(m.text.startswith("You are talking to the assistant")
                                           for m in h.thread(CHANNEL, ts)))
        store = h.runtime.store
        assert store is not None
        assert (await store.conversation(ConversationKey("slack", CHANNEL, ts))).mode == "bot"


async def test_a_slash_command_names_its_thread_by_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, slash_command="/internvl", support_channel="C0SUPPORT") as h:
        first, second = mention(h, "first question"), mention(h, "second question")
        for payload in (first, second):
            await h.slack.send_socket_event(payload)
            await h.answered(CHANNEL, payload["event"]["ts"], f"echo: {payload['event']['text'].split('> ')[1]}")
        ts = first["event"]["ts"]
        link = f"https://fake.slack.com/archives/{CHANNEL}/p{ts.replace('.', '')}"
        await h.slack.send_slash_command("/internvl", f"human {link}", CHANNEL, USER)
        await h.slack.wait_for(lambda: len(h.thread(CHANNEL, ts)) == 2)
        assert h.texts(CHANNEL, ts)[-1].startswith(t("handoff_started", "en")[:20])
        assert len(h.thread(CHANNEL, second["event"]["ts"])) == 1


async def test_top_level_direct_messages_are_one_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a Telegram private chat: each DM remembers the last ones, answered at the top level; /reset
    (here !reset) starts over."""
    engine = EchoEngine(record=True, delay=0.005)
    async with slack(tmp_path, monkeypatch, engine=engine, native_streaming=False) as h:
        dm = h.slack.dm_channel(USER)
        for text in ("my pump is a P-200", "what model is my pump?"):
            await h.slack.send_socket_event(h.slack.event_callback(h.slack.message_event(dm, USER, text,
                                                                                         channel_type="im")))
            await h.slack.wait_for(lambda text=text: any(m.text == f"echo: {text}" and m.thread_ts is None
                                                         for m in h.slack.messages(dm)))
        assert [m.text for m in engine.calls[-1] if m.role == "user"] == ["my pump is a P-200",
                                                                            "what model is my pump?"]


#: What a user typed (Slack already sends a literal "&" as "&amp;") and what may ping a whole channel.
PINGS = "tell <!channel> and <@U0OTHER> and <!subteam^S1|team> &amp; x > y"
ESCAPED = "tell &lt;!channel&gt; and &lt;@U0OTHER&gt; and &lt;!subteam^S1|team&gt; &amp; x &gt; y"


@pytest.mark.parametrize("native", [True, False])
async def test_mentions_in_user_and_model_text_reach_slack_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   native: bool) -> None:
    """``<!channel>``, ``<@U…>`` and friends written by a user or the model are shown, not parsed: Slack's
    control characters ``&``, ``<``, ``>`` in text the bot sends are escaped (entities already escaped are
    not escaped twice), streamed or posted; a quote marker at a line's start stays Markdown."""
    async with slack(tmp_path, monkeypatch, native_streaming=native) as h:
        payload = mention(h, f"{PINGS}\n> quoted")
        await h.slack.send_socket_event(payload)
        answer = await h.answered(CHANNEL, payload["event"]["ts"], f"echo: {ESCAPED}\n> quoted")
        assert all("<!" not in text and "<@" not in text for text in answer.history)


async def test_the_support_channel_notice_escapes_what_the_user_wrote(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, support_channel="C0SUPPORT") as h:
        payload = mention(h, f"I want to talk to a person, {PINGS}")
        await h.slack.send_socket_event(payload)
        await h.slack.wait_for(lambda: bool(h.slack.messages("C0SUPPORT")))
        notice = h.slack.messages("C0SUPPORT")[0].text
        assert ESCAPED in notice and "<!" not in notice and "<@" not in notice
        assert f"/archives/{CHANNEL}/p{payload['event']['ts'].replace('.', '')}" in notice


def test_start_up_fails_closed_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    socket_mode = make_settings(tmp_path, adapters={"slack": {"enabled": True}})
    with pytest.raises(Exception, match="SLACK_BOT_TOKEN"):
        socket_mode.check_secrets()
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    with pytest.raises(Exception, match="SLACK_APP_TOKEN"):
        socket_mode.check_secrets()
    http = make_settings(tmp_path, adapters={"slack": {"enabled": True, "mode": "http"}})
    with pytest.raises(Exception, match="SLACK_SIGNING_SECRET"):
        http.check_secrets()
    with pytest.raises(StartupError, match="SLACK_SIGNING_SECRET"):
        SlackAdapter(object(), http, http.adapters.slack)  # type: ignore[arg-type, attr-defined]


# -- kill -9 -------------------------------------------------------------------------------------

SERVE = """
import sys
from adapters.cli import main
sys.exit(main(["serve", "--port", "0"]))
"""


@pytest.mark.slow
async def test_kill_9_mid_answer_then_restart_answers_once_in_the_same_message(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    async with FakeSlack(socket_ack_timeout=2.0) as fake:
        fake.add_user(USER, name="ana", locale="en-US")
        config.write_text(
            f"data_dir: {tmp_path / 'data'}\nengine:\n  kind: echo\n  echo:\n    delay_ms: 150\n"
            "adapters:\n  web:\n    enabled: false\n  slack:\n    enabled: true\n"
            f"    api_url: {fake.api_url}\n", encoding="utf-8")
        env = {**os.environ, "INTERNVL_BOT_CONFIG": str(config), "SLACK_BOT_TOKEN": fake.bot_token,
               "SLACK_APP_TOKEN": fake.app_token, "PYTHONPATH": str(ROOT)}

        def serve() -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-c", SERVE], cwd=tmp_path, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        first = serve()
        try:
            await fake.wait_for(lambda: fake.socket_connections >= 1, 60)
            words = " ".join(f"w{i}" for i in range(40))
            payload = fake.event_callback(fake.app_mention(CHANNEL, USER, f"<@{fake.bot_user_id}> {words}"))
            await fake.send_socket_event(payload)
            ts = payload["event"]["ts"]
            await fake.wait_for(lambda: any(m.stream_appends >= 2 for m in fake.messages(CHANNEL, ts)), 60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = serve()
            try:
                await fake.wait_for(lambda: any(m.text.strip() == f"echo: {words}" and not m.streaming
                                                for m in fake.messages(CHANNEL, ts)), 90)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.to_thread(second.wait, 30)
            answers = [m for m in fake.messages(CHANNEL, ts) if m.ts != ts and not m.deleted]
            assert [m.text.strip() for m in answers] == [f"echo: {words}"]  # completed in place, not beside
            rows = sqlite3.connect(tmp_path / "data" / "internvl-bot.sqlite3").execute(
                "SELECT role, state FROM messages ORDER BY id").fetchall()
            assert rows == [("user", "answered"), ("assistant", "answered")]
        finally:
            if first.poll() is None:
                first.kill()


async def test_every_web_api_call_shares_one_http_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch) as h:
        session = h.adapter.client.session
        assert session is not None and not session.closed
        assert session.timeout.total == 10  # slack-sdk's own timeout does not apply to a session given to it
        payload = mention(h, "one session please")
        await h.slack.send_socket_event(payload)
        await h.answered(CHANNEL, payload["event"]["ts"], "echo: one session please")
        assert h.adapter.client.session is session
    assert session.closed


async def test_the_assistant_panel_greets_only_whom_the_policy_serves(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async with slack(tmp_path, monkeypatch, deny_users=["U0NO"]) as h:
        for user in ("U0NO", "U0YES"):
            h.slack.add_user(user, name=user.lower())
        denied, served = h.slack.new_ts(), h.slack.new_ts()
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.assistant_thread_started(
            h.slack.dm_channel("U0NO"), "U0NO", denied)))
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.assistant_thread_started(
            h.slack.dm_channel("U0YES"), "U0YES", served)))
        await h.slack.wait_for(lambda: bool(h.texts(h.slack.dm_channel("U0YES"), served)))
        assert h.texts(h.slack.dm_channel("U0NO"), denied) == []


# -- the platform contract --------------------------------------------------------------------------


class SlackChat(HarnessChat):
    """Ana's direct messages with the app (one conversation, like a Telegram private chat), over Socket Mode."""

    #: every Web API method the bot calls for an answer
    METHODS = ("chat.postMessage", "chat.update", "chat.delete", "chat.startStream", "chat.appendStream",
               "chat.stopStream", "assistant.threads.setStatus", "conversations.replies", "users.info")

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeSlack) -> None:
        super().__init__(EchoEngine(delay=0.005))
        self.tmp_path, self.monkeypatch, self.fake = tmp_path, monkeypatch, fake
        self.dm = fake.dm_channel(USER)

    def open_harness(self) -> contextlib.AbstractAsyncContextManager[Harness]:
        return slack(self.tmp_path, self.monkeypatch, engine=self.engine, shared=self.fake,
                     conversation={"max_pending_per_conversation": 1})

    def command(self, name: str) -> str:
        return f"!{name}"  # Slack's clients keep "/…" for slash commands

    async def say(self, text: str) -> dict[str, Any]:
        payload = self.fake.event_callback(self.fake.message_event(self.dm, USER, text, channel_type="im"))
        await self.fake.send_socket_event(payload)
        return payload

    async def redeliver(self, delivery: dict[str, Any]) -> None:
        await self.fake.send_socket_event(delivery, retry_attempt=1, retry_reason="timeout")

    def seen(self) -> list[str]:
        return [m.text.strip() for m in self.fake.messages(self.dm) if not m.deleted and not m.streaming]

    def outage(self, down: bool) -> None:
        if down:
            for method in self.METHODS:
                self.fake.fail(method, status=503, times=10**6)
        else:
            self.fake.heal()



class TestSlackPlatform(PlatformContract):
    @pytest.fixture
    async def chat(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackChat]:
        async with FakeSlack(socket_ack_timeout=0.5) as fake:
            fake.add_user(USER, name="ana", locale="en-US")
            async with HarnessChat.running(SlackChat(tmp_path, monkeypatch, fake)) as chat:
                yield chat  # type: ignore[misc]


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    async with slack(tmp_path, monkeypatch, support_channel="C0SUPPORT") as h:
        yield h


class TestSlackSink(SinkContract):
    """Ana's DM, with native streaming (chat.startStream / appendStream / stopStream)."""

    @pytest.fixture
    def screen(self, running: Harness) -> Screen:
        dm = running.slack.dm_channel(USER)

        async def visible() -> list[str]:
            await running.idle()
            return [m.text.strip() for m in running.slack.messages(dm) if not m.deleted and not m.streaming]

        async def files() -> list[str]:
            return [u["filename"] for u in running.slack.uploads if u.get("channel") in (dm, None)]

        return Screen(running.adapter.channel.sink_for, visible, files, ConversationKey("slack", dm))


class TestSlackFetcher(FetcherContract):
    @pytest.fixture
    def files(self, running: Harness) -> FileSource:
        def attachment(obj: dict[str, Any]) -> Attachment:
            return Attachment(obj["url_private_download"], obj["name"], obj["mimetype"])

        async def add(data: bytes, name: str) -> tuple[MediaFetcher, Attachment]:
            return running.adapter.channel.fetcher, attachment(running.slack.add_file(
                data, name=name, mimetype="application/octet-stream"))

        async def missing() -> tuple[MediaFetcher, Attachment]:
            gone = attachment(running.slack.add_file(b"x", name="gone.pdf", mimetype="application/pdf"))
            return running.adapter.channel.fetcher, replace(gone, ref=gone.ref.replace("-F", "-F0GONE"))

        return FileSource(add, missing)


class TestSlackSupportChannel(NotifierContract):
    """The support channel: one post per request, what follows in its thread."""

    @pytest.fixture
    def desk(self, running: Harness) -> Desk:
        assert running.runtime.manager is not None
        [notifier] = [n for n in running.runtime.manager.notifiers.notifiers if type(n).__name__ == "SupportChannel"]

        async def received() -> list[str]:
            posts = running.slack.messages("C0SUPPORT")
            kinds = []
            for post in posts:
                if "asked to talk to a person" in post.text:
                    kinds.append("requested")
                elif "my printer shows E5" in post.text or "I want a person" in post.text:
                    kinds.append("message")
                elif t("op_with_bot", "en") in post.text:
                    kinds.append("returned")
                elif t("op_with_person", "en") in post.text:
                    kinds.append("taken")
            threads = {p.thread_ts for p in posts if p.thread_ts}
            assert threads <= {posts[0].ts}, "what follows a request goes into its post's thread"
            return kinds

        async def broken() -> Notifier:
            running.slack.fail("chat.postMessage", status=500, times=10**6)
            return notifier  # type: ignore[no-any-return]

        return Desk(notifier, received, broken)


async def test_a_busy_channel_posts_answers_fairly_between_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ana starts ten threads in a channel; the engine answers faster than the channel takes posts (about one
    a second), so her answers queue at the channel. Then Rui asks: the engine serves him at once, and his
    answer does not wait behind all of Ana's queued ones: the channel's posts take turns between users."""
    engine = EchoEngine(max_concurrency=1, record=True)
    async with slack(tmp_path, monkeypatch, engine=engine, native_streaming=False,
                     fake={"rate_limits": True}) as h:
        h.slack.add_user("U0RUI", name="rui", locale="pt-BR")
        threads = []
        for n in range(10):
            payload = mention(h, f"question {n} from Ana")
            await h.slack.send_socket_event(payload)
            threads.append(payload["event"]["ts"])
        await h.slack.wait_for(lambda: len(engine.calls) == 10, 30)  # all ten generated
        waiting = [ts for ts in threads if not h.thread(CHANNEL, ts)]
        assert len(waiting) >= 4, "the channel was not busy: nothing to be fair about"
        rui = h.slack.event_callback(h.slack.app_mention(CHANNEL, "U0RUI", f"<@{h.slack.bot_user_id}> one from Rui"))
        await h.slack.send_socket_event(rui)
        threads.append(rui["event"]["ts"])
        for ts in threads:
            await h.slack.wait_for(lambda ts=ts: any(not m.streaming and m.text.startswith("echo:")
                                                     for m in h.thread(CHANNEL, ts)), 60)
        await h.idle()
        first_post = {ts: float(h.thread(CHANNEL, ts)[0].ts) for ts in threads}
        ahead = [ts for ts in waiting if first_post[ts] < first_post[rui["event"]["ts"]]]
        assert len(ahead) <= 2, f"{len(ahead)} of Ana's {len(waiting)} queued answers went before Rui's"


@pytest.mark.parametrize(("question", "status"), [
    ("Can you help me?", "is thinking…"),
    ("Pode me ajudar?", "está pensando…"),
    ("ok", "está pensando…"),  # no clue in the text: the locale decides
])
async def test_the_assistant_status_speaks_the_language_of_the_question_not_the_locale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, question: str, status: str) -> None:
    """A user whose Slack locale is pt-BR writes a short question in English: the status line under it says
    "is thinking…" like the answer, not "está pensando…"; in Portuguese, or with nothing to tell the language
    by, it is Portuguese."""
    async with slack(tmp_path, monkeypatch) as h:
        h.slack.add_user("U0PT", name="rui", locale="pt-BR")
        dm = h.slack.dm_channel("U0PT")
        thread = h.slack.new_ts()
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.assistant_thread_started(dm, "U0PT", thread)))
        await h.slack.wait_for(lambda: bool(h.slack.suggested_prompts))
        await h.slack.send_socket_event(h.slack.event_callback(h.slack.message_event(
            dm, "U0PT", question, channel_type="im", thread_ts=thread)))
        await h.answered(dm, thread, f"echo: {question}")
        shown = [s["status"] for s in h.slack.statuses if s["thread_ts"] == thread and s["status"]]
        assert shown and set(shown) == {status}, shown
