"""The operator inbox's API on the real server: who is waiting and for how long, transcripts with images, live
updates, replies that reach the user's page, take-over and give-back, and every bad body a 400. Plus a fuzz of
every route of the served OpenAPI schema: 0 × 5xx over 2,000+ requests."""

from __future__ import annotations

import asyncio
import json
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.web import CSRF_HEADER
from bot.engines import EchoEngine
from bot.l10n.i18n import text
from bot.seams import Notifier
from bot.store import NewMessage
from bot.types import ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.contracts import Desk, NotifierContract
from tests.live_server import exchange, live_server, open_session, post, sse_events, streams, subscribed

TOKEN = "op-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def operator_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", TOKEN)
    return TOKEN


async def _events(client: httpx.AsyncClient, ticket: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
    async with client.stream("GET", f"/api/operator/events?ticket={ticket}") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                queue.put_nowait(json.loads(line[6:]))


async def test_the_inbox_lists_who_waits_and_the_operator_answers_into_the_users_page(
        tmp_path: Path, operator_token: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as user, \
            live.client(headers=AUTH) as op:
        # the operator's live updates
        ticket = (await op.post("/api/operator/tickets")).json()["ticket"]
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listening = asyncio.create_task(_events(op, ticket, updates))
        try:
            await open_session(user)
            await exchange(live, user, "my kettle is broken")
            photo = ("kettle.png", image_bytes(320, 240, fmt="PNG"), "image/png")
            _, events = await exchange(live, user, "/human", until="notice")
            assert events[-1]["text"] == text("handoff_started", "en")
            update = await asyncio.wait_for(updates.get(), 10)
            assert update["type"] == "handoff" and update["kind"] == "requested"
            key = update["conversation"]

            assert (await post(user, "here is a photo", files=[photo])).status_code == 202
            held = await asyncio.wait_for(updates.get(), 10)
            assert held["kind"] == "message" and held["conversation"] == key

            listing = (await op.get("/api/operator/conversations")).json()
            [waiting] = listing["waiting"]
            assert waiting["key"] == key and waiting["waited_s"] >= 0 and waiting["last_text"] == "here is a photo"
            assert all(c["key"] != key for c in listing["active"])

            transcript = (await op.get(f"/api/operator/conversations/{key}/messages")).json()
            assert transcript["mode"] == "human"
            texts = [m["text"] for m in transcript["messages"]]
            assert texts[:3] == ["my kettle is broken", "echo: my kettle is broken", "/human"]
            [shown] = [m for m in transcript["messages"] if m["text"] == "here is a photo"]
            sha = shown["files"][0]["sha256"]
            image = await op.get(f"/api/operator/files/{sha}?ticket={ticket}")
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert image.headers["x-content-type-options"] == "nosniff"
            assert (await user.get(f"/api/operator/files/{sha}")).status_code == 401
            assert (await op.get(f"/api/operator/files/{'0' * 64}?ticket={ticket}")).status_code == 404
            assert (await op.get(f"/api/operator/files/nothex?ticket={ticket}")).status_code == 400

            # the operator's answer reaches the user's page, with the operator's name
            async with user.stream("GET", "/api/events") as stream:
                reply = await op.post(f"/api/operator/conversations/{key}/reply",
                                      json={"text": "Hi, Marta here. A new kettle is on its way.", "author": "Marta"})
                assert reply.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        assert event["type"] == "notice" and event["author"] == "Marta"
                        assert event["text"] == "Hi, Marta here. A new kettle is on its way."
                        break
            back = await op.post(f"/api/operator/conversations/{key}/return", json={"by": "Marta"})
            assert back.json() == {"returned": True}
            assert (await op.get("/api/operator/conversations")).json()["waiting"] == []
        finally:
            listening.cancel()


async def test_take_over_a_conversation_the_assistant_handles(tmp_path: Path, operator_token: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as user, \
            live.client(headers=AUTH) as op:
        await open_session(user)
        await exchange(live, user, "hello")
        [active] = (await op.get("/api/operator/conversations")).json()["active"]
        taken = await op.post(f"/api/operator/conversations/{active['key']}/take", json={"by": "Marta"})
        assert taken.json() == {"taken": True}
        listing = (await op.get("/api/operator/conversations")).json()
        # taken: Marta has it (her section of the inbox), and the user is not waiting for an answer
        assert listing["waiting"] == [] and listing["active"] == []
        [taken_conv] = listing["in_progress"]
        assert (taken_conv["key"], taken_conv["operator"], taken_conv["waiting_since"]) == (active["key"], "Marta", None)
        history = (await user.get("/api/history")).json()["messages"]
        assert history[-1]["text"] == text("handoff_taken", "en", name="Marta")


async def test_answered_conversations_are_a_persons_and_the_wait_counts_from_the_users_newest_message(
        tmp_path: Path, operator_token: str) -> None:
    """Waiting for a person until someone answers; then in that person's section. The wait shown is the user's:
    since their newest message, when no person has answered it — not since the handoff."""
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as user, \
            live.client() as other, live.client(headers=AUTH) as op:
        await open_session(user)
        await exchange(live, user, "my kettle leaks")
        await exchange(live, user, "I want to talk to a person", until="notice")
        [waiting] = (await op.get("/api/operator/conversations")).json()["waiting"]
        key = waiting["key"]
        assert (waiting["platform"], waiting["number"], waiting["operator"], waiting["served"]) == ("web", 1, "", True)
        assert waiting["waiting_since"] == waiting["last_at"] and waiting["last_text"] == "I want to talk to a person"

        assert (await op.post(f"/api/operator/conversations/{key}/reply",
                              json={"text": "Hi, Marta here.", "author": "Marta"})).status_code == 200
        listing = (await op.get("/api/operator/conversations")).json()
        assert listing["waiting"] == []
        [mine] = listing["in_progress"]
        assert (mine["key"], mine["operator"], mine["waiting_since"], mine["waited_s"]) == (key, "Marta", None, None)
        assert mine["operator_at"] >= mine["handoff_at"]

        # the user writes again: waiting since that message (still Marta's), not since the handoff
        assert (await post(user, "a new one, or a repair?")).status_code == 202
        [mine] = (await op.get("/api/operator/conversations")).json()["in_progress"]
        assert mine["last_text"] == "a new one, or a repair?"
        assert mine["waiting_since"] == mine["last_at"] > mine["operator_at"] >= mine["handoff_at"]
        transcript = (await op.get(f"/api/operator/conversations/{key}/messages")).json()
        assert (transcript["operator"], transcript["number"], transcript["served"]) == ("Marta", 1, True)

        # another visitor is Visitor 2, and stays so
        await open_session(other)
        await exchange(live, other, "hello")
        for _ in range(2):
            [active] = (await op.get("/api/operator/conversations")).json()["active"]
            assert (active["platform"], active["number"]) == ("web", 2)

        # given back, then asked for again: waiting for a person once more (Marta answered an earlier handoff)
        await op.post(f"/api/operator/conversations/{key}/return", json={"by": "Marta"})
        await exchange(live, user, "/human", until="notice")
        listing = (await op.get("/api/operator/conversations")).json()
        assert [c["key"] for c in listing["waiting"]] == [key] and listing["in_progress"] == []


async def test_conversations_of_a_platform_not_served_here_are_read_only(tmp_path: Path, operator_token: str) -> None:
    """Telegram was enabled once and is not now: its conversations can be read in the inbox; answering, taking or
    giving one back is refused (409) before anything changes — nothing could reach the user."""
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client(headers=AUTH) as op:
        store = live.runtime.manager.store
        key = ConversationKey("telegram", "444")
        await store.add_incoming(key, NewMessage(role="user", text="is anyone there?", state="held", sender_id="444",
                                                 sender_name="Joana Prado (@joana_p)", event_id="u-1"))
        await store.update_conversation(key, name="Joana Prado (@joana_p)", mode="human", handoff_at=time.time())
        [waiting] = (await op.get("/api/operator/conversations")).json()["waiting"]
        assert (waiting["key"], waiting["name"], waiting["served"]) == ("telegram:444", "Joana Prado (@joana_p)", False)
        transcript = (await op.get("/api/operator/conversations/telegram:444/messages")).json()
        assert transcript["served"] is False and [m["text"] for m in transcript["messages"]] == ["is anyone there?"]
        for route, body in (("reply", {"text": "hi", "author": "Marta"}), ("take", {"by": "Marta"}),
                            ("return", {"by": "Marta"})):
            refused = await op.post(f"/api/operator/conversations/telegram:444/{route}", json=body)
            assert refused.status_code == 409, (route, refused.text)
            assert "not served" in refused.json()["error"]
        assert [m.text for m in await store.transcript(key)] == ["is anyone there?"]
        assert (await store.conversation(key)).mode == "human"


BAD_BODIES = [b"[]", b'"x"', b"null", b"", b"{", b"\xff\xfe\x00", b"[" * 5000, b"{}", b'{"text": 1, "author": []}']


async def test_bad_bodies_and_tokens(tmp_path: Path, operator_token: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client(headers=AUTH) as op:
        for route in ("reply", "take"):
            for body in BAD_BODIES:
                response = await op.post(f"/api/operator/conversations/web:s1/{route}", content=body,
                                         headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (route, body[:20], response.text)
                assert response.json()["error"]
        assert (await op.post("/api/operator/conversations/nokey/reply", json={"text": "a", "author": "b"})
                ).status_code == 400
        async with live.client() as anonymous:
            assert (await anonymous.get("/api/operator/conversations")).status_code == 401
            wrong = await anonymous.get("/api/operator/conversations", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert (await anonymous.get("/api/operator/events?ticket=forged")).status_code == 401
            page = await anonymous.get("/operator")
            assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_without_a_token_there_is_no_inbox_and_nobody_to_hand_over_to(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERNVL_BOT_OPERATOR_TOKEN", raising=False)
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as user:
        assert live.service.inbox is None
        assert (await user.get("/api/operator/conversations", headers=AUTH)).status_code == 404
        await open_session(user)
        _, events = await exchange(live, user, "/human", until="notice")
        assert events[-1]["text"] == text("handoff_unavailable", "en")
        assert (await user.get("/api/session")).json()["mode"] == "bot"


async def test_every_response_says_nosniff(tmp_path: Path, operator_token: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/api/session", "/static/chat.js",
                     "/operator", "/operator/static/operator.js", "/no/such/page"):
            response = await client.get(path)
            assert response.headers.get("x-content-type-options") == "nosniff", path


# -- the quality view ------------------------------------------------------------------------------------------

WEB_HEADERS = {"X-InternVL-Bot": "1"}


async def _rate(user: httpx.AsyncClient, question: int, rating: str) -> None:
    """A thumb pressed on the web chat's answer to ``question`` (the page's own request)."""
    pressed = await user.post("/api/feedback", json={"question": question, "rating": rating}, headers=WEB_HEADERS)
    assert pressed.json() == {"recorded": True}


async def test_the_quality_view_lists_rated_answers_with_their_question_and_counts_them_per_day(
        tmp_path: Path, operator_token: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as user, \
            live.client(headers=AUTH) as op:
        manager = live.runtime.manager
        assert manager is not None
        store = manager.store
        await open_session(user)
        _, events = await exchange(live, user, "where is the reset button?")
        key = (await store.message(events[-1]["reply_to"])).key
        [first] = [m for m in await store.transcript(key) if m.role == "assistant"]
        # yesterday, an agent corrected that answer (the store's clock set back a day: a real day boundary)
        now = time.time()
        yesterday = now - 86400
        real_clock = store._clock  # type: ignore[attr-defined]
        store._clock = lambda: yesterday  # type: ignore[attr-defined]
        try:
            assert await manager.feedback.record(first, "edited", value="Hold the button for 5 s.") is not None
        finally:
            store._clock = real_clock  # type: ignore[attr-defined]

        photo = ("valve.png", image_bytes(64, 48, fmt="PNG"), "image/png")
        _, events = await exchange(live, user, "is this valve broken?", files=[photo])
        valve = events[-1]["reply_to"]
        # the page, open, asks what was wrong: the user's next message is the comment
        before = streams(live)
        asked = asyncio.create_task(sse_events(user, until="notice"))
        await subscribed(live, before)
        await _rate(user, valve, "down")
        await asyncio.wait_for(asked, 10)
        await exchange(live, user, "it named the wrong valve", until="notice")
        _, events = await exchange(live, user, "which fuse?")
        await _rate(user, events[-1]["reply_to"], "down")
        await exchange(live, user, "not that fuse", until="notice")  # (this 👎 asked too)
        _, events = await exchange(live, user, "thanks, and the filter?")
        await _rate(user, events[-1]["reply_to"], "up")
        await exchange(live, user, "/human", until="notice")  # right after an answer: handoff_after_answer

        assert (await user.get("/api/operator/quality/items")).status_code == 401
        assert (await user.get("/api/operator/quality/daily")).status_code == 401
        items = (await op.get("/api/operator/quality/items")).json()["items"]
        assert [(i["kind"], i["question"]["text"]) for i in items] == [
            ("down", "which fuse?"), ("down", "is this valve broken?"), ("edited", "where is the reset button?")]
        rated = items[1]
        assert rated["comment"] == "it named the wrong valve" and rated["platform"] == "web"
        assert rated["answer"]["text"].endswith("echo: is this valve broken?")  # the echo engine lists the image
        assert rated["persona"] == live.runtime.settings.conversation.default_persona
        assert [(m["role"], m["text"]) for m in rated["earlier"]] == [
            ("user", "where is the reset button?"), ("assistant", "echo: where is the reset button?")]
        [image] = rated["question"]["files"]
        ticket = (await op.post("/api/operator/tickets")).json()["ticket"]
        thumb = await op.get(f"/api/operator/files/{image['sha256']}?ticket={ticket}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        assert items[2]["value"] == "Hold the button for 5 s." and items[2]["earlier"] == []

        # filters: dates (UTC days, both ends included), platform, persona, limit
        today, before = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (now, yesterday))

        async def kinds(query: str) -> list[str]:
            response = await op.get("/api/operator/quality/items?" + query)
            assert response.status_code == 200, response.text
            return [i["kind"] for i in response.json()["items"]]

        assert await kinds(f"since={today}") == ["down", "down"]
        assert await kinds(f"since={before}&until={before}") == ["edited"]
        assert await kinds("platform=web&limit=1") == ["down"]
        assert await kinds("platform=telegram") == []
        assert await kinds("persona=nobody") == []

        daily = (await op.get("/api/operator/quality/daily?days=3")).json()
        assert daily["series"] == ["up", "down", "corrected", "handoff_after_answer"]
        assert [d["day"] for d in daily["days"]][1:] == [before, today]
        assert daily["days"][1:] == [
            {"day": before, "up": 0, "down": 0, "corrected": 1, "handoff_after_answer": 0},
            {"day": today, "up": 1, "down": 2, "corrected": 0, "handoff_after_answer": 1}]
        assert daily["days"][0]["up"] == daily["days"][0]["down"] == 0
        only_web = (await op.get("/api/operator/quality/daily?days=1&platform=web")).json()["days"]
        assert only_web == [daily["days"][-1]]
        assert (await op.get("/api/operator/quality/daily?persona=nobody")).json()["days"][-1]["down"] == 0
        assert len((await op.get("/api/operator/quality/daily")).json()["days"]) == 30


@pytest.mark.parametrize("query", [
    "items?since=2024-13-01", "items?since=yesterday", "items?until=2024-02-30", "items?since=20240101",
    "items?since=2024-03-02&until=2024-03-01", "items?limit=0", "items?limit=201", "items?limit=ten",
    "items?limit=%C2%B2", "items?persona=a%20b", "items?platform=" + "w" * 101, "daily?days=0", "daily?days=367",
    "daily?days=-1", "daily?platform=%00"])
async def test_the_quality_view_refuses_bad_queries(tmp_path: Path, operator_token: str, query: str) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client(headers=AUTH) as op:
        response = await op.get("/api/operator/quality/" + query)
        assert response.status_code == 400, (query, response.text)


# -- fuzzing every route of the served schema ------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                 max_size=4), max_leaves=10)
_param = st.sampled_from(["web:s1", "telegram:1:2", "x", "", "%00", "a" * 300, "web:%2e%2e", "0" * 64]) | st.text(
    alphabet=string.ascii_letters + string.digits + ":-_.%", max_size=20)
_bodies = st.one_of(_json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                    st.sampled_from(BAD_BODIES),
                    st.fixed_dictionaries({"text": _json | st.text(max_size=50), "author": _json | st.text(max_size=20),
                                           "by": _json | st.text(max_size=20)}).map(lambda v: json.dumps(v).encode()))


@pytest.fixture
async def served(tmp_path: Path, operator_token: str) \
        -> AsyncIterator[tuple[httpx.AsyncClient, list[tuple[str, str]], list[int]]]:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)  # a browser session: the web chat's routes get past the cookie check
        schema = (await client.get("/openapi.json")).json()
        routes = [(method.upper(), path) for path, item in schema["paths"].items() for method in item
                  if not path.startswith("/api/helpdesk/") and path not in ("/api/operator/events", "/api/events")]
        assert len(routes) >= 12, routes
        statuses: list[int] = []
        yield client, routes, statuses
        assert len(statuses) >= 2000
        assert [s for s in statuses if s >= 500] == []


@settings(max_examples=2100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
async def test_fuzzed_requests_to_the_web_and_operator_apis_never_get_a_5xx(
        served: tuple[httpx.AsyncClient, list[tuple[str, str]], list[int]], data: st.DataObject) -> None:
    client, routes, statuses = served
    method, path = data.draw(st.sampled_from(routes))
    for name in ("key", "fid", "sha256"):
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", data.draw(_param))
    headers = {"Content-Type": data.draw(st.sampled_from(["application/json", "multipart/form-data; boundary=x",
                                                          "text/plain", ""]))}
    if data.draw(st.booleans()):
        headers["Authorization"] = f"Bearer {TOKEN}"
    if data.draw(st.booleans()):
        headers[CSRF_HEADER] = "1"  # the web chat's CSRF header
    query = data.draw(st.sampled_from(["", "?ticket=x", "?after=-1", "?ticket=" + "a" * 500]))
    body = data.draw(_bodies) if method == "POST" else None
    try:
        response = await client.request(method, path + query, content=body, headers=headers)
    except httpx.InvalidURL:
        return
    assert response.status_code < 500, (method, path, body, response.text[:300])
    statuses.append(response.status_code)


class TestOperatorInbox(NotifierContract):
    """Handoff events reach the operators' open inbox pages (its live event stream), in order."""

    @pytest.fixture
    async def desk(self, tmp_path: Path, operator_token: str) -> AsyncIterator[Desk]:
        async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client(headers=AUTH) as op:
            inbox = live.service.inbox
            assert inbox is not None
            ticket = (await op.post("/api/operator/tickets")).json()["ticket"]
            updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            listening = asyncio.create_task(_events(op, ticket, updates))
            while not inbox._streams:  # the page is connected
                await asyncio.sleep(0.01)
            seen: list[str] = []

            async def received() -> list[str]:
                marker = {"type": "marker", "n": len(seen)}
                await inbox.bus.publish(marker)  # the stream keeps order: what came before it has arrived
                while (event := await asyncio.wait_for(updates.get(), 10)) != marker:
                    if event.get("type") == "handoff":
                        seen.append(event["kind"])
                return seen

            async def broken() -> Notifier:
                class Away:  # the database passing events between replicas
                    async def notify(self, channel: str, payloads: Any) -> None:
                        raise ConnectionError("the database went away")

                    def listen(self, *args: Any, **kwargs: Any) -> None:
                        return None

                from adapters.operator import OperatorInbox

                other = OperatorInbox(live.runtime.manager, live.runtime.settings)  # type: ignore[arg-type]
                other.bus._store, other.bus.shared = Away(), True
                return other

            try:
                yield Desk(inbox, received, broken)
            finally:
                listening.cancel()
