"""The django-helpdesk peer (tests/helpdesk_peer.py) is the real thing: webhooks, REST API, attachments.

One site for the module, its webhooks posted to a starlette receiver served by uvicorn in the module's event
loop (where the framework's server will run). django-helpdesk posts webhooks synchronously inside the request
that caused them, so every payload is already recorded when the call that caused it returns.

The recorded examples in tests/payloads/django_helpdesk/ are compared by shape with the live payloads;
``INTERNVL_BOT_RECORD_PAYLOADS=1`` rewrites them (values kept as recorded).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.serving import serve_asgi
from tests.helpdesk_peer import CLOSED, OPEN, REOPENED, RESOLVED, HelpdeskSite, helpdesk_site

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PAYLOADS = Path(__file__).parent / "payloads" / "django_helpdesk"
RECORD = os.environ.get("INTERNVL_BOT_RECORD_PAYLOADS") == "1"


def png(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, "PNG")
    return buffer.getvalue()


class Receiver:
    """Records every webhook; ``hooks[kind]`` runs inside the handler, before the answer (its result is kept)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.hooks: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {}
        self.url = ""

    async def endpoint(self, request: Request) -> JSONResponse:
        payload = await request.json()
        call = {"kind": request.path_params["kind"], "payload": payload, "query": dict(request.query_params),
                "headers": dict(request.headers)}
        self.calls.append(call)
        hook = self.hooks.get(call["kind"])
        if hook is not None:
            call["hook"] = await hook(payload)
        return JSONResponse({"ok": True})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [call for call in self.calls if call["kind"] == kind]

    def reset(self) -> None:
        self.calls.clear()
        self.hooks.clear()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hooks/{kind}", receiver.endpoint, methods=["POST"])])
    async with serve_asgi(app) as receiver.url:
        yield receiver


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HelpdeskSite]:
    async with helpdesk_site(tmp_path_factory.mktemp("helpdesk-peer"),
                             new_ticket_webhook=f"{receiver.url}/hooks/new-ticket?token=t1",
                             followup_webhook=f"{receiver.url}/hooks/followup") as site:
        yield site


@pytest.fixture
def hooks(receiver: Receiver) -> Receiver:
    receiver.reset()
    return receiver


def shape(node: Any) -> Any:
    """The structure of a JSON value: keys and types, lists by their first item."""
    if isinstance(node, dict):
        return {key: shape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [shape(node[0])] if node else []
    return type(node).__name__


def check_recorded(name: str, payload: dict[str, Any]) -> None:
    path = PAYLOADS / f"{name}.json"
    if RECORD or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    assert shape(json.loads(path.read_text())) == shape(payload), f"{path} no longer matches django-helpdesk"


# ---------------------------------------------------------------------------------------------------- tests


async def test_site_and_api_auth(site: HelpdeskSite) -> None:
    assert site.startup_s < 30, site.startup_s
    assert set(site.queues) == {"support", "billing"} and set(site.users) == {"bot", "agent"}
    async with site.client(None) as anonymous:
        response = await anonymous.get("/api/tickets/")
        # Session auth comes first in DRF's list, so no WWW-Authenticate challenge: 403, not 401.
        assert response.status_code == 403
        assert (await anonymous.get("/tickets/submit/")).status_code == 200  # the public form
    async with site.client("bot") as bot, site.client("agent") as agent:
        assert (await bot.get("/api/tickets/")).status_code == 200
        assert (await agent.get("/api/tickets/")).status_code == 200
    async with site.client(None, auth=("bot", "wrong")) as wrong:
        assert (await wrong.get("/api/tickets/")).status_code == 403


async def test_web_ticket_fires_the_new_ticket_webhook(site: HelpdeskSite, hooks: Receiver) -> None:
    image = png()
    ticket_id = await site.customer_ticket("Printer on fire", "It smokes.\nWhat now?",
                                           attachment=("photo.png", image, "image/png"), email="ann@example.com")
    # Posted during the form's request: recorded before customer_ticket returned.
    assert [call["kind"] for call in hooks.calls] == ["new-ticket"]
    call = hooks.calls[0]
    assert call["query"] == {"token": "t1"}  # the URL is posted to verbatim
    assert call["headers"]["content-type"] == "application/json"
    assert call["headers"]["user-agent"].startswith("python-requests/")
    payload = call["payload"]
    assert set(payload) == {"ticket", "queue_slug"}
    ticket = payload["ticket"]
    assert payload["queue_slug"] == "support"
    assert ticket["id"] == ticket_id and ticket["queue"] == site.queues["support"]
    assert ticket["title"] == "Printer on fire" and ticket["submitter_email"] == "ann@example.com"
    assert ticket["description"] == "It smokes.\nWhat now?"
    assert ticket["status"] == OPEN and ticket["assigned_to"] is None and ticket["priority"] == 3
    [first] = ticket["followup_set"]
    assert first["user"] is None and first["public"] is True and first["title"] == "Ticket Opened Via Web"
    assert first["comment"] == ticket["description"]
    [attachment] = first["followupattachment_set"]
    assert attachment["filename"] == "photo.png" and attachment["mime_type"] == "image/png"
    assert attachment["size"] == len(image)
    # Relative to the site root (no request behind the serializer), unguessable (the ticket's secret key),
    # and served without authentication.
    assert re.fullmatch(rf"/media/helpdesk/attachments/support-{ticket_id}-[0-9a-f-]{{36}}/{first['id']}/photo\.png",
                        attachment["file"]), attachment["file"]
    download = await site.download(attachment["file"])
    assert download.status_code == 200 and download.content == image
    assert download.headers["content-type"] == "image/png"
    check_recorded("new_ticket", payload)
    # The REST API shows the same attachment with an absolute URL.
    [api_first] = await site.followups(ticket_id)
    assert api_first["followupattachment_set"][0]["file"] == site.url + attachment["file"]


async def test_customer_email_followup_fires_the_followup_webhook(site: HelpdeskSite, hooks: Receiver) -> None:
    ticket_id = await site.customer_ticket("Refund", "Please refund order 7.", queue="billing", via="email")
    [new] = hooks.of("new-ticket")
    assert new["payload"]["queue_slug"] == "billing" and new["payload"]["ticket"]["id"] == ticket_id
    assert new["payload"]["ticket"]["followup_set"][0]["title"] == "E-Mail Received from customer@example.com"
    assert hooks.of("followup") == []
    hooks.reset()

    image = png((10, 200, 10))
    followup_id = await site.customer_followup(ticket_id, "Here is the receipt — ünïcode.",
                                               attachment=("receipt.png", image, "image/png"))
    assert [call["kind"] for call in hooks.calls] == ["followup"]
    payload = hooks.calls[0]["payload"]
    assert set(payload) == {"ticket", "queue_slug", "followup_id"}
    assert payload["followup_id"] == followup_id and payload["queue_slug"] == "billing"
    followups = {f["id"]: f for f in payload["ticket"]["followup_set"]}
    followup = followups[followup_id]
    assert followup["user"] is None and followup["public"] is True
    assert followup["comment"].strip() == "Here is the receipt — ünïcode."
    assert followup["title"] == "E-Mail Received from customer@example.com"
    [attachment] = followup["followupattachment_set"]
    assert attachment["filename"] == "part-1_receipt.png"  # django-helpdesk's name for e-mailed parts
    assert attachment["file"].startswith(f"/media/helpdesk/attachments/billing-{ticket_id}-")
    assert (await site.download(attachment["file"])).content == image
    check_recorded("followup", payload)
    assert [f["id"] for f in await site.followups(ticket_id)] == sorted(followups)


async def test_staff_followups_fire_the_webhook_during_the_rest_request(site: HelpdeskSite,
                                                                         hooks: Receiver) -> None:
    ticket_id = await site.customer_ticket("Question", "How do I reset it?")
    hooks.reset()
    returned = asyncio.Event()

    async def call_back(payload: dict[str, Any]) -> dict[str, Any]:
        # Inside the webhook: the REST request that caused it has not returned, and the (threaded) site
        # answers a REST call meanwhile, already showing the new follow-up.
        seen = [f["id"] for f in await site.followups(payload["ticket"]["id"])]
        return {"rest_call_returned": returned.is_set(), "followup_visible": payload["followup_id"] in seen}

    hooks.hooks["followup"] = call_back
    created = await site.staff_followup(ticket_id, "Hold the button for 5 s.", user="bot")
    returned.set()
    assert created["user"] == site.users["bot"] and created["public"] is True
    [call] = hooks.of("followup")
    assert call["payload"]["followup_id"] == created["id"]
    assert call["hook"] == {"rest_call_returned": False, "followup_visible": True}
    [in_payload] = [f for f in call["payload"]["ticket"]["followup_set"] if f["id"] == created["id"]]
    assert in_payload["user"] == site.users["bot"] and in_payload["comment"] == "Hold the button for 5 s."

    # A human's note (private) fires it too: the receiver must look at `user` and `public` itself.
    hooks.reset()
    note = await site.staff_followup(ticket_id, "Customer seems confused.", public=False)
    [call] = hooks.of("followup")
    assert call["payload"]["followup_id"] == note["id"]
    # REST follow-ups default to public=false; the follow-up is always authored by the caller.
    hooks.reset()
    async with site.client("agent") as agent:
        response = await agent.post("/api/followups/", json={"ticket": ticket_id, "comment": "x",
                                                             "user": site.users["bot"]})
    assert response.status_code == 201
    assert response.json()["public"] is False and response.json()["user"] == site.users["agent"]
    assert len(hooks.of("followup")) == 1

    followups = await site.followups(ticket_id)
    assert [(f["user"], f["public"]) for f in followups] == [
        (None, True), (site.users["bot"], True), (site.users["agent"], False), (site.users["agent"], False)]


async def test_staff_followup_with_attachment(site: HelpdeskSite, hooks: Receiver) -> None:
    ticket_id = await site.customer_ticket("Screenshot please", "See below.")
    image = png((0, 0, 255))
    created = await site.staff_followup(ticket_id, "Annotated:", user="bot",
                                        attachments=[("annotated.png", image, "image/png")])
    [attachment] = created["followupattachment_set"]
    assert attachment["filename"] == "annotated.png" and attachment["file"].startswith(site.url + "/media/")
    assert (await site.download(attachment["file"])).content == image
    [call] = hooks.of("followup")
    assert call["payload"]["followup_id"] == created["id"]


async def test_resolve_reopen_assign(site: HelpdeskSite, hooks: Receiver) -> None:
    ticket_id = await site.customer_ticket("Reopen me", "Broken again?")
    hooks.reset()
    resolved = await site.staff_followup(ticket_id, "Fixed.", user="bot", new_status=RESOLVED)
    assert resolved["new_status"] == RESOLVED
    [call] = hooks.of("followup")
    assert call["payload"]["ticket"]["status"] == RESOLVED and call["payload"]["ticket"]["resolution"] == "Fixed."

    # A customer's e-mail does not re-open a *resolved* ticket (only closed ones, HELPDESK_EMAIL_REOPEN_STATUSES).
    await site.customer_followup(ticket_id, "Still broken!")
    assert (await site.ticket(ticket_id))["status"] == RESOLVED

    # Handing over to a human: re-open and assign with a PATCH (a plain update: no follow-up, no webhook).
    hooks.reset()
    updated = await site.update_ticket(ticket_id, status=REOPENED, assigned_to=site.users["agent"])
    assert updated["status"] == REOPENED and updated["assigned_to"] == site.users["agent"]
    assert hooks.calls == []
    ticket = await site.ticket(ticket_id)
    assert ticket["status"] == REOPENED and ticket["assigned_to"] == site.users["agent"]

    # Closed, then the customer writes: django-helpdesk re-opens it and the follow-up records the change.
    await site.staff_followup(ticket_id, "Closing.", new_status=CLOSED)
    hooks.reset()
    followup_id = await site.customer_followup(ticket_id, "Not fixed.")
    [call] = hooks.of("followup")
    assert call["payload"]["ticket"]["status"] == REOPENED
    [followup] = [f for f in call["payload"]["ticket"]["followup_set"] if f["id"] == followup_id]
    assert followup["new_status"] == REOPENED and followup["title"].startswith("Ticket Re-Opened by E-Mail")


async def test_comments_are_rendered_as_django_templates(site: HelpdeskSite, hooks: Receiver) -> None:
    """update_ticket renders every comment as a Django template against the ticket: ``{{ … }}`` is
    substituted (unknown names vanish); ``{% … %}`` is kept literally (wrapped in verbatim)."""
    ticket_id = await site.customer_ticket("Braces", "Template text.")
    created = await site.staff_followup(ticket_id, "Title: {{ ticket.title }}; x={{ x }}; {% if a %}", user="bot")
    assert created["comment"] == "Title: Braces; x=; {% if a %}"


async def test_slow_or_failing_receiver(site: HelpdeskSite, hooks: Receiver) -> None:
    """One POST per URL, never retried; an error status is ignored; past HELPDESK_WEBHOOK_TIMEOUT (3 s)
    django-helpdesk logs the timeout and carries on: the request that caused the webhook waited that long."""
    ticket_id = await site.customer_ticket("Slow", "Receiver.")

    async def fail(payload: dict[str, Any]) -> None:
        raise RuntimeError("receiver error")  # starlette answers 500

    hooks.reset()
    hooks.hooks["followup"] = fail
    await site.staff_followup(ticket_id, "One.", user="bot")
    assert len(hooks.of("followup")) == 1

    async def slow(payload: dict[str, Any]) -> None:
        await asyncio.sleep(3.3)

    hooks.reset()
    hooks.hooks["followup"] = slow
    started = asyncio.get_running_loop().time()
    created = await site.staff_followup(ticket_id, "Two.", user="bot")
    assert asyncio.get_running_loop().time() - started >= 3
    assert len(hooks.of("followup")) == 1
    assert "Timeout while sending followup webhook to" in site.log()
    assert created["id"] in [f["id"] for f in await site.followups(ticket_id)]


async def test_receiver_down_makes_the_caller_fail(receiver: Receiver, tmp_path: Path) -> None:
    """A refused connection is not caught (only timeouts are): the request that caused the webhook answers
    500, after saving. The follow-up variable is split on a comma with whitespace on both sides; URLs are
    posted in order and the first failure stops the rest."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/gone"
    receiver.reset()
    async with helpdesk_site(tmp_path, new_ticket_webhook=dead,
                             followup_webhook=f"{receiver.url}/hooks/first , {dead} , {receiver.url}/hooks/third") as other:
        async with other.client(None) as anonymous:
            await anonymous.get("/tickets/submit/")
            response = await anonymous.post("/tickets/submit/", data={
                "csrfmiddlewaretoken": anonymous.cookies["csrftoken"], "queue": str(other.queues["support"]),
                "title": "Nobody listens", "body": "Hello?", "priority": "3", "submitter_email": "a@example.com"})
        assert response.status_code == 500
        [ticket] = (await other.api("GET", "/api/tickets/"))["results"]
        assert ticket["title"] == "Nobody listens"
        async with other.client("bot") as bot:
            response = await bot.post("/api/followups/", json={"ticket": ticket["id"], "comment": "Hi", "public": True})
        assert response.status_code == 500
        assert [call["kind"] for call in receiver.calls] == ["first"]
        assert [f["comment"] for f in await other.followups(ticket["id"])] == ["Hello?", "Hi"]
