"""The fake Chatwoot (tests/fakes/chatwoot_api.py): agent-bot webhooks, REST and attachments on the wire.

A tiny starlette receiver stands in for the bot: it verifies the signatures with its own HMAC code and
answers with scripted statuses, so the delivery rules (retries, handoff on failure) are seen from outside.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.chatwoot_api import (
    BOT_ERROR_ACTIVITY,
    PAYLOAD_DIR,
    FakeChatwoot,
    load_payload,
    rails_json,
)
from tests.fakes.serving import serve_asgi

SECRET = "cw-webhook-secret"
TOKEN = "cw-bot-token"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 120
PDF = b"%PDF-1.4\n" + b"x" * 300


def verify(secret: str | None, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> str:
    """The receiver's own check: ok, absent, stale or bad."""
    ts, sig = headers.get("x-chatwoot-timestamp"), headers.get("x-chatwoot-signature")
    if not secret:
        return "ok"
    if not ts or not sig:
        return "absent"
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance:
        return "stale"
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "ok" if hmac.compare_digest(expected, sig) else "bad"


class Receiver:
    """The bot's webhook endpoint: records, verifies, answers ``statuses`` in turn (then 200); events in
    ``hang`` are held until ``release`` is set (to make Chatwoot time out)."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.hang: set[str] = set()
        self.release = asyncio.Event()

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/chatwoot", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        payload = json.loads(body)
        verdict = verify(self.secret, headers, body)
        self.requests.append({"headers": headers, "body": body, "payload": payload, "verdict": verdict})
        if payload.get("event") in self.hang:
            await self.release.wait()
        if verdict != "ok":
            return JSONResponse({"error": verdict}, status_code=401)
        status = self.statuses.pop(0) if self.statuses else 200
        return JSONResponse({"ok": status < 300}, status_code=status)

    def events(self) -> list[str]:
        return [r["payload"]["event"] for r in self.requests]


@pytest.fixture
async def env() -> AsyncIterator[tuple[FakeChatwoot, Receiver]]:
    receiver = Receiver(SECRET)
    async with serve_asgi(receiver.app()) as url, FakeChatwoot(secret=SECRET, timeout=0.5) as cw:
        cw.webhook_url = f"{url}/chatwoot"
        yield cw, receiver
        receiver.release.set()


def rest(cw: FakeChatwoot, token: str | None = TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=cw.url, headers={"api_access_token": token} if token else {})


def conv_path(cw: FakeChatwoot, conv: int, tail: str = "") -> str:
    return f"/api/v1/accounts/{cw.account_id}/conversations/{conv}{tail}"


# ------------------------------------------------------------------------------------------------ webhooks


async def test_signed_delivery_headers_and_payload(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation(contact={"name": "Maria"}, locale="pt-PT")
    payload = await cw.customer_message(conv, "Is <b>this</b> & that open?")

    (req,) = receiver.requests
    headers, body = req["headers"], req["body"]
    assert req["verdict"] == "ok"
    assert headers["content-type"] == "application/json" and headers["accept"] == "application/json"
    assert UUID.match(headers["x-chatwoot-delivery"])
    assert abs(int(headers["x-chatwoot-timestamp"]) - time.time()) < 5
    assert headers["x-chatwoot-signature"].startswith("sha256=") and len(headers["x-chatwoot-signature"]) == 71
    # Rails to_json: compact, HTML-unsafe characters escaped; the signature covers these exact bytes.
    assert body == rails_json(payload) and b"\\u003cb\\u003e" in body and b"\\u0026" in body
    assert json.loads(body)["content"] == "Is <b>this</b> & that open?"

    p = req["payload"]
    assert (p["event"], p["message_type"], p["private"], p["content_type"]) == (
        "message_created", "incoming", False, "text")
    assert p["sender"]["id"] == p["conversation"]["meta"]["sender"]["id"] and p["sender"]["name"] == "Maria"
    assert p["account"] == {"id": 1, "name": "Acme Inc"} and p["inbox"] == {"id": 1, "name": "Website"}
    assert p["conversation"]["id"] == conv and p["conversation"]["status"] == "pending"
    assert p["conversation"]["channel"] == "Channel::WebWidget"
    assert p["conversation"]["additional_attributes"]["browser_language"] == "pt-PT"
    assert p["conversation"]["contact_inbox"]["source_id"] and p["conversation"]["messages"][0]["id"] == p["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", p["created_at"])
    assert cw.status(conv) == "pending" and cw.delivered("message_created", message_id=p["id"])
    assert [m["sender_type"] for m in cw.messages(conv)] == ["Contact"]


async def test_unsigned_stale_and_forged_deliveries(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    raw = load_payload("message_created_incoming")  # a message this fake does not know: no handoff
    (absent,) = await cw.deliver("message_created", raw, sign=False)
    (stale,) = await cw.deliver("message_created", raw, timestamp=int(time.time()) - 3600)
    (forged,) = await cw.deliver("message_created", raw, secret="not-the-secret")
    (replay,) = await cw.deliver("message_created", raw, delivery_id="d-1")
    assert [r["verdict"] for r in receiver.requests] == ["absent", "stale", "bad", "ok"]
    assert "x-chatwoot-signature" not in receiver.requests[0]["headers"]
    assert [d.status for d in (absent, stale, forged, replay)] == [401, 401, 401, 200]  # 401 is not retried
    assert replay.headers["X-Chatwoot-Delivery"] == "d-1"

    # A recorded payload made live: its pending conversation opens when the bot refuses the delivery.
    live = cw.load_payload("message_created_incoming")
    await cw.deliver("message_created", live, sign=False)
    assert cw.status(live["conversation"]["id"]) == "open"
    assert cw.activities(live["conversation"]["id"]) == [BOT_ERROR_ACTIVITY]


async def test_no_secret_means_no_signature_headers() -> None:
    receiver = Receiver(None)
    async with serve_asgi(receiver.app()) as url, FakeChatwoot(secret=None) as cw:
        cw.webhook_url = f"{url}/chatwoot"
        await cw.customer_message(cw.conversation(), "hi")
    (req,) = receiver.requests
    assert "x-chatwoot-signature" not in req["headers"] and "x-chatwoot-timestamp" not in req["headers"]
    assert UUID.match(req["headers"]["x-chatwoot-delivery"])


async def test_500_and_429_are_retried_with_the_same_delivery_id(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    receiver.statuses = [500, 429]
    await cw.customer_message(conv, "first")
    attempts = [d for d in cw.deliveries if d.event == "message_created"]
    assert [(d.attempt, d.status, d.retrying) for d in attempts] == [(1, 500, True), (2, 429, True), (3, 200, False)]
    assert len({d.delivery_id for d in attempts}) == 1
    assert all(r["verdict"] == "ok" for r in receiver.requests)  # each attempt signed anew
    assert cw.status(conv) == "pending"

    receiver.statuses = [500, 500, 500, 500]
    before = len(receiver.requests)
    payload = await cw.customer_message(conv, "second")
    tries = [r for r in receiver.requests[before:] if r["payload"]["event"] == "message_created"]
    assert len(tries) == 3 and len({r["headers"]["x-chatwoot-delivery"] for r in tries}) == 1
    assert {r["payload"]["id"] for r in tries} == {payload["id"]}
    # Retries ran out: handle_failure opens the pending conversation to humans.
    assert cw.status(conv) == "open" and cw.activities(conv) == [BOT_ERROR_ACTIVITY]
    assert cw.status_changes[-1] | {"time": 0} == {"conversation_id": conv, "previous": "pending",
                                                  "current": "open", "by": "system",
                                                  "reason": "agent_bot_error", "time": 0}
    receiver.statuses.clear()


async def test_400_opens_the_conversation_and_tells_the_bot(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    receiver.statuses = [400]
    await cw.customer_message(conv, "hello")
    assert [(d.event, d.status) for d in cw.deliveries] == [("message_created", 400),
                                                            ("conversation_status_changed", 200)]
    changed = receiver.requests[-1]["payload"]
    assert changed["status"] == "open" and changed["id"] == conv
    assert changed["changed_attributes"] == [{"status": {"previous_value": "pending", "current_value": "open"}}]
    assert cw.status(conv) == "open"
    # The activity message is visible to agents but not sent to the bot (not webhook_sendable?).
    assert [m["message_type"] for m in cw.messages(conv)] == ["incoming", "activity"]

    # Once open, a failure changes nothing (only pending conversations are handed over).
    receiver.statuses = [422]
    await cw.customer_message(conv, "again")
    assert cw.status(conv) == "open" and cw.activities(conv) == [BOT_ERROR_ACTIVITY]


async def test_a_timeout_opens_the_conversation(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    receiver.hang = {"message_created"}
    await cw.customer_message(conv, "are you there?")
    first = cw.deliveries[0]
    assert (first.event, first.status, first.error, first.retrying) == ("message_created", None, "timeout", False)
    assert len([d for d in cw.deliveries if d.event == "message_created"]) == 1  # timeouts are not retried
    assert cw.status(conv) == "open"
    receiver.release.set()


async def test_resolved_conversation_goes_back_to_pending_on_a_new_message(
        env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation(status="resolved")
    payload = await cw.customer_message(conv, "one more question")
    assert receiver.events() == ["conversation_status_changed", "message_created"]
    assert payload["conversation"]["status"] == "pending" and cw.status(conv) == "pending"


# ------------------------------------------------------------------------------------------------ REST


async def test_rest_authentication(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, _ = env
    conv = cw.conversation()
    body = {"content": "hi", "message_type": "outgoing", "private": False}
    async with rest(cw, None) as anon, rest(cw, "nope") as wrong, rest(cw) as bot, \
            rest(cw, cw.agent_token) as agent:
        r = await anon.post(conv_path(cw, conv, "/messages"), json=body)
        assert (r.status_code, r.json()) == (401, {"errors": ["You need to sign in or sign up before continuing."]})
        r = await wrong.post(conv_path(cw, conv, "/messages"), json=body)
        assert (r.status_code, r.json()) == (401, {"error": "Invalid Access Token"})
        assert cw.public_replies(conv) == []

        r = await bot.post(conv_path(cw, conv, "/messages"), json=body)
        assert r.status_code == 200
        created = r.json()
        assert (created["content"], created["message_type"], created["private"], created["conversation_id"]) == (
            "hi", 1, False, conv)
        assert created["sender"]["type"] == "agent_bot" and created["sender"]["id"] == cw.bot["id"]

        # An agent bot may not list messages; an agent may.
        r = await bot.get(conv_path(cw, conv, "/messages"))
        assert (r.status_code, r.json()) == (401, {"error": "Access to this endpoint is not authorized for bots"})
        r = await agent.get(conv_path(cw, conv, "/messages"))
        assert r.status_code == 200 and [m["content"] for m in r.json()["payload"]] == ["hi"]

        r = await bot.get(conv_path(cw, conv))
        assert r.status_code == 200 and r.json()["status"] == "pending"
        r = await bot.post(conv_path(cw, 999, "/messages"), json=body)
        assert (r.status_code, r.json()) == (404, {"error": "Resource could not be found"})
        r = await bot.post(f"/api/v1/accounts/2/conversations/{conv}/messages", json=body)
        assert r.status_code == 404
        r = await bot.post(conv_path(cw, conv, "/messages"), json={"content": "x", "message_type": "incoming"})
        assert (r.status_code, r.json()) == (422, {"error": "Incoming messages are only allowed in Api inboxes"})

    assert cw.public_replies(conv) == ["hi"] and cw.bot_replies(conv) == ["hi"]
    assert [(c.name, c.status, c.token) for c in cw.calls[:3]] == [
        ("messages.create", 401, None), ("messages.create", 401, "nope"), ("messages.create", 200, TOKEN)]
    assert cw.calls_to("index")[0].status == 401 and cw.calls[2].body_kind == "json"


async def test_the_bots_own_reply_and_note_come_back_to_it(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    await cw.customer_message(conv, "hello")
    async with rest(cw) as bot:
        reply = (await bot.post(conv_path(cw, conv, "/messages"),
                                json={"content": "Hi! How can I help?", "message_type": "outgoing"})).json()
        note = (await bot.post(conv_path(cw, conv, "/messages"),
                               json={"content": "summary for agents", "private": True})).json()
    await cw.wait_for(lambda: len(cw.delivered("message_created")) == 3)
    echoes = {r["payload"]["id"]: r["payload"] for r in receiver.requests}
    own = echoes[reply["id"]]
    assert (own["message_type"], own["private"], own["sender"]) == (
        "outgoing", False, {"id": cw.bot["id"], "name": cw.bot["name"], "type": "agent_bot"})
    assert own["conversation"]["status"] == "pending"
    assert echoes[note["id"]]["private"] is True and echoes[note["id"]]["message_type"] == "outgoing"
    assert cw.public_replies(conv) == ["Hi! How can I help?"] and cw.private_notes(conv) == ["summary for agents"]

    # An agent's reply and note reach the bot too, while the conversation is open.
    await cw.set_status(conv, "open", notify=False)
    agent_reply = await cw.agent_message(conv, "Ana here")
    assert agent_reply["sender"]["type"] == "user" and agent_reply["conversation"]["status"] == "open"
    assert [m["sender_type"] for m in cw.messages(conv)] == ["Contact", "AgentBot", "AgentBot", None, "User"]


async def test_multipart_attachments(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    async with rest(cw) as bot:
        r = await bot.post(conv_path(cw, conv, "/messages"),
                           data={"content": "Here you go", "message_type": "outgoing", "private": "false"},
                           files=[("attachments[]", ("chart.png", PNG, "image/png")),
                                  ("attachments[]", ("report.pdf", PDF, "application/pdf"))])
        assert r.status_code == 200
        created = r.json()
    assert [(a["file_type"], a["file_size"]) for a in created["attachments"]] == [("image", len(PNG)),
                                                                                 ("file", len(PDF))]
    call = cw.calls_to("messages.create")[-1]
    assert call.body_kind == "multipart" and [f["filename"] for f in call.files] == ["chart.png", "report.pdf"]
    assert call.params["private"] == "false" and cw.private_notes(conv) == []
    await cw.wait_for(lambda: bool(cw.delivered("message_created", message_id=created["id"])))
    echoed = receiver.requests[-1]["payload"]
    assert echoed["attachments"][1]["data_url"].endswith("/report.pdf")
    async with httpx.AsyncClient(follow_redirects=True) as client:
        assert (await client.get(echoed["attachments"][0]["data_url"])).content == PNG


async def test_toggle_status_and_typing(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    async with rest(cw) as bot:
        r = await bot.post(conv_path(cw, conv, "/toggle_typing_status"), json={"typing_status": "on"})
        assert (r.status_code, r.content) == (200, b"")
        assert cw.typing_now(conv)
        await bot.post(conv_path(cw, conv, "/toggle_typing_status"), json={"typing_status": "off"})
        assert not cw.typing_now(conv)
        assert [(t["typing_status"], t["by"]) for t in cw.typing] == [("on", "agent_bot"), ("off", "agent_bot")]

        # pending → open by the bot is a handoff: success is null in Chatwoot's answer.
        r = await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "open"})
        assert r.json() == {"meta": {}, "payload": {"success": None, "conversation_id": conv,
                                                    "current_status": "open", "snoozed_until": None}}
        assert cw.status(conv) == "open" and cw.status_changes[-1]["reason"] == "bot_handoff"
        assert cw.activities(conv) == ["Conversation was reopened by InternVL"]
        await cw.wait_for(lambda: bool(cw.delivered("conversation_status_changed")))
        assert receiver.events() == ["conversation_status_changed"]  # the activity message is not sent

        r = await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "resolved"})
        assert r.json()["payload"]["success"] is True and cw.status(conv) == "resolved"
        r = await bot.post(conv_path(cw, conv, "/toggle_status"))  # no status: toggles
        assert r.json()["payload"]["current_status"] == "open"
        r = await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "snoozed",
                                                                       "snoozed_until": 1893456000})
        assert r.json()["payload"]["snoozed_until"] == 1893456000
        r = await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "bogus"})
        assert r.status_code == 500
    assert [c["current"] for c in cw.status_changes] == ["open", "resolved", "open", "snoozed"]


async def test_data_url_redirects_to_storage_without_the_token(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, _ = env
    conv = cw.conversation()
    photo = b"\xff\xd8\xff\xe0" + b"jpeg-bytes" * 50
    payload = await cw.customer_message(conv, "what is this?", attachments=[cw.attachment(photo)])
    (att,) = payload["attachments"]
    assert (att["file_type"], att["file_size"], att["message_id"]) == ("image", len(photo), payload["id"])
    app, storage = urlsplit(cw.url), urlsplit(cw.storage_url)
    assert urlsplit(att["data_url"]).netloc == app.netloc and storage.hostname == "localhost"
    assert storage.netloc != app.netloc

    async with httpx.AsyncClient() as plain:
        first = await plain.get(att["data_url"])
    assert first.status_code == 302 and urlsplit(first.headers["location"]).netloc == storage.netloc

    # A client that sets the token as a default header leaks it to storage when following redirects.
    async with httpx.AsyncClient(headers={"api_access_token": TOKEN}, follow_redirects=True) as naive:
        assert (await naive.get(att["data_url"])).content == photo
    assert cw.downloads[-1]["server"] == "storage" and cw.downloads[-1]["api_access_token"] is True

    # Sending the token only to the app host keeps it away from storage.
    async def token_for_app_only(request: httpx.Request) -> None:
        if request.url.netloc.decode() == app.netloc:
            request.headers["api_access_token"] = TOKEN
        else:
            request.headers.pop("api_access_token", None)

    async with httpx.AsyncClient(follow_redirects=True, event_hooks={"request": [token_for_app_only]}) as careful:
        got = await careful.get(att["data_url"])
        thumb = await careful.get(att["thumb_url"])
    assert got.content == photo and thumb.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    hops = cw.downloads[-4:]
    assert [(d["server"], d["status"], d["api_access_token"]) for d in hops] == [
        ("app", 302, True), ("storage", 200, False), ("app", 302, True), ("storage", 200, False)]

    # Storage trusts only the presigned query: a bearer header on top, or a tampered signature, is refused.
    async with httpx.AsyncClient() as client:
        location = (await client.get(att["data_url"])).headers["location"]
        assert (await client.get(location, headers={"Authorization": "Bearer x"})).status_code == 400
        assert (await client.get(re.sub(r"Signature=\w+", "Signature=00", location))).status_code == 403
        assert (await client.get(f"{cw.url}/rails/active_storage/blobs/redirect/nope/x.jpg")).status_code == 404


async def test_status_events_widget_and_message_updated(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    conv = cw.conversation()
    await cw.set_status(conv, "open", legacy=True)
    assert receiver.events() == ["conversation_opened", "conversation_status_changed"]
    assert cw.activities(conv) == ["Conversation was reopened by Ana Agent"]
    await cw.set_status(conv, "resolved")
    assert receiver.events()[-1] == "conversation_status_changed"
    assert receiver.requests[-1]["payload"]["changed_attributes"][0]["status"]["current_value"] == "resolved"
    await cw.set_status(conv, "pending", notify=False)
    assert len(receiver.requests) == 3 and cw.status(conv) == "pending"

    opened = await cw.widget_opened(conv)
    assert opened["event"] == "webwidget_triggered" and opened["current_conversation"]["id"] == conv
    assert opened["event_info"]["browser_language"] == "en" and receiver.events()[-1] == "webwidget_triggered"

    sent = await cw.customer_message(conv, "pick one")
    updated = await cw.update_message(conv, sent["id"], content_attributes={"submitted_values": [{"value": "a"}]})
    assert receiver.events()[-1] == "message_updated" and updated["id"] == sent["id"]
    assert updated["content_attributes"]["submitted_values"] == [{"value": "a"}]


async def test_activity_delivery_is_opt_in() -> None:
    receiver = Receiver(SECRET)
    async with serve_asgi(receiver.app()) as url, FakeChatwoot(deliver_activity=True) as cw:
        cw.webhook_url = f"{url}/chatwoot"
        conv = cw.conversation()
        async with rest(cw) as bot:
            await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "open"})
        await cw.wait_for(lambda: len(cw.delivered()) == 2)
    assert receiver.events() == ["conversation_status_changed", "message_created"]
    assert receiver.requests[1]["payload"]["message_type"] == "activity"


async def test_faults_and_delays(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, _ = env
    conv = cw.conversation()
    cw.fail("messages.create", status=500)
    cw.fail("toggle_typing_status", status=429)
    cw.delay("toggle_status", 0.05)
    async with rest(cw) as bot:
        r = await bot.post(conv_path(cw, conv, "/messages"), json={"content": "lost"})
        assert r.status_code == 500 and cw.public_replies(conv) == []
        assert (await bot.post(conv_path(cw, conv, "/messages"), json={"content": "ok"})).status_code == 200
        r = await bot.post(conv_path(cw, conv, "/toggle_typing_status"), json={"typing_status": "on"})
        assert (r.status_code, r.text) == (429, "Retry later\n") and cw.typing == []
        start = time.monotonic()
        assert (await bot.post(conv_path(cw, conv, "/toggle_status"), json={"status": "open"})).status_code == 200
        assert time.monotonic() - start >= 0.05
    att = cw.attachment(PNG, filename="a.png", mime="image/png")
    cw.fail("storage", status=503)
    async with httpx.AsyncClient(follow_redirects=True) as client:
        assert (await client.get(att["data_url"])).status_code == 503
        assert (await client.get(att["data_url"])).content == PNG


# ------------------------------------------------------------------------------------------------ payloads


def test_recorded_payloads() -> None:
    names = sorted(p.stem for p in PAYLOAD_DIR.glob("*.json"))
    assert names == sorted([
        "message_created_incoming", "message_created_with_image", "message_created_outgoing_agent",
        "message_created_private_note", "message_created_bot_own", "message_created_while_open",
        "message_updated", "conversation_status_changed_pending", "conversation_opened", "webwidget_triggered",
        "message_created_agent_assist_inbox"])
    incoming = load_payload("message_created_incoming")
    assert (incoming["event"], incoming["message_type"], incoming["conversation"]["status"]) == (
        "message_created", "incoming", "pending")
    image = load_payload("message_created_with_image")["attachments"][0]
    assert image["file_type"] == "image" and image["file_size"] > 0 and "/rails/active_storage/" in image["data_url"]
    assert load_payload("message_created_outgoing_agent")["sender"]["type"] == "user"
    note = load_payload("message_created_private_note")
    assert note["private"] is True and note["message_type"] == "outgoing"
    assert load_payload("message_created_bot_own")["sender"]["type"] == "agent_bot"
    assert load_payload("message_created_while_open")["conversation"]["status"] == "open"
    assert load_payload("message_updated")["event"] == "message_updated"
    changed = load_payload("conversation_status_changed_pending")
    assert changed["status"] == "pending" and changed["changed_attributes"][0]["status"]["current_value"] == "pending"
    assert load_payload("conversation_opened")["status"] == "open"
    assert load_payload("webwidget_triggered")["event_info"]["widget_language"]
    assert load_payload("message_created_agent_assist_inbox")["inbox"]["id"] == 2
    assert load_payload("message_created_incoming", content="x", conversation__status="open")["conversation"][
        "status"] == "open"


async def test_a_recorded_image_payload_made_live(env: tuple[FakeChatwoot, Receiver]) -> None:
    cw, receiver = env
    payload = cw.load_payload("message_created_with_image", files={501: PNG})
    (att,) = payload["attachments"]
    assert att["data_url"].startswith(cw.url) and att["file_size"] == len(PNG)
    async with httpx.AsyncClient(follow_redirects=True) as client:
        assert (await client.get(att["data_url"])).content == PNG
    await cw.deliver("message_created", payload)
    assert receiver.requests[-1]["payload"]["id"] == payload["id"]
    assert cw.status(payload["conversation"]["id"]) == "pending"
