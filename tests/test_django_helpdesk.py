"""The django-helpdesk adapter against a REAL django-helpdesk 2.6 (tests/helpdesk_site, in a subprocess) whose
webhooks point at the framework's real server: what the customer and staff see on the ticket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.django_helpdesk import PLATFORM, WEBHOOK_PATH
from adapters.django_helpdesk.adapter import DjangoHelpdeskAdapter, HelpdeskFetcher, HelpdeskSink
from adapters.server import Service, build_app
from bot.conversation.manager import ConversationManager
from bot.conversation.outbox import BUCKET as OUTBOX
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.l10n.i18n import text as t
from bot.runtime import Runtime
from bot.store import MemoryStore, Store
from bot.types import Attachment, ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.contracts import Chat, FetcherContract, FileSource, PlatformContract, Screen, SinkContract
from tests.fakes.serving import FaultProxy, fault_proxy, serve_asgi
from tests.helpdesk_peer import REOPENED, HelpdeskSite, helpdesk_site

TOKEN = "hook-token-123"

pytestmark = pytest.mark.slow



@dataclass
class Harness:
    site: HelpdeskSite
    runtime: Runtime
    adapter: DjangoHelpdeskAdapter
    hook: str

    async def idle(self) -> None:
        assert self.runtime.manager is not None
        await asyncio.wait_for(self.runtime.manager.idle(), 20)

    async def until(self, check: Callable[[], Any], timeout: float = 20) -> Any:  # noqa: ASYNC109
        """Poll the helpdesk's REST API (it has no push) until ``check`` returns something true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await check()
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the helpdesk never showed it")
            await asyncio.sleep(0.1)

    async def bot_followups(self, ticket: int) -> list[dict[str, Any]]:
        return [f for f in await self.site.followups(ticket) if f["user"] == self.site.users["bot"]]


class Front:
    """What stands at the webhook URL for the whole test: the bot's app when one runs (``app``), else 503 (a
    load balancer with no bot behind it). Keeps every webhook body django-helpdesk posted and the status it got:
    django-helpdesk never sends one again, a test redelivers it by hand."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None
        self.webhooks: list[tuple[Any, int]] = []  # (body, status), in arrival order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != WEBHOOK_PATH:
            await (self.app or JSONResponse({"error": "no bot"}, status_code=503))(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:  # the whole body first: the bot may answer without reading it (503 while it restarts)
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw  # a malformed body, as sent
        index = len(self.webhooks)
        self.webhooks.append((body, 0))

        async def replay() -> Message:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def status(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.webhooks[index] = (body, message["status"])
            await send(message)

        await (self.app or JSONResponse({"error": "no bot"}, status_code=503))(scope, replay, status)

    def body(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((body for body, _ in reversed(self.webhooks) if isinstance(body, dict) and match(body)), None)


@dataclass
class Peer:
    """The site part: a real django-helpdesk whose webhooks point at ``front`` (on ``hook``), credentials in the
    environment. Slow to start (migrations): once per test; bots come and go in front of it."""

    site: HelpdeskSite
    front: Front
    hook: str


@contextlib.asynccontextmanager
async def helpdesk_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                        valid_extensions: list[str] | None = None) -> AsyncIterator[Peer]:
    front = Front()
    async with serve_asgi(front) as url:
        hook = f"{url}{WEBHOOK_PATH}?token={TOKEN}"
        async with helpdesk_site(tmp_path, new_ticket_webhook=hook, followup_webhook=hook,
                                 valid_extensions=valid_extensions) as site:
            monkeypatch.setenv("HELPDESK_API_USER", site.api_user)
            monkeypatch.setenv("HELPDESK_API_PASSWORD", site.api_password)
            monkeypatch.setenv("HELPDESK_WEBHOOK_TOKEN", TOKEN)
            yield Peer(site, front, hook)


@contextlib.asynccontextmanager
async def helpdesk_bot(tmp_path: Path, peer: Peer, *, engine: EchoEngine | None = None, base_url: str | None = None,
                       settings: dict[str, Any] | None = None, **conf: Any) -> AsyncIterator[Harness]:
    """The bot part: a Runtime (its store under ``tmp_path``: the next one finds it), the adapter and the
    framework's app behind ``peer.front``; stopped as ``serve`` stops it."""
    section = {"enabled": True, "base_url": base_url or peer.site.url, "allow_private_networks": ["127.0.0.0/8"],
               **conf}
    built = make_settings(tmp_path, adapters={"django_helpdesk": section}, **(settings or {}))
    async with Runtime(built, engine=engine or EchoEngine(context_length=32768)) as runtime:
        assert runtime.manager is not None
        adapter = DjangoHelpdeskAdapter(runtime.manager, runtime.settings,
                                        built.adapters.django_helpdesk)  # type: ignore[attr-defined]
        service = Service(runtime.settings, runtime, [adapter])
        service.ready = True
        await runtime.manager.start()
        await adapter.start()
        peer.front.app = build_app(service)
        try:
            yield Harness(peer.site, runtime, adapter, peer.hook)
        finally:
            adapter.stop_intake()
            await runtime.manager.stop(2)
            await adapter.close()
            peer.front.app = None


@contextlib.asynccontextmanager
async def helpdesk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> AsyncIterator[Harness]:
    async with helpdesk_peer(tmp_path, monkeypatch) as peer, helpdesk_bot(tmp_path, peer, **conf) as harness:
        yield harness


async def test_a_ticket_with_a_photo_and_a_follow_up_are_answered(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk(tmp_path, monkeypatch) as h:
        photo = ("kettle.png", image_bytes(640, 480, fmt="PNG"), "image/png")
        ticket = await h.site.customer_ticket("Kettle does not heat", "It clicks and stays cold.", attachment=photo)
        first = await h.until(lambda: h.bot_followups(ticket))
        assert first[0]["public"] is True
        assert first[0]["comment"].startswith("[image 1: 640x480")
        assert "Kettle does not heat" in first[0]["comment"] and "It clicks and stays cold." in first[0]["comment"]
        await h.site.customer_followup(ticket, "Thanks, and the lid does not close either.")
        await h.until(lambda: _has(h, ticket, "echo: Thanks, and the lid does not close either."))
        await h.site.staff_followup(ticket, "Staff here: we will send a new lid.", public=True)
        await h.idle()
        # staff's and the bot's own follow-ups are not answered: exactly two answers
        assert len(await h.bot_followups(ticket)) == 2


async def test_a_ticket_filed_through_the_api_on_a_customers_behalf_is_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A website form or portal files tickets through the staff-only REST API: the first follow-up's author
    is that integration account, the customer is the submitter. The customer gets the answer; a follow-up the
    integration account writes later is still staff's (not answered)."""
    async with helpdesk(tmp_path, monkeypatch) as h:
        created = await h.site.api("POST", "/api/tickets/", user="agent", json={
            "queue": h.site.queues["support"], "title": "Grinder jams", "priority": 3,
            "description": "Beans get stuck after a minute.", "submitter_email": "buyer@example.com"})
        ticket = int(created["id"])
        answers = await h.until(lambda: h.bot_followups(ticket))
        assert "Grinder jams" in answers[0]["comment"] and answers[0]["public"] is True
        await h.site.staff_followup(ticket, "Agent note: replacement sent.", public=True)
        await h.idle()
        assert len(await h.bot_followups(ticket)) == 1


async def test_attachments_from_a_private_address_need_allow_private_networks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The site runs on 127.0.0.1: unless the operator lists that network, its files are not fetched (a
    webhook names the file; the address check refuses loopback, private and metadata addresses)."""
    caplog.set_level(logging.WARNING)
    async with helpdesk(tmp_path, monkeypatch, allow_private_networks=[]) as h:
        photo = ("kettle.png", image_bytes(64, 48, fmt="PNG"), "image/png")
        ticket = await h.site.customer_ticket("Kettle", "It clicks.", attachment=photo)
        [answer] = await h.until(lambda: h.bot_followups(ticket))
        assert "kettle.png" in answer["comment"] and "[image" not in answer["comment"]
        [refused] = [r.getMessage() for r in caplog.records if "not fetched" in r.getMessage()]
        assert "loopback" in refused and "adapters.django_helpdesk.allow_private_networks" in refused


async def test_handoff_reopens_for_staff_with_a_note_and_slash_bot_gives_it_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk(tmp_path, monkeypatch) as h:
        ticket = await h.site.customer_ticket("Question", "Hello, is the shop open on Sunday?", via="email")
        await h.until(lambda: h.bot_followups(ticket))
        await h.site.customer_followup(ticket, "I want to talk to a person")
        await h.until(lambda: _has(h, ticket, t("handoff_started", "en")))
        note = await h.until(lambda: _private(h, ticket))
        assert "handed this ticket to staff" in note[0]["comment"] and "asked for a person" in note[0]["comment"]
        assert (await h.site.ticket(ticket))["status"] == REOPENED
        await h.site.customer_followup(ticket, "Hello? Anyone?")
        await h.idle()
        answers = len(await h.bot_followups(ticket))
        await h.site.staff_followup(ticket, "/bot", public=False)
        await h.idle()
        await h.site.customer_followup(ticket, "Back to the assistant then")
        await h.until(lambda: _has(h, ticket, "echo: Back to the assistant then"))
        assert len(await h.bot_followups(ticket)) > answers


async def test_agent_assist_queues_get_private_drafts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk(tmp_path, monkeypatch, agent_assist_queues=["billing"]) as h:
        ticket = await h.site.customer_ticket("Invoice", "Why was I charged 12 EUR?", queue="billing", via="email")
        drafts = await h.until(lambda: h.bot_followups(ticket))
        await h.idle()
        assert [f["public"] for f in await h.bot_followups(ticket)] == [False]
        assert "Why was I charged 12 EUR?" in drafts[0]["comment"]


async def test_answers_are_not_run_as_templates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk(tmp_path, monkeypatch) as h:
        ticket = await h.site.customer_ticket("Template", "print {{ ticket.title }}, {% now 'Y' %}, a lone %} and {{{ x",
                                                via="email")
        [answer] = await h.until(lambda: h.bot_followups(ticket))
        shown = answer["comment"].replace("\u200b", "")
        assert "print {{ ticket.title }}, {% now 'Y' %}, a lone %} and {{{ x" in shown


async def test_the_webhook_needs_its_token_and_a_redelivery_is_answered_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with helpdesk(tmp_path, monkeypatch) as h:
        ticket = await h.site.customer_ticket("Token", "first question", via="email")
        await h.until(lambda: h.bot_followups(ticket))
        data = await h.site.ticket(ticket)
        payload = {"ticket": data, "queue_slug": "support"}
        url = h.hook.split("?")[0]
        async with httpx.AsyncClient() as client:
            assert (await client.post(url, json=payload)).status_code == 401
            assert (await client.post(url + "?token=wrong", json=payload)).status_code == 401
            assert (await client.post(url, json=payload, headers={"Authorization": "Bearer wrong"})).status_code == 401
            # the token in a header instead of the URL (a proxy that adds it: query strings end up in access logs)
            bearer = await client.post(url, json=payload, headers={"Authorization": f"Bearer {TOKEN}"})
            assert bearer.status_code == 200
            assert (await client.post(h.hook, json=payload)).status_code == 200  # a redelivery
            assert (await client.post(h.hook, content=b"{")).status_code == 400
        await h.idle()
        assert len(await h.bot_followups(ticket)) == 1


async def test_basic_auth_over_plain_http_to_another_host_stops_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API user's password goes with every REST call: over http it must stay on this machine."""
    monkeypatch.setenv("HELPDESK_API_USER", "bot")
    monkeypatch.setenv("HELPDESK_API_PASSWORD", "pw-123456")
    monkeypatch.setenv("HELPDESK_WEBHOOK_TOKEN", TOKEN)
    for base_url, refused in (("http://helpdesk.example.com", True), ("http://10.0.0.5:8000", True),
                              ("https://helpdesk.example.com", False), ("http://127.0.0.1:8000", False),
                              ("http://localhost:8000", False)):
        settings = make_settings(tmp_path, adapters={"django_helpdesk": {"enabled": True, "base_url": base_url}})
        async with Runtime(settings, engine=EchoEngine()) as runtime:
            assert runtime.manager is not None
            conf = settings.adapters.django_helpdesk  # type: ignore[attr-defined]
            if not refused:
                await DjangoHelpdeskAdapter(runtime.manager, runtime.settings, conf).close()
                continue
            with pytest.raises(StartupError) as err:
                DjangoHelpdeskAdapter(runtime.manager, runtime.settings, conf)
            assert "adapters.django_helpdesk.base_url" in str(err.value) and "https" in str(err.value)
            assert "pw-123456" not in str(err.value)


async def _has(h: Harness, ticket: int, text: str) -> bool:
    return any(f["comment"].strip() == text for f in await h.bot_followups(ticket))


async def _private(h: Harness, ticket: int) -> list[dict[str, Any]]:
    return [f for f in await h.bot_followups(ticket) if not f["public"]]



async def test_exports_arrive_as_attachments_of_a_follow_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """django-helpdesk accepts only some extensions by default (.txt yes, .csv/.json no): an export it refuses is
    attached again as ``<name>.txt``, so the customer still gets the file."""
    async with helpdesk(tmp_path, monkeypatch) as h:
        ticket = await h.site.customer_ticket("Parts", "| item | total |\n|---|---|\n| pump | 12.50 |", via="email")
        await h.until(lambda: h.bot_followups(ticket))
        await h.site.customer_followup(ticket, "/export csv")
        files = await h.until(lambda: _attachments(h, ticket))
        assert files[0]["filename"].endswith(".csv.txt")
        download = await h.site.download(files[0]["file"], user="agent")
        assert b"pump,12.50" in download.content


async def _attachments(h: Harness, ticket: int) -> list[dict[str, Any]]:
    return [a for f in await h.bot_followups(ticket) for a in f.get("followupattachment_set") or []]


# -- the platform contract -------------------------------------------------------------------------------------

CATCH_UP = 0.5  # seconds between two catch-up sweeps in these tests (60 by default)


class DjangoHelpdeskChat(Chat):
    """One ticket of a real django-helpdesk: the first ``say`` is the customer's e-mail that opens it (the text as
    its subject, no body), later ones the customer's e-mailed follow-ups. ``seen()`` is the bot user's public
    follow-ups on it, as the REST API last showed them (``wait_seen``/``idle`` read it again). The bot reaches
    the helpdesk through a :class:`FaultProxy` (``outage``); the site runs for the whole test, ``restart``
    replaces only the bot (its Runtime, adapter and app) on the same store."""

    def __init__(self, tmp_path: Path, peer: Peer, proxy: FaultProxy, **conf: Any) -> None:
        self.tmp_path = tmp_path
        self.peer = peer
        self.site = peer.site
        self.proxy = proxy
        self.conf = {"catch_up_seconds": CATCH_UP, **conf}
        self.engine = EchoEngine(context_length=32768)
        self.ticket: int | None = None
        self.bot: Harness | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._seen: list[str] = []

    async def start(self, *, first_sweep: bool = True) -> None:
        self._stack = contextlib.AsyncExitStack()
        self.bot = await self._stack.enter_async_context(helpdesk_bot(
            self.tmp_path, self.peer, engine=self.engine, base_url=self.proxy.url,
            settings={"conversation": {"max_pending_per_conversation": 1}}, **self.conf))
        if first_sweep:  # the first sweep notes where the helpdesk is: a ticket filed before that is its past
            async with asyncio.timeout(20):
                while self.bot.adapter.sweeps < 1:
                    await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self.bot = None

    @property
    def adapter(self) -> DjangoHelpdeskAdapter:
        assert self.bot is not None, "the bot is not running"
        return self.bot.adapter

    @property
    def store(self) -> Store:
        assert self.bot is not None and self.bot.runtime.store is not None, "the bot is not running"
        return self.bot.runtime.store

    async def say(self, text: str) -> dict[str, Any] | None:
        if self.ticket is None:
            ticket = self.ticket = await self.site.customer_ticket(text, "", via="email")
            return self.peer.front.body(lambda b: "followup_id" not in b and b.get("ticket", {}).get("id") == ticket)
        followup = await self.site.customer_followup(self.ticket, text)
        return self.peer.front.body(lambda b: b.get("followup_id") == followup)

    async def redeliver(self, delivery: Any) -> None:
        assert isinstance(delivery, dict), "no webhook was posted for that message"
        async with httpx.AsyncClient(timeout=20) as client:
            await client.post(self.peer.hook, json=delivery)

    def seen(self) -> list[str]:
        return list(self._seen)

    async def refresh(self) -> list[str]:
        """The bot's public follow-ups on the ticket now, as the customer reads them (straight from the site)."""
        if self.ticket is not None:
            self._seen = [f["comment"].replace("\u200b", "").strip() for f in await self.site.followups(self.ticket)
                          if f["user"] == self.site.users["bot"] and f["public"]]
        return self._seen

    async def wait_seen(self, expected: str, timeout: float = 30) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while expected not in await self.refresh():
                await asyncio.sleep(0.1)

    def outage(self, down: bool) -> None:
        self.proxy.down = down

    async def restart(self) -> None:
        await self.stop()
        await self.start(first_sweep=False)

    async def idle(self) -> None:
        """The manager idle, the outbox empty and two more sweeps over (what one would still hand on is
        handed on), then the ticket read again."""
        assert self.bot is not None and self.bot.runtime.manager is not None
        manager = self.bot.runtime.manager
        async with asyncio.timeout(30):
            swept = self.adapter.sweeps
            while True:
                await manager.idle()
                if not await self.store.stashed(OUTBOX) and self.adapter.sweeps >= swept + 2:
                    break
                await asyncio.sleep(0.05)
            await manager.idle()
        await self.refresh()


@contextlib.asynccontextmanager
async def django_helpdesk_chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, start: bool = True,
                               **conf: Any) -> AsyncIterator[DjangoHelpdeskChat]:
    async with helpdesk_peer(tmp_path, monkeypatch) as peer, fault_proxy(peer.site.url) as proxy:
        chat = DjangoHelpdeskChat(tmp_path, peer, proxy, **conf)
        if start:
            await chat.start()
        try:
            yield chat
        finally:
            await chat.stop()


class TestDjangoHelpdeskPlatform(PlatformContract):
    @pytest.fixture
    async def chat(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DjangoHelpdeskChat]:
        async with django_helpdesk_chat(tmp_path, monkeypatch) as chat:
            yield chat


async def test_a_follow_up_written_while_the_bot_was_away_is_answered_once_by_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """django-helpdesk posts each webhook once: the one a restarting bot refuses (503) is gone. The sweep after
    the start finds the follow-up through the REST API and answers it, once."""
    async with django_helpdesk_chat(tmp_path, monkeypatch) as chat:
        await chat.say("my dishwasher leaks")
        await chat.wait_seen("echo: my dishwasher leaks")
        await chat.idle()
        chat.adapter.stop_intake()  # a deploy begins: the old bot refuses what comes in
        refused = await chat.say("and now it smells of burning")
        assert refused is not None and chat.peer.front.webhooks[-1] == (refused, 503)
        await chat.stop()
        gone = await chat.say("hello? anyone?")  # no bot at all: the load balancer answers 503
        assert gone is not None and chat.peer.front.webhooks[-1] == (gone, 503)
        await chat.start(first_sweep=False)
        await chat.wait_seen("echo: hello? anyone?")
        await chat.idle()
        assert chat.seen() == ["echo: my dishwasher leaks", "echo: and now it smells of burning",
                               "echo: hello? anyone?"]


async def test_a_first_start_does_not_answer_the_helpdesks_past(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Tickets filed before the bot ever ran are history: the first sweep notes where the helpdesk is, and
    only what comes after is answered."""
    async with django_helpdesk_chat(tmp_path, monkeypatch, start=False) as chat:
        site = chat.site
        old = await site.customer_ticket("Old question", "Filed before the bot existed.", via="email")
        await site.customer_followup(old, "Still waiting from last year.")
        await chat.start()
        await chat.say("a question after the start")
        await chat.wait_seen("echo: a question after the start")
        await chat.idle()
        assert chat.seen() == ["echo: a question after the start"]
        assert [f for f in await site.followups(old) if f["user"] == site.users["bot"]] == []
        await site.customer_followup(old, "Now I write again.")  # a ticket of the past, written to now: answered
        await chat.bot.until(lambda: _has(chat.bot, old, "echo: Now I write again."))  # type: ignore[union-attr]


async def test_sweep_and_webhook_failures_are_one_line_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A helpdesk that answers 503, a password it refuses, a store that fails under a webhook: one log line
    each, naming what failed, the URL and the fix; no traceback, no password; the sweep goes on."""
    caplog.set_level(logging.WARNING)
    async with django_helpdesk_chat(tmp_path, monkeypatch) as chat:
        adapter, base = chat.adapter, chat.proxy.url
        chat.outage(True)
        assert await adapter.catch_up() == 0
        chat.outage(False)
        adapter.auth = httpx.BasicAuth("bot", "not-the-password")
        assert await adapter.catch_up() == 0
        adapter.auth = httpx.BasicAuth(chat.site.api_user, chat.site.api_password)
        lines = [r.getMessage() for r in caplog.records if r.name == "adapters.django_helpdesk"]
        down = next(line for line in lines if "HTTP 503" in line)
        refused = next(line for line in lines if "HTTP 403" in line)  # DRF: 403 when session auth comes first
        assert f"GET {base}/api/followups/?page=last&page_size=100" in down and "tried again in 0.5 s" in down
        assert f"GET {base}/api/followups/" in refused and "HELPDESK_API_USER" in refused

        caplog.clear()
        real = chat.store.add_incoming

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(chat.store, "add_incoming", broken)
        delivery = await chat.say("is the warranty two years")
        assert chat.peer.front.webhooks[-1] == (delivery, 500)
        await asyncio.sleep(3 * CATCH_UP)  # the sweep meets the same store: one line a sweep, no more
        monkeypatch.setattr(chat.store, "add_incoming", real)
        await chat.wait_seen("echo: is the warranty two years")
        await chat.idle()
        assert chat.seen() == ["echo: is the warranty two years"]
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        hook = [r for r in lines if "webhook not stored" in r.getMessage()]
        swept = [r for r in lines if r.getMessage().startswith("django-helpdesk catch-up")]
        assert len(hook) == 1 and "disk I/O error" in hook[0].getMessage() and "answered 500" in hook[0].getMessage()
        assert swept and all("storing follow-up" in r.getMessage() and "database" in r.getMessage() for r in swept)
        assert len(swept) <= 5
    for record in caplog.records:
        assert record.exc_info is None and "\n" not in record.getMessage()
        assert chat.site.api_password not in record.getMessage()


# -- the reply sink and the file fetcher ----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def shared_site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HelpdeskSite]:
    """One site for a class of short tests (no webhooks: nothing answers here, the sink and fetcher are driven
    by hand)."""
    async with helpdesk_site(tmp_path_factory.mktemp("helpdesk")) as site:
        yield site


def _adapter(site: HelpdeskSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DjangoHelpdeskAdapter:
    monkeypatch.setenv("HELPDESK_API_USER", site.api_user)
    monkeypatch.setenv("HELPDESK_API_PASSWORD", site.api_password)
    monkeypatch.setenv("HELPDESK_WEBHOOK_TOKEN", TOKEN)
    settings = make_settings(tmp_path, adapters={"django_helpdesk": {
        "enabled": True, "base_url": site.url, "allow_private_networks": ["127.0.0.0/8"]}})
    return DjangoHelpdeskAdapter(ConversationManager(settings, MemoryStore(), EchoEngine()), settings,
                                 settings.adapters.django_helpdesk)  # type: ignore[attr-defined]


@pytest.mark.asyncio(loop_scope="class")
class TestHelpdeskSink(SinkContract):
    """Each turn's replies as follow-ups of a real ticket, as the customer reads them."""

    @pytest.fixture
    async def screen(self, shared_site: HelpdeskSite, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Screen]:
        site = shared_site
        adapter = _adapter(site, tmp_path, monkeypatch)
        ticket = await site.customer_ticket("Sink contract", "a question", via="email")
        key = ConversationKey(PLATFORM, str(ticket))

        async def mine() -> list[dict[str, Any]]:
            return [f for f in await site.followups(ticket) if f["user"] == site.users["bot"] and f["public"]]

        async def visible() -> list[str]:
            return [f["comment"].replace("\u200b", "").strip() for f in await mine()]

        async def files() -> list[str]:
            return [a["filename"] for f in await mine() for a in f["followupattachment_set"]]

        yield Screen(lambda context: HelpdeskSink(adapter, replace(context, key=key)), visible, files)
        await adapter.close()


@pytest.mark.asyncio(loop_scope="class")
class TestHelpdeskFetcher(FetcherContract):
    """Files the customer e-mailed, read back from the site (its own host only)."""

    @pytest.fixture
    def files(self, shared_site: HelpdeskSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileSource:
        site = shared_site
        fetcher = HelpdeskFetcher(_adapter(site, tmp_path, monkeypatch))

        async def add(data: bytes, name: str) -> tuple[HelpdeskFetcher, Attachment]:
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            ticket = await site.customer_ticket("Fetcher contract", "see the file", (name, data, mime), via="email")
            [followup] = await site.followups(ticket)
            [file] = followup["followupattachment_set"]
            return fetcher, Attachment(file["file"], file["filename"], file["mime_type"], file["size"])

        async def missing() -> tuple[HelpdeskFetcher, Attachment]:
            return fetcher, Attachment("/media/helpdesk/attachments/support-0-gone/1/part-1_gone.png", "gone.png")

        return FileSource(add, missing)
