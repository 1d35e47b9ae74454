"""The generic helpdesk API through the real server on 127.0.0.1: signed requests, answers by signed callback
(to a real receiver that can fail) and by polling, attachments by URL (from allowed hosts only, redirects
checked) and inline, handoff and agent-assist, the OpenAPI schema, and schema-driven fuzzing: 0 × 5xx."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from adapters.common.http import StoredFiles
from adapters.helpdesk_api import (
    DELIVERY_HEADER,
    PREFIX,
    ApiFetcher,
    ApiMessage,
    CallbackSink,
    HelpdeskApiAdapter,
    _inline_schema,
    host_allowed,
    verify_callback,
)
from adapters.server import Service, build_app
from bot.conversation.manager import ConversationManager
from bot.conversation.outbox import BUCKET as OUTBOX
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.handoff.notifiers import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from bot.l10n.i18n import text as t
from bot.runtime import Runtime
from bot.store import MemoryStore, Store
from bot.types import Attachment, ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.contracts import Chat, FetcherContract, FileSource, PlatformContract, Screen, SinkContract
from tests.fakes.serving import serve_asgi

SECRET = "api-secret-0123456789"


@dataclass
class Receiver:
    """The other helpdesk: receives callbacks (``fail`` answers the next ones with 500; ``down`` all with 503)
    and serves files (a photo, and ``blobs`` by name under ``/blobs/``)."""

    url: str = ""
    callbacks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    fail: int = 0
    down: bool = False
    blobs: dict[str, bytes] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def payloads(self) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out = []
        for headers, body in self.callbacks:
            if headers.get("status") == "200" and headers[DELIVERY_HEADER.lower()] not in seen:
                seen.add(headers[DELIVERY_HEADER.lower()])
                out.append(json.loads(body))
        return out

    async def wait_for(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while len(self.payloads()) < count:
            self.arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.payloads())} callbacks of {count}: {self.payloads()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.payloads()


def receiver_app(receiver: Receiver, image: bytes) -> Starlette:
    async def callback(request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status = 503 if receiver.down else 500 if receiver.fail > 0 else 200
        receiver.fail -= 1
        headers["status"] = str(status)
        receiver.callbacks.append((headers, body))
        receiver.arrived.set()
        return Response(status_code=status)

    async def photo(request: Request) -> Response:
        receiver.downloads.append(request.url.path)
        return Response(image, media_type="image/png")

    async def moved(request: Request) -> Response:
        receiver.downloads.append(request.url.path)
        return RedirectResponse(f"{receiver.url}/files/photo.png", status_code=302)

    async def metadata(request: Request) -> Response:
        receiver.downloads.append(request.url.path)
        return RedirectResponse("http://169.254.169.254/latest/meta-data/iam/security-credentials/", status_code=302)

    async def elsewhere(request: Request) -> Response:
        return RedirectResponse(receiver.url.replace("127.0.0.1", "localhost") + "/files/photo.png", status_code=302)

    async def blob(request: Request) -> Response:
        data = receiver.blobs.get(request.path_params["name"])
        return Response(data) if data is not None else Response(status_code=404)

    return Starlette(routes=[Route("/callback", callback, methods=["POST"]), Route("/files/photo.png", photo),
                             Route("/files/moved", moved), Route("/files/elsewhere", elsewhere),
                             Route("/files/metadata", metadata), Route("/blobs/{name}", blob)])


@dataclass
class Harness:
    url: str
    runtime: Runtime
    adapter: HelpdeskApiAdapter
    receiver: Receiver
    client: httpx.AsyncClient
    counter: int = 0

    async def post(self, path: str, payload: Any, *, secret: str = SECRET, timestamp: float | None = None,
                   raw: bytes | None = None, signed: bool = True) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            ts = str(int(timestamp if timestamp is not None else time.time()))
            headers |= {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret.encode(), ts, body)}
        return await self.client.post(path, content=body, headers=headers)

    async def get(self, target: str, *, signed_target: str | None = None) -> httpx.Response:
        ts = str(int(time.time()))
        signature = sign(SECRET.encode(), ts, (signed_target or target).encode())
        return await self.client.get(target, headers={TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: signature})

    async def message(self, conversation: str, text: str, **extra: Any) -> httpx.Response:
        self.counter += 1
        payload = {"conversation_id": conversation, "message_id": extra.pop("message_id", f"m{self.counter}"),
                   "text": text, "customer": {"id": "cust-1", "name": "Ana"}, **extra}
        return await self.post(f"{PREFIX}/messages", payload)

    async def poll(self, conversation: str, after: int = 0) -> dict[str, Any]:
        response = await self.get(f"{PREFIX}/conversations/{conversation}/messages?after={after}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def idle(self) -> None:
        assert self.runtime.manager is not None
        await asyncio.wait_for(self.runtime.manager.idle(), 15)


@contextlib.asynccontextmanager
async def receiving(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Receiver]:
    """The other helpdesk's side, served; the secret in the environment."""
    receiver = Receiver()
    async with serve_asgi(receiver_app(receiver, image_bytes(640, 480, fmt="PNG"))) as receiver.url:
        monkeypatch.setenv("HELPDESK_API_SECRET", SECRET)
        yield receiver


@contextlib.asynccontextmanager
async def api_bot(tmp_path: Path, receiver: Receiver, *, callback: bool = True, engine: EchoEngine | None = None,
                  settings: dict[str, Any] | None = None, **conf: Any) -> AsyncIterator[Harness]:
    """The bot's side: a Runtime (its store under ``tmp_path``: the next one finds it), the adapter and the
    framework's server; stopped as ``serve`` stops it."""
    section = {"enabled": True, "attachment_hosts": ["127.0.0.1"],
               "allow_private_networks": ["127.0.0.0/8", "::1/128"], **conf}
    if callback:
        section["callback_url"] = f"{receiver.url}/callback"
    built = make_settings(tmp_path, adapters={"helpdesk_api": section}, **(settings or {}))
    async with Runtime(built, engine=engine or EchoEngine(delay=0.001)) as runtime:
        assert runtime.manager is not None
        adapter = HelpdeskApiAdapter(runtime.manager, runtime.settings,
                                     built.adapters.helpdesk_api)  # type: ignore[attr-defined]
        adapter.backoff = 0.05
        service = Service(runtime.settings, runtime, [adapter])
        service.ready = True
        async with serve_asgi(build_app(service)) as url:
            await runtime.manager.start()
            await adapter.start()
            async with httpx.AsyncClient(base_url=url, timeout=15) as client:
                try:
                    yield Harness(url, runtime, adapter, receiver, client)
                finally:
                    adapter.stop_intake()
                    await runtime.manager.stop(2)
                    await adapter.close()


@contextlib.asynccontextmanager
async def helpdesk_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, callback: bool = True,
                       **conf: Any) -> AsyncIterator[Harness]:
    async with receiving(monkeypatch) as receiver, api_bot(tmp_path, receiver, callback=callback, **conf) as h:
        yield h


async def test_a_message_is_answered_by_callback_and_by_polling_once(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        first = await h.message("T-100", "The pump makes a noise", message_id="c-1")
        assert first.status_code == 202 and first.json() == {"conversation_id": "T-100", "message_id": "c-1",
                                                             "duplicate": False, "held": False}
        [answer] = await h.receiver.wait_for(1)
        assert answer["type"] == "answer" and answer["text"] == "echo: The pump makes a noise"
        assert answer["in_reply_to"] == "c-1" and answer["conversation_id"] == "T-100" and not answer["private"]
        headers, body = h.receiver.callbacks[0]
        assert verify_callback(SECRET, headers, body) and headers[DELIVERY_HEADER.lower()] == answer["id"]
        # the helpdesk retries its POST (it never saw our 202): the same message, answered once
        again = await h.message("T-100", "The pump makes a noise", message_id="c-1")
        assert again.status_code == 202 and again.json()["duplicate"] is True
        await h.idle()
        polled = await h.poll("T-100")
        assert [(r["text"], r["in_reply_to"], r["type"]) for r in polled["replies"]] == [
            ("echo: The pump makes a noise", "c-1", "answer")]
        assert polled["mode"] == "bot"
        assert (await h.poll("T-100", after=polled["next_after"]))["replies"] == []
        assert len(h.receiver.payloads()) == 1


async def test_unsigned_wrong_and_stale_requests_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        payload = {"conversation_id": "T-1", "message_id": "x", "text": "hi", "customer": {"id": "c"}}
        path = f"{PREFIX}/messages"
        assert (await h.post(path, payload, signed=False)).status_code == 401
        assert (await h.post(path, payload, secret="not-the-secret")).status_code == 401
        assert (await h.post(path, payload, timestamp=time.time() - 600)).status_code == 401
        target = f"{PREFIX}/conversations/T-1/messages"
        assert (await h.client.get(target)).status_code == 401
        # a signature for another conversation's messages does not open this one
        assert (await h.get(target, signed_target=f"{PREFIX}/conversations/T-2/messages")).status_code == 401
        assert (await h.post(f"{PREFIX}/conversations/T-1/mode", {"mode": "human"}, signed=False)).status_code == 401
        await h.idle()
        assert h.runtime.store is not None and await h.runtime.store.last_message_id() == 0


async def test_a_replayed_signed_request_is_answered_and_does_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A captured signed request sent again while its signature is fresh (5 minutes) is not run again: a
    replayed "human" cannot take the conversation back from the bot after agents gave it back."""
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        path, signed_at = f"{PREFIX}/conversations/T-1/mode", time.time()
        taken = await h.post(path, {"mode": "human", "by": "Marta"}, timestamp=signed_at)
        assert taken.json()["changed"] is True
        assert (await h.post(path, {"mode": "bot", "by": "Marta"})).json()["mode"] == "bot"
        replay = await h.post(path, {"mode": "human", "by": "Marta"}, timestamp=signed_at)
        assert replay.status_code == 200 and replay.json()["replayed"] is True
        assert (await h.poll("T-1"))["mode"] == "bot"
        # a message sent again is a duplicate by its message_id (a helpdesk's retry may resend the same bytes)
        message = {"conversation_id": "T-2", "message_id": "m-1", "text": "hi", "customer": {"id": "c"}}
        assert (await h.post(f"{PREFIX}/messages", message, timestamp=signed_at)).json()["duplicate"] is False
        assert (await h.post(f"{PREFIX}/messages", message, timestamp=signed_at)).json()["duplicate"] is True


async def test_bad_bodies_get_4xx_that_say_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        path = f"{PREFIX}/messages"
        base = {"conversation_id": "T-1", "message_id": "x", "text": "hi", "customer": {"id": "c"}}
        cases = [
            (b"{", 400), (b"[]", 400), (json.dumps({**base, "conversation_id": "a/b"}).encode(), 400),
            (json.dumps({**base, "text": "", "attachments": []}).encode(), 400),
            (json.dumps({**base, "extra": 1}).encode(), 400),
            (json.dumps({**base, "attachments": [{"url": "http://evil.example/x.png"}]}).encode(), 400),
            (json.dumps({**base, "attachments": [{"data": "not base64!"}]}).encode(), 400),
            (json.dumps({**base, "attachments": [{"url": "http://127.0.0.1/x", "data": "AAAA"}]}).encode(), 400),
        ]
        for raw, status in cases:
            response = await h.post(path, None, raw=raw)
            assert response.status_code == status, (raw, response.text)
            assert response.json()["error"]
        assert (await h.get(f"{PREFIX}/conversations/bad%20id/messages")).status_code == 400
        assert (await h.post(f"{PREFIX}/conversations/T-1/mode", {"mode": "robot"})).status_code == 400


async def test_photos_by_url_and_inline_reach_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        url = f"{h.receiver.url}/files/moved"  # a redirect on the same allowed host
        await h.message("T-2", "what is this", attachments=[{"url": url, "filename": "photo.png"}])
        inline = base64.b64encode(image_bytes(320, 240, fmt="PNG")).decode()
        await h.message("T-3", "and this", attachments=[{"data": inline, "filename": "p.png", "mime_type": "image/png"}])
        answers = await h.receiver.wait_for(2)
        texts = {a["conversation_id"]: a["text"] for a in answers}
        assert texts["T-2"].startswith("[image 1: 640x480") and texts["T-2"].endswith("what is this")
        assert texts["T-3"].startswith("[image 1: 320x240") and texts["T-3"].endswith("and this")
        await h.idle()
        assert not (tmp_path / "data" / "helpdesk_api_uploads").exists()  # inline files go to the store


async def test_a_redirect_off_the_allowed_hosts_is_not_followed(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        await h.message("T-4", "look", attachments=[{"url": f"{h.receiver.url}/files/elsewhere", "filename": "a.png"}])
        [reply] = await h.receiver.wait_for(1)
        assert "a.png" in reply["text"] and not reply["text"].startswith("[image")


async def test_urls_that_resolve_to_private_or_metadata_addresses_are_not_fetched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """On an allowed host is not enough: the addresses the host resolves to, at every hop, must be public
    unless ``allow_private_networks`` lists them (a redirect to cloud metadata is refused either way)."""
    caplog.set_level(logging.WARNING)
    async with helpdesk_api(tmp_path, monkeypatch, attachment_hosts=["127.0.0.1", "169.254.169.254"],
                            allow_private_networks=["127.0.0.1/32"]) as h:
        await h.message("T-4", "look", attachments=[{"url": f"{h.receiver.url}/files/metadata", "filename": "a.png"}])
        [reply] = await h.receiver.wait_for(1)
        assert "a.png" in reply["text"] and not reply["text"].startswith("[image")
        assert h.receiver.downloads == ["/files/metadata"]
        [refused] = [r.getMessage() for r in caplog.records if "not fetched" in r.getMessage()]
        assert "169.254.169.254" in refused and "cloud metadata" in refused and "/latest/" not in refused
    async with helpdesk_api(tmp_path / "private", monkeypatch, allow_private_networks=[]) as h:
        await h.message("T-5", "look", attachments=[{"url": f"{h.receiver.url}/files/photo.png", "filename": "b.png"}])
        [reply] = await h.receiver.wait_for(1)
        assert "b.png" in reply["text"] and h.receiver.downloads == []
        assert any("adapters.helpdesk_api.allow_private_networks" in r.getMessage() for r in caplog.records)


async def test_callbacks_are_retried_with_the_same_delivery_id_and_polling_survives_a_dead_receiver(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch, callback_attempts=3) as h:
        h.receiver.fail = 2
        await h.message("T-5", "retry me")
        [answer] = await h.receiver.wait_for(1)
        ids = [headers[DELIVERY_HEADER.lower()] for headers, _ in h.receiver.callbacks]
        assert ids == [answer["id"]] * 3
        h.receiver.fail = 10  # down for good: the turn still ends answered, and polling has it
        await h.message("T-5", "and again")
        await h.idle()
        replies = (await h.poll("T-5"))["replies"]
        assert [r["text"] for r in replies] == ["echo: retry me", "echo: and again"]
        assert not any(r["failed"] for r in replies)
        assert await h.runtime.manager.outbox.waiting(ConversationKey("helpdesk_api", "T-5"))  # type: ignore[union-attr]


async def test_handoff_and_giving_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        await h.message("T-6", "Quiero hablar con una persona", language="es")
        [handoff] = await h.receiver.wait_for(1)
        assert handoff["type"] == "handoff" and handoff["handoff"]["state"] == "requested"
        assert handoff["text"] == t("handoff_started", "es")
        assert (await h.poll("T-6"))["mode"] == "human"
        held = await h.message("T-6", "¿Hola?")
        assert held.json()["held"] is True
        await h.idle()
        assert len(h.receiver.payloads()) == 1  # silent while a person has it
        back = await h.post(f"{PREFIX}/conversations/T-6/mode", {"mode": "bot", "by": "Marta"})
        assert back.status_code == 200 and back.json() == {"conversation_id": "T-6", "mode": "bot", "changed": True}
        await h.message("T-6", "gracias")
        answers = await h.receiver.wait_for(2)
        assert answers[-1]["text"] == "echo: gracias"


async def test_agent_assist_drafts_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        await h.message("T-7", "Why was I charged twice?", assist=True)
        [draft] = await h.receiver.wait_for(1)
        assert draft["private"] is True
        await h.idle()
        [reply] = (await h.poll("T-7"))["replies"]
        assert reply["private"] is True


async def test_polling_only_without_a_callback_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch, callback=False) as h:
        await h.message("T-8", "| part | price |\n|---|---|\n| lid | 4.00 |")
        await h.message("T-8", "/export csv")
        await h.idle()
        replies = (await h.poll("T-8"))["replies"]
        assert replies[0]["text"].startswith("echo: | part | price |") and replies[1]["type"] == "command"
        assert h.receiver.callbacks == []


async def test_exports_arrive_as_file_callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        await h.message("T-9", "| part | price |\n|---|---|\n| lid | 4.00 |")
        await h.receiver.wait_for(1)
        await h.message("T-9", "/export csv")
        payloads = await h.receiver.wait_for(3)
        [file] = [p for p in payloads if p["type"] == "file"]
        assert file["file"]["filename"].endswith(".csv") and b"lid,4.00" in base64.b64decode(file["file"]["data"])


async def test_the_openapi_schema_documents_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        schema = (await h.client.get("/openapi.json")).json()
        post = schema["paths"][f"{PREFIX}/messages"]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert set(body["required"]) >= {"conversation_id", "message_id", "customer"}
        assert {p["name"] for p in post["parameters"]} == {TIMESTAMP_HEADER, SIGNATURE_HEADER}
        assert "202" in post["responses"] and "401" in post["responses"]
        assert f"{PREFIX}/conversations/{{conversation_id}}/messages" in schema["paths"]
        assert f"{PREFIX}/conversations/{{conversation_id}}/mode" in schema["paths"]
        assert f"{PREFIX}/conversations/{{conversation_id}}/files/{{sha256}}" in schema["paths"]


@pytest.mark.parametrize(("callback_url", "refused"), [
    ("http://bot:s3cret-pw@helpdesk.example.com/hooks", True), ("http://bot:s3cret-pw@10.1.2.3/hooks", True),
    ("https://bot:s3cret-pw@helpdesk.example.com/hooks", False), ("http://bot:s3cret-pw@127.0.0.1:9/hooks", False),
    ("http://helpdesk.example.com/hooks", False),  # signed, not authenticated: the secret never travels
])
async def test_callback_credentials_over_plain_http_to_another_host_stop_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, callback_url: str, refused: bool) -> None:
    monkeypatch.setenv("HELPDESK_API_SECRET", SECRET)
    settings = make_settings(tmp_path, adapters={"helpdesk_api": {"enabled": True, "callback_url": callback_url}})
    async with Runtime(settings, engine=EchoEngine()) as runtime:
        assert runtime.manager is not None
        conf = settings.adapters.helpdesk_api  # type: ignore[attr-defined]
        if not refused:
            await HelpdeskApiAdapter(runtime.manager, runtime.settings, conf).close()
            return
        with pytest.raises(StartupError) as err:
            HelpdeskApiAdapter(runtime.manager, runtime.settings, conf)
        assert "adapters.helpdesk_api.callback_url" in str(err.value) and "s3cret-pw" not in str(err.value)


def test_allowed_hosts() -> None:
    hosts = ["files.example.com", "*.s3.amazonaws.com"]
    assert host_allowed("https://files.example.com/a.png", hosts)
    assert host_allowed("https://bucket.s3.amazonaws.com/a.png", hosts)
    assert not host_allowed("https://files.example.com.evil.net/a.png", hosts)
    assert not host_allowed("ftp://files.example.com/a.png", hosts)
    assert not host_allowed("https://user@evil.net/?files.example.com", hosts)
    assert not host_allowed("file:///etc/passwd", hosts)


# -- the platform contract ---------------------------------------------------------------------------------------


class HelpdeskApiChat(Chat):
    """One conversation of the other helpdesk: ``say`` is its signed POST of the customer's message, sent again
    on a 5xx or a network error as a real integration does (after ``Retry-After``); ``seen()`` is the public
    answers, notices and handoff texts its callback receiver accepted for the conversation, in order, counted
    once per delivery id (the API's word for "the same delivery"; a second delivery of the same text counts
    twice). ``outage`` makes the receiver answer 503; ``restart`` replaces the bot on the same store."""

    conversation = "T-contract"

    def __init__(self, tmp_path: Path, receiver: Receiver) -> None:
        self.tmp_path = tmp_path
        self.receiver = receiver
        self.engine = EchoEngine(context_length=32768)
        self.bot: Harness | None = None
        self.sent = 0
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.bot = await self._stack.enter_async_context(api_bot(
            self.tmp_path, self.receiver, engine=self.engine,
            settings={"conversation": {"max_pending_per_conversation": 1}}))

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self.bot = None

    @property
    def store(self) -> Store:
        assert self.bot is not None and self.bot.runtime.store is not None, "the bot is not running"
        return self.bot.runtime.store

    async def say(self, text: str) -> dict[str, Any]:
        self.sent += 1
        message = {"conversation_id": self.conversation, "message_id": f"c-{self.sent}", "text": text,
                   "customer": {"id": "cust-1", "name": "Ana"}}
        await self.send(message)
        return message

    async def send(self, message: dict[str, Any], attempts: int = 10) -> httpx.Response:
        """POST ``message``, signed afresh each time, until it is taken (2xx) or refused (4xx)."""
        for _ in range(attempts):
            assert self.bot is not None, "the bot is not running"
            try:
                response = await self.bot.post(f"{PREFIX}/messages", message)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code < 500:
                assert response.status_code == 202, response.text
                return response
            await asyncio.sleep(float(response.headers.get("Retry-After", "0.2")))
        raise AssertionError(f"the message was never taken: {message}")

    async def redeliver(self, delivery: Any) -> None:
        await self.send(delivery)

    def seen(self) -> list[str]:
        texts, deliveries = [], set()
        for headers, body in self.receiver.callbacks:
            payload = json.loads(body)
            delivery = headers[DELIVERY_HEADER.lower()]
            if headers.get("status") != "200" or delivery in deliveries or payload["private"] or \
                    payload["conversation_id"] != self.conversation or payload["type"] == "file":
                continue
            deliveries.add(delivery)
            texts.append(payload["text"])
        return texts

    def outage(self, down: bool) -> None:
        self.receiver.down = down

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def idle(self) -> None:
        assert self.bot is not None and self.bot.runtime.manager is not None
        manager = self.bot.runtime.manager
        async with asyncio.timeout(30):
            while True:
                await manager.idle()
                if not await self.store.stashed(OUTBOX):
                    break
                await asyncio.sleep(0.05)


class TestHelpdeskApiPlatform(PlatformContract):
    @pytest.fixture
    async def chat(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HelpdeskApiChat]:
        async with receiving(monkeypatch) as receiver:
            chat = HelpdeskApiChat(tmp_path, receiver)
            await chat.start()
            try:
                yield chat
            finally:
                await chat.stop()


async def test_a_store_error_answers_503_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The message is not confirmed (the helpdesk sends it again after Retry-After), and the log has one line
    saying so: no traceback, no 500."""
    caplog.set_level(logging.WARNING)
    async with helpdesk_api(tmp_path, monkeypatch) as h:
        store = h.runtime.store
        assert store is not None
        real = store.add_incoming

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(store, "add_incoming", broken)
        refused = await h.message("T-20", "is it stored", message_id="s-1")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1" and refused.json()["error"]
        monkeypatch.setattr(store, "add_incoming", real)
        taken = await h.message("T-20", "is it stored", message_id="s-1")
        assert taken.status_code == 202 and taken.json()["duplicate"] is False
        [answer] = await h.receiver.wait_for(1)
        assert answer["text"] == "echo: is it stored"
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "s-1" in line.getMessage() and "database is locked" in line.getMessage() and "503" in line.getMessage()
    assert line.exc_info is None


async def test_seen_counts_each_delivery_once_and_each_different_delivery(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's ``seen()`` is an honest count: a retried delivery (the same delivery id) once, the same
    text in a second delivery twice."""
    async with receiving(monkeypatch) as receiver:
        chat = HelpdeskApiChat(tmp_path, receiver)
        await chat.start()
        try:
            await chat.say("same words")
            await chat.wait_seen("echo: same words")
            await chat.say("same words")
            async with asyncio.timeout(15):
                while len(chat.seen()) < 2:
                    await asyncio.sleep(0.05)
            await chat.idle()
            headers, body = receiver.callbacks[0]
            receiver.callbacks.append((headers, body))  # a retry of the first delivery
            assert chat.seen() == ["echo: same words", "echo: same words"]
        finally:
            await chat.stop()


# -- the reply sink and the file fetcher --------------------------------------------------------------------------


def _api_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> HelpdeskApiAdapter:
    monkeypatch.setenv("HELPDESK_API_SECRET", SECRET)
    settings = make_settings(tmp_path, adapters={"helpdesk_api": {
        "enabled": True, "callback_url": f"{receiver.url}/callback", "attachment_hosts": ["127.0.0.1"],
        "allow_private_networks": ["127.0.0.0/8"]}})
    return HelpdeskApiAdapter(ConversationManager(settings, MemoryStore(), EchoEngine()), settings,
                              settings.adapters.helpdesk_api)  # type: ignore[attr-defined]


class TestCallbackSink(SinkContract):
    """Each reply as a signed callback: what the other helpdesk accepted, once per delivery id."""

    @pytest.fixture
    async def screen(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Screen]:
        async with receiving(monkeypatch) as receiver:
            adapter = _api_adapter(tmp_path, monkeypatch, receiver)

            async def visible() -> list[str]:
                return [p["text"] for p in receiver.payloads() if p["type"] != "file"]

            async def files() -> list[str]:
                return [p["file"]["filename"] for p in receiver.payloads() if p["type"] == "file"]

            yield Screen(lambda context: CallbackSink(adapter, context), visible, files)
            await adapter.close()


class TestApiFetcher(FetcherContract):
    """Attachments by URL (from the allowed hosts) and inline ones (kept in the store)."""

    @pytest.fixture(params=["url", "inline"])
    async def files(self, request: pytest.FixtureRequest, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FileSource]:
        async with receiving(monkeypatch) as receiver:
            adapter = _api_adapter(tmp_path, monkeypatch, receiver)
            fetcher = ApiFetcher(adapter)

            async def add(data: bytes, name: str) -> tuple[ApiFetcher, Attachment]:
                if request.param == "url":
                    receiver.blobs[name] = data
                    return fetcher, Attachment(f"url:{receiver.url}/blobs/{name}", name)
                sha = await adapter.manager.store.save_blob(data)
                return fetcher, Attachment(StoredFiles.ref(sha), name, size=len(data))

            async def missing() -> tuple[ApiFetcher, Attachment]:
                if request.param == "url":
                    return fetcher, Attachment(f"url:{receiver.url}/blobs/gone.png", "gone.png")
                return fetcher, Attachment(StoredFiles.ref("0" * 64), "gone.png")

            yield FileSource(add, missing)
            await adapter.close()


# -- fuzzing ------------------------------------------------------------------------------------------------------

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                 max_size=4), max_leaves=12)
_ids = st.from_regex(r"[A-Za-z0-9._@-]{1,12}", fullmatch=True) | st.text(alphabet="abcXYZ019._@-/ %?#é",
                                                                              max_size=12)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that fit a JSON schema (the subset pydantic writes for the API's models: objects, strings with
    lengths and patterns, integers, booleans, arrays, anyOf, null, enums)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = {name: from_schema(sub) for name, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                     optional={k: v for k, v in props.items() if k not in required})
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 60), 60)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda v: low <= len(v) <= high)
        return st.text(min_size=low, max_size=high)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {})), max_size=min(schema.get("maxItems", 3), 3))
    return _json


def _requests() -> st.SearchStrategy[tuple[str, str, Any]]:
    message = from_schema(_inline_schema(ApiMessage))
    fields = st.fixed_dictionaries({}, optional={
        "conversation_id": _json | _ids, "message_id": _json | _ids, "text": _json,
        "customer": _json | st.fixed_dictionaries({"id": _ids}), "attachments": _json, "assist": _json,
        "language": _json | st.text(max_size=12)})
    return st.one_of(
        st.tuples(st.just("POST"), st.just(f"{PREFIX}/messages"), message),
        st.tuples(st.just("POST"), st.just(f"{PREFIX}/messages"), fields | _json),
        st.tuples(st.just("GET"), st.builds(lambda c, a: f"{PREFIX}/conversations/{c}/messages?after={a}",
                                            _ids, st.integers() | st.text(max_size=5)), st.none()),
        st.tuples(st.just("GET"), st.builds(lambda c, f: f"{PREFIX}/conversations/{c}/files/{f}", _ids,
                                            st.text(max_size=70) | st.sampled_from(["0" * 64, "a" * 64])),
                  st.none()),
        st.tuples(st.just("POST"), _ids.map(lambda c: f"{PREFIX}/conversations/{c}/mode"),
                  st.fixed_dictionaries({"mode": st.sampled_from(["bot", "human", "x"]) | _json},
                                        optional={"by": _json}) | _json),
    )


@pytest.fixture
async def fuzz_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Harness, list[int]]]:
    async with helpdesk_api(tmp_path, monkeypatch, callback=False, attachment_hosts=["127.0.0.1"]) as h:
        statuses: list[int] = []
        yield h, statuses
        assert [s for s in statuses if s >= 500] == []
        assert len(statuses) >= 1000, len(statuses)
        ok = sum(200 <= s < 300 for s in statuses)
        assert ok >= 100, (ok, sorted(set(statuses)))  # valid requests get through, not only refusals


@settings(max_examples=1100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=_requests())
async def test_fuzzed_requests_never_get_a_5xx(fuzz_target: tuple[Harness, list[int]],
                                               request: tuple[str, str, Any]) -> None:
    """Valid and invalid bodies, signed (so they reach the parsing), for every route: 4xx or success, never
    a 5xx, and the service keeps answering."""
    h, statuses = fuzz_target
    method, target, payload = request
    if method == "GET":
        try:
            response = await h.get(target)
        except httpx.InvalidURL:
            return
    else:
        response = await h.post(target, payload)
    assert response.status_code < 500, (target, payload, response.text)
    statuses.append(response.status_code)
