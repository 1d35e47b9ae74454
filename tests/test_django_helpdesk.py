"""The django-helpdesk adapter against a REAL django-helpdesk 2.6 (tests/helpdesk_site, in a subprocess) whose
webhooks point at the framework's real server: what the customer and staff see on the ticket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.django_helpdesk import DjangoHelpdeskAdapter
from adapters.server import Service, build_app
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.i18n import text as t
from bot.runtime import Runtime
from tests.conftest import image_bytes, make_settings
from tests.fakes.serving import free_port, serve_asgi
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


@contextlib.asynccontextmanager
async def helpdesk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> AsyncIterator[Harness]:
    port = free_port()
    hook = f"http://127.0.0.1:{port}/django-helpdesk/webhook?token={TOKEN}"
    async with helpdesk_site(tmp_path, new_ticket_webhook=hook, followup_webhook=hook) as site:
        monkeypatch.setenv("HELPDESK_API_USER", site.api_user)
        monkeypatch.setenv("HELPDESK_API_PASSWORD", site.api_password)
        monkeypatch.setenv("HELPDESK_WEBHOOK_TOKEN", TOKEN)
        section = {"enabled": True, "base_url": site.url, "allow_private_networks": ["127.0.0.0/8"], **conf}
        settings = make_settings(tmp_path, adapters={"django_helpdesk": section})
        async with Runtime(settings, engine=EchoEngine(context_length=32768)) as runtime:
            assert runtime.manager is not None
            adapter = DjangoHelpdeskAdapter(runtime.manager, runtime.settings,
                                            settings.adapters.django_helpdesk)  # type: ignore[attr-defined]
            service = Service(runtime.settings, runtime, [adapter])
            service.ready = True
            async with serve_asgi(build_app(service), port=port):
                await runtime.manager.start()
                await adapter.start()
                try:
                    yield Harness(site, runtime, adapter, hook)
                finally:
                    adapter.stop_intake()
                    await runtime.manager.stop(2)
                    await adapter.close()


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
