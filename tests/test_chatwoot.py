"""The Chatwoot adapter against the protocol-faithful Chatwoot of tests/fakes/chatwoot_api.py, through the real
``serve`` app: what the customer and the agents see in the conversation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from adapters.chatwoot import ChatwootAdapter
from adapters.server import Service, build_app
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.l10n.i18n import text as t
from bot.runtime import Runtime
from bot.seams import AccessPolicy, MediaFetcher
from bot.types import Attachment, ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.contracts import FetcherContract, FileSource, HarnessChat, PlatformContract, Screen, SinkContract
from tests.fakes.chatwoot_api import FakeChatwoot
from tests.fakes.serving import free_port, serve_asgi


@dataclass
class Harness:
    cw: FakeChatwoot
    runtime: Runtime
    adapter: ChatwootAdapter
    url: str

    async def idle(self) -> None:
        assert self.runtime.manager is not None
        await asyncio.wait_for(self.runtime.manager.idle(), 15)

    async def replied(self, conv: int, expected: str, timeout: float = 15) -> None:  # noqa: ASYNC109
        await self.cw.wait_for(lambda: expected in self.cw.public_replies(conv), timeout)


@contextlib.asynccontextmanager
async def chatwoot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, secret: str | None = "cw-webhook-secret",
                   engine: EchoEngine | None = None, persona: str = "support", shared: FakeChatwoot | None = None,
                   conversation: dict[str, Any] | None = None, **conf: Any) -> AsyncIterator[Harness]:
    async with contextlib.AsyncExitStack() as stack:
        cw = shared or await stack.enter_async_context(FakeChatwoot(secret=secret))
        monkeypatch.setenv("CHATWOOT_BOT_TOKEN", cw.bot_token)
        if secret:
            monkeypatch.setenv("CHATWOOT_WEBHOOK_SECRET", secret)
        else:
            monkeypatch.delenv("CHATWOOT_WEBHOOK_SECRET", raising=False)
        port = free_port()
        settings = make_settings(tmp_path, adapters={"chatwoot": {"enabled": True, "base_url": cw.url,
                                                                  "persona": persona, **conf}},
                                 conversation=conversation or {})
        async with Runtime(settings, engine=engine or EchoEngine(delay=0.002)) as runtime:
            assert runtime.manager is not None
            adapter = ChatwootAdapter(runtime.manager, runtime.settings, settings.adapters.chatwoot)  # type: ignore[attr-defined]
            service = Service(runtime.settings, runtime, [adapter])
            service.ready = True
            async with serve_asgi(build_app(service), port=port):
                await runtime.manager.start()
                await adapter.start()
                cw.webhook_url = f"http://127.0.0.1:{port}/chatwoot/webhook"
                try:
                    yield Harness(cw, runtime, adapter, cw.webhook_url)
                finally:
                    adapter.stop_intake()
                    await runtime.manager.stop(2)
                    await adapter.close()


async def test_a_customer_is_answered_with_typing_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "My order 1234 has not arrived")
        await h.replied(conv, "echo: My order 1234 has not arrived")
        await h.idle()
        assert [c["typing_status"] for c in h.cw.typing if c["conversation_id"] == conv] == ["on", "off"]
        assert h.cw.status(conv) == "pending"
        await h.idle()
        # the bot's own reply comes back to it as an outgoing message: not answered again
        assert h.cw.public_replies(conv) == ["echo: My order 1234 has not arrived"]
        assert all(d.status == 200 for d in h.cw.deliveries)


async def test_an_answer_a_killed_replica_posted_is_not_posted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica killed between Chatwoot's reply and the store's commit: Chatwoot sends the marked answer
    back to the bot, which notes it with the question; the replica taking the question over finds the note and
    does not post a second answer. Without a note it posts (marked)."""
    import httpx

    from adapters.chatwoot import ANSWER_MARK, POSTED, POSTING, ChatwootSink
    from bot.store import NewMessage
    from bot.types import AnswerDone, ConversationKey, SinkContext

    async with chatwoot(tmp_path, monkeypatch) as h:
        store = h.runtime.manager.store  # type: ignore[union-attr]
        conv = h.cw.conversation()
        key = ConversationKey("chatwoot", str(h.cw.account_id), str(conv))
        asked = await store.add_message(key, NewMessage(role="user", text="q1", state="answering"))
        # what the killed replica did: it stored the posting mark, then Chatwoot took its answer
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{h.cw.url}/api/v1/accounts/{h.cw.account_id}/conversations/{conv}/messages",
                                       headers={"api_access_token": h.cw.bot_token},
                                       json={"content": "the answer", "message_type": "outgoing",
                                             "content_attributes": {ANSWER_MARK: asked}})
        posted = str(response.json()["id"])
        await h.cw.wait_for(lambda: any(d.payload.get("id") == int(posted) for d in h.cw.deliveries), 10)
        async with asyncio.timeout(10):
            while (previous := (await store.message(asked)).drafts) != (POSTING, f"{POSTED}{posted}"):
                await asyncio.sleep(0.05)
        recorded: list[tuple[str, ...]] = []

        async def record(ids: Any) -> None:
            recorded.append(tuple(ids))

        again = ChatwootSink(h.adapter, SinkContext(key, message_id=asked, previous=previous, record=record))
        assert await again.emit(AnswerDone("the answer, generated again")) == (posted,)
        assert h.cw.public_replies(conv) == ["the answer"] and recorded == []
        # a question whose answer never reached Chatwoot is answered, marked, the mark stored first
        other = await store.add_message(key, NewMessage(role="user", text="q2", state="answering"))
        sink = ChatwootSink(h.adapter, SinkContext(key, message_id=other, previous=(POSTING,), record=record))
        await sink.emit(AnswerDone("second answer"))
        assert h.cw.public_replies(conv) == ["the answer", "second answer"] and recorded == [(POSTING,)]
        assert h.cw.calls_to("messages.create")[-1].params["content_attributes"] == {ANSWER_MARK: other}


async def test_a_redelivered_event_is_answered_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        payload = await h.cw.customer_message(conv, "hello")
        await h.cw.deliver("message_created", payload, delivery_id=h.cw.deliveries[0].delivery_id)
        await h.cw.deliver("message_created", payload)  # a new delivery id: the same message all the same
        await h.replied(conv, "echo: hello")
        await h.idle()
        assert h.cw.public_replies(conv) == ["echo: hello"]
    # a redelivery is routine, not news: nothing about it at INFO; the answer is one access-log line
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("bot.", "adapters."))]
    assert not [line for line in said if "duplicate" in line or "repeat of a signed request" in line], said
    answered = [line for line in said if line.startswith("answered chatwoot:")]
    assert len(answered) == 1 and "prompt +" in answered[0] and "answer tokens" in answered[0], said


async def test_a_replayed_signed_status_change_is_answered_200_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone who captured a signed ``conversation_status_changed`` cannot flip the handoff back with it
    within the five minutes its signature is fresh: 200 (an error would open the conversation), nothing done."""
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        key = ConversationKey("chatwoot", str(h.cw.account_id), str(conv))
        store = h.runtime.manager.store  # type: ignore[union-attr]
        await h.cw.customer_message(conv, "hello")
        await h.replied(conv, "echo: hello")
        await h.cw.set_status(conv, "open")
        [opened] = [d for d in h.cw.deliveries if d.event == "conversation_status_changed"]
        assert (await store.conversation(key)).mode == "human"
        await h.cw.set_status(conv, "pending")
        assert (await store.conversation(key)).mode == "bot"
        async with httpx.AsyncClient() as client:
            replay = await client.post(h.url, content=opened.body, headers=opened.headers)
            # the same delivery id signed anew is the same event too (Chatwoot's retries reuse it)
            again = await h.cw.deliver(opened.event, opened.payload, delivery_id=opened.delivery_id, retries=False)
        assert replay.status_code == 200 and again[-1].status == 200
        assert (await store.conversation(key)).mode == "bot"


async def test_a_request_that_failed_is_processed_when_it_comes_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only accepted (2xx) requests are remembered: one answered 5xx (restarting) counts when it comes again."""
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        h.adapter.stop_intake()
        event = h.cw.load_payload("message_created_incoming", conversation__id=conv, content="hello")
        [refused] = await h.cw.deliver("message_created", event, retries=False)
        assert refused.status == 500  # what Chatwoot's job retries (a 503 it would drop)
        await h.adapter.start()
        async with httpx.AsyncClient() as client:
            assert (await client.post(h.url, content=refused.body, headers=refused.headers)).status_code == 200
        await h.replied(conv, "echo: hello")


#: The fake's app is on 127.0.0.1 and its storage on localhost: both private, allowed for the tests.
LOCAL = {"attachment_hosts": ["localhost"], "allow_private_networks": ["127.0.0.0/8", "::1/128"]}


async def test_an_image_behind_a_cross_host_redirect_without_leaking_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch, engine=EchoEngine(context_length=32768), **LOCAL) as h:
        conv = h.cw.conversation()
        photo = h.cw.attachment(image_bytes(640, 480), filename="receipt.jpg")
        await h.cw.customer_message(conv, "What does this receipt say?", attachments=[photo])
        await h.cw.wait_for(lambda: any("[image 1: 640x480" in r for r in h.cw.public_replies(conv)), 15)
        storage = [d for d in h.cw.downloads if d.get("server") == "storage"]
        assert storage and not any(d.get("api_access_token") or d.get("authorization") for d in storage)


async def test_attachments_only_from_chatwoot_and_its_storage_hosts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``data_url`` and every redirect from it stay on Chatwoot's host and ``attachment_hosts``: storage on a
    host not listed, or a data_url elsewhere, is refused with one warning, and the customer hears so."""
    caplog.set_level(logging.WARNING)
    async with chatwoot(tmp_path, monkeypatch, allow_private_networks=["127.0.0.0/8", "::1/128"]) as h:
        conv = h.cw.conversation()
        photo = h.cw.attachment(image_bytes(64, 48), filename="receipt.jpg")
        elsewhere = h.cw.attachment(image_bytes(64, 48), filename="other.jpg") | {
            "data_url": "http://files.evil.example/rails/active_storage/blobs/redirect/x/other.jpg"}
        await h.cw.customer_message(conv, "a file", attachments=[photo])
        await h.cw.wait_for(lambda: bool(h.cw.public_replies(conv)), 15)
        await h.cw.customer_message(conv, "another", attachments=[elsewhere])
        await h.cw.wait_for(lambda: len(h.cw.public_replies(conv)) == 2, 15)
        await h.idle()
        unavailable = t("attachment_unavailable", "en", name="{}").split("{}")[0]
        assert h.cw.public_replies(conv) and all(r.startswith(unavailable) for r in h.cw.public_replies(conv))
        assert [d["server"] for d in h.cw.downloads] == ["app"]  # the redirect to storage was not followed
        refused = [r.getMessage() for r in caplog.records if "not fetched" in r.getMessage()]
        assert len(refused) == 2 and any("http://localhost" in m for m in refused)
        assert any("http://files.evil.example" in m for m in refused)
        assert not any("X-Amz" in m or "/rails/" in m for m in refused)  # hosts only, never paths or queries


async def test_attachments_from_private_addresses_need_allow_private_networks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with chatwoot(tmp_path, monkeypatch, attachment_hosts=["localhost"]) as h:
        conv = h.cw.conversation()
        photo = h.cw.attachment(image_bytes(64, 48), filename="receipt.jpg")
        await h.cw.customer_message(conv, "a photo", attachments=[photo])
        await h.cw.wait_for(lambda: bool(h.cw.public_replies(conv)), 15)
        await h.idle()
        assert h.cw.public_replies(conv) == [t("attachment_unavailable", "en", name="image-501")]
        assert h.cw.downloads == []  # not even the first hop
        [refused] = [r.getMessage() for r in caplog.records if "not fetched" in r.getMessage()]
        assert "127.0.0.1" in refused and "loopback" in refused
        assert "adapters.chatwoot.allow_private_networks" in refused


@pytest.mark.parametrize("how", ["unsigned", "wrong", "stale"])
async def test_bad_signatures_are_refused_and_never_processed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              how: str) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        kwargs: dict[str, Any] = {"sign": False} if how == "unsigned" else \
            {"secret": "not-the-secret"} if how == "wrong" else {"timestamp": int(time.time()) - 600}
        data = h.cw.load_payload("message_created_incoming", conversation__id=conv)
        deliveries = await h.cw.deliver("message_created", data, retries=False, **kwargs)
        assert deliveries[-1].status == 401
        await h.idle()
        assert h.runtime.store is not None and await h.runtime.store.last_message_id() == 0


async def test_without_a_secret_start_up_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: no webhook secret, no Chatwoot adapter (anyone could post events and flip handoffs)."""
    with pytest.raises(StartupError) as err:
        async with chatwoot(tmp_path, monkeypatch, secret=None):
            pass
    message = str(err.value)
    assert "CHATWOOT_WEBHOOK_SECRET" in message and "adapters.chatwoot.insecure_unsigned" in message


async def test_insecure_unsigned_accepts_unsigned_events_with_a_loud_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with chatwoot(tmp_path, monkeypatch, secret=None, insecure_unsigned=True) as h:
        [warning] = [r for r in caplog.records if "insecure_unsigned" in r.getMessage()]
        assert warning.levelno == logging.WARNING and "CHATWOOT_WEBHOOK_SECRET" in warning.getMessage()
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "older Chatwoot here")
        await h.replied(conv, "echo: older Chatwoot here")


@pytest.mark.parametrize("base_url", ["http://chatwoot.example.com", "http://192.168.1.20:3000"])
async def test_the_bot_token_over_plain_http_to_another_host_stops_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    """``api_access_token`` goes with every REST call: over http it must stay on this machine (loopback)."""
    with pytest.raises(StartupError) as err:
        async with chatwoot(tmp_path, monkeypatch, base_url=base_url):
            pass
    assert "adapters.chatwoot.base_url" in str(err.value) and "https" in str(err.value)


async def test_handoff_opens_the_conversation_and_pending_gives_it_back(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation(locale="pt-BR")
        await h.cw.customer_message(conv, "Quero falar com um atendente humano")
        # only an agent's "pending" gives it back in Chatwoot: the customer is not told to send /bot
        said = t("handoff_started_no_return", "pt")
        assert "/bot" not in said and said in t("handoff_started", "pt")
        await h.replied(conv, said)
        await h.cw.wait_for(lambda: h.cw.status(conv) == "open")
        await h.cw.customer_message(conv, "/bot")
        await h.cw.customer_message(conv, "alguém aí?")
        await h.cw.agent_message(conv, "Olá, sou a Ana.")
        await h.idle()
        assert h.cw.bot_replies(conv) == [said]  # silent while a person has it, /bot included
        await h.cw.set_status(conv, "pending")
        await h.cw.customer_message(conv, "e agora, o robô responde?")
        await h.replied(conv, "echo: e agora, o robô responde?")


async def test_take_over_in_the_operator_inbox_opens_the_conversation_and_give_back_sets_it_pending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chatwoot's agents see that a person has the conversation: "Take over" in the operator inbox sets it
    ``open`` in Chatwoot, "Give back" ``pending`` (and the assistant answers again). The inbox names the
    customer as Chatwoot does."""
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation(contact={"name": "Joana Prado"})
        await h.cw.customer_message(conv, "hello")
        await h.replied(conv, "echo: hello")
        assert h.cw.status(conv) == "pending"
        base = h.url.removesuffix("/chatwoot/webhook")
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer op-token"}) as op:
            [listed] = (await op.get("/api/operator/conversations")).json()["active"]
            assert (listed["platform"], listed["name"], listed["served"]) == ("chatwoot", "Joana Prado", True)
            key = listed["key"]
            taken = await op.post(f"/api/operator/conversations/{key}/take", json={"by": "Marta"})
            assert taken.json() == {"taken": True}
            await h.cw.wait_for(lambda: h.cw.status(conv) == "open")
            await h.replied(conv, t("handoff_taken", "en", name="Marta"))
            [mine] = (await op.get("/api/operator/conversations")).json()["in_progress"]
            assert (mine["key"], mine["operator"]) == (key, "Marta")

            back = await op.post(f"/api/operator/conversations/{key}/return", json={"by": "Marta"})
            assert back.json() == {"returned": True}
            await h.cw.wait_for(lambda: h.cw.status(conv) == "pending")
            await h.idle()
            changes = [(c["previous"], c["current"], c["by"]) for c in h.cw.status_changes if c["conversation_id"] == conv]
            assert changes == [("pending", "open", "agent_bot"), ("open", "pending", "agent_bot")]
        await h.cw.customer_message(conv, "and now?")
        await h.replied(conv, "echo: and now?")


async def test_the_personas_policy_and_the_model_hand_off_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        refund = h.cw.conversation()
        await h.cw.customer_message(refund, "I was charged twice, I want a refund")
        await h.replied(refund, t("handoff_policy", "en"))
        await h.cw.wait_for(lambda: h.cw.status(refund) == "open")
        stuck = h.cw.conversation()
        await h.cw.customer_message(stuck, "please check my account settings [handoff]")
        await h.replied(stuck, t("handoff_model", "en"))
        assert h.cw.public_replies(stuck)[0] == "echo: please check my account settings"
        await h.cw.wait_for(lambda: h.cw.status(stuck) == "open")


async def test_agent_assist_inboxes_get_private_notes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch, agent_assist_inboxes=[2]) as h:
        h.cw.add_inbox(2, "Email")
        conv = h.cw.conversation(status="open", inbox_id=2)
        await h.cw.customer_message(conv, "Where is my parcel?")
        await h.cw.wait_for(lambda: "echo: Where is my parcel?" in h.cw.private_notes(conv))
        await h.idle()
        assert h.cw.public_replies(conv) == [] and h.cw.status(conv) == "open"
        await h.cw.customer_message(conv, "/human")  # agents are already there: no handoff, a note
        await h.cw.wait_for(lambda: len(h.cw.private_notes(conv)) == 2)
        assert h.cw.status(conv) == "open" and h.cw.public_replies(conv) == []


async def test_exports_arrive_as_attachments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "| item | total |\n|---|---|\n| pump | 12.50 |")
        await h.cw.wait_for(lambda: len(h.cw.public_replies(conv)) == 1)
        await h.cw.customer_message(conv, "/export csv")
        await h.cw.wait_for(lambda: any(m.get("attachments") for m in h.cw.messages(conv)
                                        if m.get("message_type") in ("outgoing", 1)))
        calls = [c for c in h.cw.calls if c.name == "messages.create" and c.files]
        assert calls and b"pump,12.50" in calls[-1].files[0]["data"]


async def test_the_widget_greets_once_in_the_customers_language(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        conv = h.cw.conversation(locale="de")
        await h.cw.widget_opened(conv, locale="de")
        await h.cw.widget_opened(conv, locale="de")  # every page load fires it again
        await h.cw.wait_for(lambda: len(h.cw.public_replies(conv)) == 1)
        assert h.cw.public_replies(conv) == ["Hallo! Wie kann ich Ihnen heute helfen? Sie können auch einen "
                                             "Screenshot oder ein Foto senden."]
        await h.cw.customer_message(conv, "Danke")
        await h.cw.wait_for(lambda: len(h.cw.public_replies(conv)) == 2)
        await h.cw.widget_opened(conv, locale="de")  # the conversation has messages now: no greeting
        await h.idle()
        assert len(h.cw.public_replies(conv)) == 2


async def test_the_widget_greets_only_whom_the_policy_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        denied = h.cw.conversation(contact={"name": "Blocked"})
        contact = h.cw._conv(denied).contact["id"]
        h.adapter.channel = replace(h.adapter.channel, policy=AccessPolicy(deny_users=frozenset({str(contact)})))
        h.runtime.manager.register(h.adapter.channel)  # type: ignore[union-attr]
        await h.cw.widget_opened(denied)
        served = h.cw.conversation()
        await h.cw.widget_opened(served)
        await h.cw.wait_for(lambda: len(h.cw.public_replies(served)) == 1)
        await h.idle()
        assert h.cw.public_replies(denied) == []


async def test_recorded_events_that_are_not_for_the_bot_get_200_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with chatwoot(tmp_path, monkeypatch) as h:
        for name in ("message_created_outgoing_agent", "message_created_private_note", "message_created_bot_own",
                     "message_created_while_open", "message_updated"):
            payload = h.cw.load_payload(name)
            deliveries = await h.cw.deliver(payload["event"], payload, retries=False)
            assert deliveries[-1].status == 200, name
        await h.idle()
        assert h.runtime.store is not None and await h.runtime.store.last_message_id() == 0


# -- the platform contract --------------------------------------------------------------------------


class ChatwootChat(HarnessChat):
    """One website-widget conversation of a customer, by signed webhooks (retried as Chatwoot's job does)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cw: FakeChatwoot) -> None:
        super().__init__(EchoEngine(delay=0.002))
        self.tmp_path, self.monkeypatch, self.cw = tmp_path, monkeypatch, cw
        self.conv = cw.conversation()

    def open_harness(self) -> contextlib.AbstractAsyncContextManager[Harness]:
        return chatwoot(self.tmp_path, self.monkeypatch, engine=self.engine, shared=self.cw,
                        conversation={"max_pending_per_conversation": 1})

    async def say(self, text: str) -> dict[str, Any]:
        return await self.cw.customer_message(self.conv, text)

    async def redeliver(self, delivery: dict[str, Any]) -> None:
        await self.cw.deliver("message_created", delivery)  # signed anew, a new delivery id: the job run again

    def seen(self) -> list[str]:
        return self.cw.public_replies(self.conv)

    def outage(self, down: bool) -> None:
        if down:
            self.cw.fail("*", status=503, times=10**6)
        else:
            self.cw.heal()



class TestChatwootPlatform(PlatformContract):
    @pytest.fixture
    async def chat(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ChatwootChat]:
        async with FakeChatwoot(secret="cw-webhook-secret") as cw, \
                HarnessChat.running(ChatwootChat(tmp_path, monkeypatch, cw)) as chat:
            yield chat  # type: ignore[misc]


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    async with chatwoot(tmp_path, monkeypatch, **LOCAL) as h:
        yield h


class TestChatwootSink(SinkContract):
    @pytest.fixture
    def screen(self, running: Harness) -> Screen:
        conv = running.cw.conversation()

        def outgoing() -> list[dict[str, Any]]:
            return [m for m in running.cw.messages(conv) if m["message_type"] == "outgoing" and not m["private"]]

        async def visible() -> list[str]:
            await running.idle()
            return [m["content"] for m in outgoing() if m["content"]]

        async def files() -> list[str]:
            return [unquote(a["data_url"].rsplit("/", 1)[-1]) for m in outgoing() for a in m["attachments"]]

        key = ConversationKey("chatwoot", str(running.cw.account_id), str(conv))
        return Screen(running.adapter.channel.sink_for, visible, files, key)


class TestChatwootFetcher(FetcherContract):
    @pytest.fixture
    def files(self, running: Harness) -> FileSource:
        async def add(data: bytes, name: str) -> tuple[MediaFetcher, Attachment]:
            obj = running.cw.attachment(data, file_type="file", filename=name, mime="application/octet-stream")
            return running.adapter.channel.fetcher, Attachment(obj["data_url"], name)

        async def missing() -> tuple[MediaFetcher, Attachment]:
            obj = running.cw.attachment(b"x", file_type="file", filename="gone.pdf", mime="application/pdf")
            return running.adapter.channel.fetcher, Attachment(obj["data_url"].replace("/redirect/", "/redirect/0"),
                                                               "gone.pdf")

        return FileSource(add, missing)


async def test_chatwoot_failing_is_one_line_naming_the_url_readyz_says_so_and_people_take_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with chatwoot(tmp_path, monkeypatch, conversation={"delivery_deadline_seconds": 1.5}) as h:
        assert h.runtime.manager is not None
        ready = h.url.replace("/chatwoot/webhook", "/readyz")
        h.cw.fail("*", status=503, times=10**6)
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "is my order shipped?")
        key = ConversationKey("chatwoot", str(h.cw.account_id), str(conv))
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(15):
                while (await h.runtime.manager.store.conversation(key)).mode != "human":
                    await asyncio.sleep(0.05)
            answer = await http.get(ready)
            assert answer.status_code == 503
            assert h.cw.url in answer.json()["problems"]["adapters.chatwoot"]
            h.cw.heal()
            # the bot could not post its answer: the conversation is the agents' (open), the customer told so
            said = t("handoff_started_no_return", "en")
            await h.replied(conv, said)
            await h.cw.wait_for(lambda: h.cw.status(conv) == "open")
            assert (await http.get(ready)).status_code == 200
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("bot.")]
    failing = [r.getMessage() for r in warnings if "cannot deliver replies" in r.getMessage()]
    assert len(failing) == 1, [r.getMessage() for r in warnings]  # one line a minute, not one per retry
    assert h.cw.url in failing[0] and "adapters.chatwoot.base_url" in failing[0] and "503" in failing[0]
    assert not any(r.exc_info for r in caplog.records)


async def test_an_unreachable_chatwoot_is_named_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    dead = f"http://127.0.0.1:{free_port()}"
    async with chatwoot(tmp_path, monkeypatch, base_url=dead) as h:
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "hello?")
        assert h.runtime.manager is not None
        async with asyncio.timeout(15):
            while "chatwoot" not in h.runtime.manager.outbox.troubles():
                await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "cannot deliver" in r.getMessage()]
    assert len(lines) == 1 and dead in lines[0] and "ConnectError" in lines[0] and "adapters.chatwoot.base_url" in lines[0]
    assert not any(r.exc_info for r in caplog.records)
