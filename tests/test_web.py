"""The web chat's HTTP API and the service's operations endpoints, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.web import COOKIE, render_markdown
from bot.engines import EchoEngine
from bot.l10n.i18n import text
from bot.types import ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.contracts import FetcherContract, FileSource, Screen, SinkContract
from tests.live_server import exchange, live_server, open_session, post, sse_events, streams, subscribed


def metric(body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_a_message_streams_back_and_history_survives_a_reload(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.01)) as live, live.client() as client:
        await open_session(client)
        assert COOKIE in client.cookies
        response, events = await exchange(live, client, "why is my printer blinking?")
        assert response.status_code == 202
        chunks = [e["text"] for e in events if e["type"] in ("partial", "chunk")]
        assert events[[e["type"] for e in events].index("partial") + 1]["type"] == "chunk"  # the first text starts it
        assert len(chunks) > 3 and "".join(chunks) == "echo: why is my printer blinking?"
        assert events[-1]["type"] == "done" and events[-1]["html"] == "<p>echo: why is my printer blinking?</p>\n"

        history = (await client.get("/api/history")).json()["messages"]
        assert [(m["role"], m["text"]) for m in history] == [
            ("user", "why is my printer blinking?"), ("assistant", "echo: why is my printer blinking?")]
        # another browser has another conversation
        async with live.client() as other:
            await open_session(other)
            assert (await other.get("/api/history")).json()["messages"] == []


async def test_photo_upload_reaches_the_model_and_is_stored_once(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        photo = image_bytes(1200, 900)
        response, events = await exchange(live, client, "what is broken?", [("fridge.jpg", photo, "image/jpeg")])
        assert response.status_code == 202
        assert events[-1]["text"].startswith("[image 1: 1200x900,")
        history = (await client.get("/api/history")).json()["messages"]
        assert history[0]["attachments"] == ["fridge.jpg"]
        assert list(live.web.uploads.iterdir()) == []  # the upload is in the store now, not in uploads/
        key = ConversationKey.parse((await client.get("/api/session")).json()["conversation"])
        stored = await live.runtime.store.transcript(key)
        assert stored[0].attachments[0].sha256
        assert await live.runtime.store.attachment_data(stored[0].attachments[0].sha256) == photo


async def test_markup_from_users_and_the_model_is_text(tmp_path: Path) -> None:
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)> [x](javascript:alert(3))"
    html = render_markdown(payload)
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;" in html
    assert render_markdown("| a | b |\n|---|---|\n| 1 | 2 |").startswith("<table>")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        page = await client.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        await open_session(client)
        _, events = await exchange(live, client, payload)
        assert "<script" not in events[-1]["html"] and "&lt;script&gt;" in events[-1]["html"]


async def test_posts_need_the_session_and_the_custom_header(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        assert (await post(client, "hi")).status_code == 401  # no session cookie
        await open_session(client)
        forged = await client.post("/api/messages", data={"text": "hi"})  # a cross-site form cannot add headers
        assert forged.status_code == 403
        client.cookies.set(COOKIE, "tampered." + client.cookies[COOKIE])
        assert (await post(client, "hi")).status_code == 401
        assert live.runtime.metrics.messages_in.labels("web")._value.get() == 0


async def test_access_token_gates_the_page_and_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_WEB_ACCESS_TOKEN", "let-me-in")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        locked = await client.get("/")
        assert locked.status_code == 401 and "access token" in locked.text and "let-me-in" not in locked.text
        assert (await client.get("/?token=wrong")).status_code == 401
        opened = await client.get("/?token=let-me-in")
        assert opened.status_code == 303 and opened.headers["location"] == "/"
        assert (await client.get("/")).status_code == 200
        response, events = await exchange(live, client, "hello")
        assert response.status_code == 202 and events[-1]["text"] == "echo: hello"
        monkeypatch.setenv("INTERNVL_BOT_WEB_ACCESS_TOKEN", "rotated")
        assert (await client.get("/api/history")).status_code == 401  # a new token logs old cookies out


async def test_the_access_token_works_from_a_header_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy (or a script) can send the token as ``Authorization: Bearer``, keeping it out of URLs, which
    access logs record."""
    monkeypatch.setenv("INTERNVL_BOT_WEB_ACCESS_TOKEN", "let-me-in")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, \
            live.client(headers={"Authorization": "Bearer let-me-in"}) as client:
        assert (await client.get("/")).status_code == 200
        response, events = await exchange(live, client, "hello")
        assert response.status_code == 202 and events[-1]["text"] == "echo: hello"
    async with live_server(make_settings(tmp_path / "b"), EchoEngine()) as live, \
            live.client(headers={"Authorization": "Bearer wrong"}) as client:
        assert (await client.get("/")).status_code == 401


async def test_too_large_upload_gets_a_polite_answer_in_the_users_language(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, media={"max_file_bytes": 50_000})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        response = await post(client, "olha", [("big.jpg", b"\xff" * 60_000, "image/jpeg")],
                              **{"Accept-Language": "pt-BR,pt;q=0.9"})
        assert response.status_code == 413
        assert response.json()["error"].startswith("O arquivo")
        assert list(live.web.uploads.iterdir()) == []
        # the worker is fine: the next message is answered
        response, events = await exchange(live, client, "e agora?")
        assert events[-1]["text"] == "echo: e agora?"


async def test_a_refusal_speaks_the_language_the_user_writes_not_the_browsers(tmp_path: Path) -> None:
    """A browser in Portuguese, a user who writes English: the upload refused is told in English."""
    settings = make_settings(tmp_path, media={"max_file_bytes": 50_000})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "Can you help me with the pump?")
        assert events[-1]["text"] == "echo: Can you help me with the pump?"
        response = await post(client, "look", [("big.jpg", b"\xff" * 60_000, "image/jpeg")],
                              **{"Accept-Language": "pt-BR,pt;q=0.9"})
        assert response.status_code == 413
        assert response.json()["error"].startswith("The file"), response.json()


async def test_export_sends_a_file_the_browser_can_download(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        await exchange(live, client, "| item | total |\n|---|---|\n| pump | 12.50 |")
        _, events = await exchange(live, client, "/export csv", until="notice")
        file_event = next(e for e in events if e["type"] == "file")
        download = await client.get(file_event["url"])
        assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
        assert b"pump,12.50" in download.content
        async with live.client() as stranger:
            await open_session(stranger)
            assert (await stranger.get(file_event["url"])).status_code == 404


async def test_talk_to_a_human_and_operator_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "/human", until="notice")
        assert events[-1]["text"] == text("handoff_started", "en")
        session = (await client.get("/api/session")).json()
        assert session["mode"] == "human"
        key = session["conversation"]
        held = await post(client, "hello? my order is 1234")
        assert held.status_code == 202

        async with live.client() as op:
            url = f"/api/operator/conversations/{key}"
            assert (await op.post(f"{url}/reply", json={"text": "hi", "author": "Ana"})).status_code == 401
            auth = {"Authorization": "Bearer op-token"}
            before = streams(live)
            reader = asyncio.create_task(sse_events(client, until="notice"))
            await subscribed(live, before)
            reply = await op.post(f"{url}/reply", json={"text": "Hi, I am **Ana**.", "author": "Ana"}, headers=auth)
            assert reply.status_code == 200
            event = (await reader)[-1]
            assert (event["author"], event["html"]) == ("Ana", "<p>Hi, I am <strong>Ana</strong>.</p>\n")
            back = await op.post(f"{url}/return", json={"by": "Ana"}, headers=auth)
            assert back.json() == {"returned": True}
        assert (await client.get("/api/session")).json()["mode"] == "bot"
        history = (await client.get("/api/history")).json()["messages"]
        assert [(m["text"], m["state"]) for m in history if m["role"] == "user"][-1] == (
            "hello? my order is 1234", "held")
        assert history[-2]["author"] == "Ana"


async def test_health_readiness_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")  # someone to hand over to
    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.01)) as live, live.client() as client:
        assert (await client.get("/healthz")).text == "ok\n"
        assert (await client.get("/readyz")).json() == {"ready": True}
        before = (await client.get("/metrics")).text
        assert metric(before, "internvl_bot_messages_in_total", adapter="web") == 0
        await open_session(client)
        await exchange(live, client, "one")
        await exchange(live, client, "/human", until="notice")
        body = (await client.get("/metrics")).text
        assert metric(body, "internvl_bot_messages_in_total", adapter="web") == 2
        assert metric(body, "internvl_bot_messages_out_total", adapter="web", kind="answer") == 1
        assert metric(body, "internvl_bot_time_to_first_token_seconds_count", adapter="web") == 1
        assert metric(body, "internvl_bot_answer_seconds_count", adapter="web") == 1
        assert metric(body, "internvl_bot_handoffs_total", adapter="web") == 1
        assert "internvl_bot_queue_depth" in body

        live.service.stopping = True
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["problems"]["service"] == "shutting down"
        live.web.stop_intake()
        refused = await post(client, "still there?")
        assert refused.status_code == 503 and refused.json()["error"] == text("busy_restarting", "en")


async def test_readiness_fails_when_the_store_cannot_be_written(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        conn = live.runtime.store.db.conn  # type: ignore[union-attr]
        conn.execute("PRAGMA query_only = ON")
        try:
            response = await client.get("/readyz")
        finally:
            conn.execute("PRAGMA query_only = OFF")
        assert response.status_code == 503 and "store" in response.json()["problems"]


async def test_the_widget_script_and_embedding_policy(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, adapters={"web": {"embed_origins": ["https://help.example.com"]}})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        widget = await client.get("/widget.js")
        assert widget.status_code == 200 and widget.headers["content-type"].startswith("text/javascript")
        assert "iframe" in widget.text
        page = await client.get("/")
        assert "frame-ancestors 'self' https://help.example.com" in page.headers["content-security-policy"]
        cookie = page.headers["set-cookie"].lower()
        assert "samesite=none" in cookie and "secure" in cookie and "httponly" in cookie
        assert live.web.conf.embed_origins == ["https://help.example.com"]


async def test_with_the_web_chat_disabled_the_service_still_serves_operations(tmp_path: Path) -> None:
    from adapters.registry import ADAPTERS, served
    from adapters.server import Service, build_app
    from bot.runtime import Runtime

    settings = make_settings(tmp_path, adapters={"web": {"enabled": False}})
    assert "web" not in settings.enabled_adapters() and "web" in {spec.name for spec in ADAPTERS}
    async with Runtime(settings, engine=EchoEngine()) as runtime:
        assert served(runtime) == []
        service = Service(settings, runtime, [])
        service.ready = True
        transport = httpx.ASGITransport(app=build_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            assert (await client.get("/")).status_code == 404
            assert (await client.get("/healthz")).text == "ok\n"
            assert (await client.get("/readyz")).json() == {"ready": True}


# -- issue: core ready for platform adapters ------------------------------------------------


async def test_the_event_stream_needs_a_ticket_not_the_session_in_the_url(tmp_path: Path) -> None:
    from adapters.web import SESSION_HEADER

    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as browser:
        await open_session(browser)
        signed = browser.cookies[COOKIE]
        async with live.client() as widget:  # a frame whose third-party cookie is blocked
            assert (await widget.get("/api/events", params={"session": signed})).status_code == 401
            assert (await widget.post("/api/tickets", json={"purpose": "events"},
                                      headers={SESSION_HEADER: signed})).status_code == 403  # no CSRF header
            response = await widget.post("/api/tickets", json={"purpose": "events"},
                                         headers={SESSION_HEADER: signed, "X-InternVL-Bot": "1"})
            ticket = response.json()["ticket"]
            assert signed not in ticket
            async with widget.stream("GET", "/api/events", params={"ticket": ticket}) as stream:
                assert stream.status_code == 200
            # a ticket for the event stream does not open downloads, and a tampered one nothing
            assert (await widget.get(f"/api/files/{'0' * 32}", params={"ticket": ticket})).status_code == 401
            assert (await widget.get("/api/events", params={"ticket": ticket[:-2] + "xx"})).status_code == 401
            for bad in ({"purpose": "everything"}, {"purpose": "file", "file": "../x"}):
                assert (await widget.post("/api/tickets", json=bad, headers={
                    SESSION_HEADER: signed, "X-InternVL-Bot": "1"})).status_code == 400
            assert (await widget.post("/api/tickets", content=b"[", headers={
                SESSION_HEADER: signed, "X-InternVL-Bot": "1"})).status_code == 400


async def test_request_ids_are_per_browser_session(tmp_path: Path) -> None:
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as ana, \
            live.client() as bob:
        await open_session(ana)
        await open_session(bob)
        first = await post(ana, "hello", **{"X-Request-Id": "r-1"})
        again = await post(ana, "hello", **{"X-Request-Id": "r-1"})  # the same browser retried
        other = await post(bob, "hello", **{"X-Request-Id": "r-1"})  # another browser, same id
        assert (first.status_code, other.status_code, again.status_code) == (202, 202, 200)
        # the retry learns which message its first attempt stored
        assert again.json() == {"duplicate": True, "id": first.json()["id"]} != {"duplicate": True, "id": other.json()["id"]}


async def test_a_failure_mid_answer_leaves_no_stale_partial(tmp_path: Path) -> None:
    from tests.conftest import GatedEngine

    engine = GatedEngine()
    engine.fail_after["explode"] = 2
    async with live_server(make_settings(tmp_path), engine) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "please explode now", until="notice")
        done = next(e for e in events if e["type"] == "done")
        assert done["outcome"] == "failed" and done["text"] == "echo: please"
        assert events[-1]["kind"] == "error"
        history = (await client.get("/api/history")).json()
        assert history["partial"] == ""  # a reload does not replay the broken answer as if it streamed on


async def test_answers_that_never_finish_do_not_grow_memory(tmp_path: Path) -> None:
    """Partial answers whose replica died (no "done" ever comes) and no page watches are bounded; a session
    with an open page is never dropped, and a stopped turn leaves no partial behind."""
    from adapters.web.adapter import WebAdapter
    from adapters.web.sessions import MAX_IDLE_SESSIONS
    from bot.conversation.manager import ConversationManager
    from bot.store import MemoryStore

    settings = make_settings(tmp_path)
    web = WebAdapter(ConversationManager(settings, MemoryStore(), EchoEngine()), settings)
    watched: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    web.sessions.get("open-page").streams.add(watched)
    web.sessions.apply({"sid": "open-page", "event": {"type": "chunk", "text": "half"}})
    for i in range(MAX_IDLE_SESSIONS + 50):
        web.sessions.apply({"sid": f"gone-{i}", "event": {"type": "chunk", "text": "an answer that never ends"}})
    assert len(web.sessions.live) <= MAX_IDLE_SESSIONS + 1
    assert "open-page" in web.sessions.live and f"gone-{MAX_IDLE_SESSIONS + 49}" in web.sessions.live
    web.sessions.apply({"sid": "stopped", "event": {"type": "chunk", "text": "x"}})
    web.sessions.apply({"sid": "stopped", "event": {"type": "stopped"}})
    assert "stopped" not in web.sessions.live


class TestWebSink(SinkContract):
    @pytest.fixture
    def screen(self, tmp_path: Path) -> Screen:
        from adapters.web.adapter import WebAdapter
        from bot.conversation.manager import ConversationManager
        from bot.store import MemoryStore

        settings = make_settings(tmp_path)
        web = WebAdapter(ConversationManager(settings, MemoryStore(), EchoEngine()), settings)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        web.sessions.get("c1").streams.add(queue)
        seen: list[dict[str, Any]] = []

        def drain() -> None:
            while not queue.empty():
                event = queue.get_nowait()
                if event is not None:
                    seen.append(event)

        async def visible() -> list[str]:
            drain()
            return [e["text"] for e in seen if e["type"] in ("done", "notice")]

        async def files() -> list[str]:
            drain()
            return [e["name"] for e in seen if e["type"] == "file"]

        return Screen(lambda context: web._sink_for(context), visible, files)


class TestStoredFiles(FetcherContract):
    """Uploads (web chat, the helpdesk API's inline files) are kept in the store before the message is."""

    @pytest.fixture
    def files(self, tmp_path: Path) -> FileSource:
        from adapters.common.http import StoredFiles
        from bot.store import SQLiteStore
        from bot.types import Attachment

        store = SQLiteStore(tmp_path / "bot.sqlite3")
        fetcher = StoredFiles(store)

        async def add(data: bytes, name: str) -> tuple[StoredFiles, Attachment]:
            await store.open()
            return fetcher, Attachment(ref=StoredFiles.ref(await store.save_blob(data)), filename=name)

        async def missing() -> tuple[StoredFiles, Attachment]:
            await store.open()
            return fetcher, Attachment(ref="blob:../../etc/passwd", filename="passwd")

        return FileSource(add, missing)


@pytest.mark.parametrize("body", [b"", b"[]", b'"x"', b"null", b"not json", b"\xff\xfe\x00", b"[" * 5000, b"{"])
async def test_operator_api_answers_400_to_any_malformed_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             body: bytes) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as op:
        for action in ("reply", "take"):
            response = await op.post(f"/api/operator/conversations/web:abc/{action}", content=body,
                                     headers={"Authorization": "Bearer op-token", "Content-Type": "application/json"})
            assert response.status_code == 400, (action, response.text)
            assert response.json()["error"]
        bad_key = await op.post("/api/operator/conversations/nokey/reply", json={"text": "t", "author": "a"},
                                headers={"Authorization": "Bearer op-token"})
        assert bad_key.status_code == 400


async def test_operators_take_over_and_the_user_sees_who(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as client:
        await open_session(client)
        await exchange(live, client, "my order 1234 is late")
        key = (await client.get("/api/session")).json()["conversation"]
        async with live.client() as op:
            auth = {"Authorization": "Bearer op-token"}
            before = streams(live)
            reader = asyncio.create_task(sse_events(client, until="notice"))
            await subscribed(live, before)
            taken = await op.post(f"/api/operator/conversations/{key}/take", json={"by": "Ana"}, headers=auth)
            assert taken.json() == {"taken": True}
            event = (await reader)[-1]
            assert (event["handoff"], event["mode"]) == ("taken", "human") and "Ana" in event["text"]
        assert (await client.get("/api/session")).json()["mode"] == "human"


async def test_refused_uploads_say_what_was_wrong(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, media={"max_file_bytes": 200_000}, adapters={"web": {"max_files_per_message": 3}})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        many = await post(client, "look", [(f"p{i}.jpg", b"\xff\xd8\xff" + b"x" * 10, "image/jpeg") for i in range(5)])
        assert many.status_code == 413
        assert many.json()["error"].startswith("You sent 5 files; I can take up to 3 in one message.")
        for size, shown in ((260_000, "0.3"), (390_000, "0.4")):
            big = await post(client, "look", [("big.jpg", b"\xff" * size, "image/jpeg")])
            assert big.status_code == 413
            assert big.json()["error"] == f"The file “big.jpg” is too large ({shown} MB; the limit is 0.2 MB)."
        broken = await client.post("/api/messages", content=b"--xyz\r\nContent-Disposition: form-data; name=\"te",
                                   headers={"X-InternVL-Bot": "1",
                                            "Content-Type": "multipart/form-data; boundary=xyz"})
        assert broken.status_code == 400 and "did not arrive complete" in broken.json()["error"]

        as_file = await client.post("/api/messages", files=[("text", ("t.txt", b"hello", "text/plain"))],
                                    headers={"X-InternVL-Bot": "1"})
        assert as_file.status_code == 400
        # text that is not UTF-8 is refused with a clear answer, never shown as Latin-1 garbage
        latin = b"--xyz\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\ncaf\xe9 cr\xe8me\r\n--xyz--\r\n"
        for body, ctype in ((latin, "multipart/form-data; boundary=xyz"),
                            (b"text=caf%E9", "application/x-www-form-urlencoded")):
            bad = await client.post("/api/messages", content=body, headers={"X-InternVL-Bot": "1",
                                                                               "Content-Type": ctype})
            assert bad.status_code == 400 and bad.json()["error"] == text("text_not_utf8", "en")
        good = await client.post("/api/messages", content="text=caf%C3%A9", headers={
            "X-InternVL-Bot": "1", "Content-Type": "application/x-www-form-urlencoded"})
        assert good.status_code == 202
        await live.runtime.manager.idle()  # type: ignore[union-attr]
        assert (await client.get("/api/history")).json()["messages"][0]["text"] == "café"
        assert list(live.web.uploads.iterdir()) == []
        h2 = (await client.get("/api/history")).json()
        assert len([m for m in h2["messages"] if m["role"] == "user"]) == 1, h2


async def test_a_text_far_too_long_is_told_the_limit_not_a_broken_upload(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    limit = settings.conversation.max_message_chars
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        said = (f"Your message is too long for me: at most {limit} characters. Please send the part you need help "
                "with.")
        long = await post(client, "x" * 2_000_000)  # URL-encoded
        assert (long.status_code, long.json()["error"]) == (413, said)
        # multipart, as the page sends it
        long = await client.post("/api/messages", files=[("text", (None, "x" * 2_000_000))],
                                 headers={"X-InternVL-Bot": "1"})
        assert (long.status_code, long.json()["error"]) == (413, said)
        over = await post(client, "y" * (limit + 1))  # within what the form reads: the core counts it
        assert over.status_code == 202
