"""django-helpdesk: the assistant answers new tickets and customers' follow-ups, and hands tickets to staff.

django-helpdesk POSTs a webhook for every new ticket and every new follow-up (environment variables
``HELPDESK_NEW_TICKET_WEBHOOK_URLS`` and ``HELPDESK_FOLLOWUP_WEBHOOK_URLS`` on the helpdesk's side), unsigned,
synchronously, with a 3 s timeout: a slow receiver blocks the helpdesk, and the bot's own follow-up fires the
follow-up webhook back at the bot during the very request that creates it. So ``POST
/django-helpdesk/webhook?token=…`` checks the token (the URL carries it, or ``Authorization: Bearer`` when a
proxy adds it; it never reaches the bot's log), stores the customer's message and answers at once; the answer is written in the background through the helpdesk's REST
API (staff-only, Basic auth), as a follow-up.

Answered: every new ticket a customer filed (the web form, e-mail), and follow-ups that are public and have no
user (a customer's e-mail). Never staff's follow-ups, never the bot's own. A handoff (``/human``, a plain
request, the persona's policy, the model saying it cannot help) answers the customer politely, re-opens the
ticket (and assigns it when ``handoff_assignee`` is set) and adds an internal note saying why; while staff
have it the bot stays silent, until a staff member writes ``/bot`` as a private follow-up (or the operator API
gives it back). In agent-assist queues every draft is a private follow-up for staff, nothing public.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urljoin, urlsplit

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from adapters.common.auth import SharedSecret
from adapters.common.http import BadRequest, download, parse_json_object, read_body
from adapters.common.urlguard import NetworkList, UrlGuard, require_https
from bot.config import AdapterSection, IdList, Settings
from bot.errors import FileTooLarge, ShuttingDown, StartupError
from bot.logs import conversation_var, register_secret
from bot.types import (
    AnswerDone,
    Attachment,
    Channel,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    PlatformIds,
    ReplyEvent,
    Sender,
    SinkContext,
)

if TYPE_CHECKING:
    from bot.manager import ConversationManager
    from bot.runtime import Runtime

log = logging.getLogger(__name__)

PLATFORM = "django_helpdesk"
WEBHOOK_PATH = "/django-helpdesk/webhook"
REOPENED = 2
# django-helpdesk 2.6's default HELPDESK_VALID_EXTENSIONS: a file with another extension makes the REST call fail
# with a 500 after the follow-up itself was saved
HELPDESK_DEFAULT_EXTENSIONS = (".txt", ".asc", ".pdf", ".doc", ".docx", ".odt", ".jpg", ".png", ".eml")


class DjangoHelpdeskSettings(AdapterSection):
    """``adapters.django_helpdesk``: answers in a django-helpdesk (2.6)."""

    secrets: ClassVar[dict[str, str]] = {
        "username_env": "the API user's name (a staff user)", "password_env": "the API user's password",
        "webhook_token_env": "the token the webhook URLs carry (?token=…)"}

    enabled: bool = False
    persona: str = "support"
    base_url: str = Field("", description="the helpdesk's site root; its REST API is under /api/")
    username_env: str = Field("HELPDESK_API_USER", description="environment variable with the API user (staff)")
    password_env: str = Field("HELPDESK_API_PASSWORD", description="environment variable with its password")
    webhook_token_env: str = Field("HELPDESK_WEBHOOK_TOKEN", description="environment variable with the webhook token")
    agent_assist_queues: IdList = Field(default_factory=list, description="queue slugs where drafts go to staff")
    handoff_assignee: int = Field(0, ge=0, description="user id a handed-off ticket is assigned to; 0 = nobody")
    integration_users: list[int] = Field(
        default_factory=list,
        description="user ids of integration accounts (a website form, a portal) that file tickets through the "
                    "REST API on customers' behalf: their public follow-ups are the customer's. Empty: a new "
                    "ticket's first follow-up counts as the customer's when its author is neither the bot, nor "
                    "the ticket's assignee, and the ticket has a submitter e-mail")
    attachment_extensions: list[str] = Field(
        default_factory=lambda: list(HELPDESK_DEFAULT_EXTENSIONS),
        description="the extensions the helpdesk accepts (its HELPDESK_VALID_EXTENSIONS); an export with another "
                    "extension is attached as <name>.txt")
    allow_private_networks: NetworkList = Field(
        default_factory=list, description="networks attachments may come from although not public (a helpdesk "
                                          "on the company network: 10.0.0.0/8); empty = public addresses only")


def safe_comment(text: str) -> str:
    """django-helpdesk renders follow-up comments as Django templates (``{{ … }}`` is evaluated) after wrapping
    every ``{%`` and every ``%}`` in ``verbatim`` tags: so a lone ``%}`` or ``{%`` in an answer makes the REST
    call fail with a template syntax error. A zero-width space inside each ``{{``, ``{%``, ``{#`` and ``%}`` keeps
    them literal (and invisible)."""
    return _TEMPLATE_OPENERS.sub("{\u200b", _TAG_CLOSERS.sub("%\u200b", text))


_TEMPLATE_OPENERS = re.compile(r"\{(?=[{%#])")
_TAG_CLOSERS = re.compile(r"%(?=\})")


class HelpdeskFetcher:
    """Attachment files, only from the helpdesk's own host, and from a non-public address only when
    ``allow_private_networks`` lists it."""

    def __init__(self, adapter: DjangoHelpdeskAdapter) -> None:
        self.adapter = adapter

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        name = attachment.filename or "file"
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(name=name, size=attachment.size, limit=limit)
        url = urljoin(self.adapter.base_url + "/", attachment.ref)
        home = urlsplit(self.adapter.base_url).netloc
        return await download(self.adapter.http, url, name=name, limit=limit, auth=self.adapter.auth,
                              allowed=lambda url: urlsplit(url).netloc == home, guard=self.adapter.guard)


class HelpdeskSink:
    """One turn's replies as follow-ups of the ticket (private ones in agent-assist queues)."""

    def __init__(self, adapter: DjangoHelpdeskAdapter, context: SinkContext) -> None:
        self.adapter = adapter
        self.ticket = context.key.chat
        self.public = context.route.get("assist") != "1"

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, AnswerDone) and event.silent:
            return None  # cancelled before any text: nothing to post
        if isinstance(event, FileReply):
            return await self.adapter.followup(self.ticket, event.caption or event.filename, public=self.public,
                                               files=[event])
        if isinstance(event, AnswerDone | Notice | HandoffUpdate):
            author = getattr(event, "author", "")
            text = f"{author}: {event.text}" if author else event.text
            ids = await self.adapter.followup(self.ticket, text, public=self.public)
            if isinstance(event, HandoffUpdate) and event.state == "requested" and self.public:
                await self.adapter.hand_to_staff(self.ticket, event.reason or "user")
            return ids
        return None


class DjangoHelpdeskAdapter:
    """See the module docstring. Built by ``serve`` when ``adapters.django_helpdesk.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: DjangoHelpdeskSettings, *,
                 http: httpx.AsyncClient | None = None) -> None:
        self.manager = manager
        self.settings = settings
        self.conf = conf
        if not conf.base_url:
            raise StartupError("adapters.django_helpdesk: set base_url to the helpdesk's site root")
        self.base_url = conf.base_url.rstrip("/")
        require_https(self.base_url, "adapters.django_helpdesk.base_url", "the API user's password (HTTP Basic)")
        values = {}
        for field_name, what in conf.secrets.items():
            env = getattr(conf, field_name)
            values[field_name] = os.environ.get(env, "")
            if not values[field_name]:
                raise StartupError(f"adapters.django_helpdesk: set the environment variable {env} to {what}, or set "
                                   "adapters.django_helpdesk.enabled: false")
        self.username = values["username_env"]
        register_secret(values["password_env"])
        register_secret(values["webhook_token_env"])
        self.auth = httpx.BasicAuth(self.username, values["password_env"])
        self.guard = UrlGuard(conf.allow_private_networks, setting="adapters.django_helpdesk.allow_private_networks")
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        self._own_http = http is None
        self.assist = {str(q) for q in conf.agent_assist_queues}
        self.channel = Channel(PLATFORM, HelpdeskFetcher(self), lambda context: HelpdeskSink(self, context),
                               conf.persona or None, policy=conf.policy(settings.limits), reaches_people=True)
        manager.register(self.channel)
        self.bot_user: int | None = None
        self._accepting = False

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._accepting = True

    def stop_intake(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        if self._own_http:
            await self.http.aclose()

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False,
                        dependencies=[Depends(SharedSecret(self.conf.webhook_token_env, query="token", bearer=True))])
        return r

    # -- REST -------------------------------------------------------------------------------

    async def followup(self, ticket: str, comment: str, *, public: bool,
                       files: list[FileReply] | None = None) -> tuple[str, ...]:
        """A follow-up by the API user; returns its id. (django-helpdesk fires the follow-up webhook back at
        us during this request: the webhook answers without waiting on anything.)"""
        data = {"ticket": ticket, "comment": safe_comment(comment), "public": "true" if public else "false"}
        if files:
            response = await self.http.post(f"{self.base_url}/api/followups/", data=data, auth=self.auth,
                                            files=[("attachments", self.accepted(f)) for f in files])
        else:
            response = await self.http.post(f"{self.base_url}/api/followups/", json={**data, "public": public},
                                            auth=self.auth)
        response.raise_for_status()
        body = response.json()
        if self.bot_user is None and isinstance(body.get("user"), int):
            self.bot_user = body["user"]
        return (str(body.get("id", "")),)

    def accepted(self, file: FileReply) -> tuple[str, bytes, str]:
        """The file as the helpdesk will take it: a name with an extension it accepts (text as ``.txt``)."""
        allowed = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.conf.attachment_extensions}
        name = file.filename
        if os.path.splitext(name)[1].lower() not in allowed and ".txt" in allowed:
            name = f"{name}.txt"
            return name, file.data, "text/plain"
        return name, file.data, file.mime

    async def hand_to_staff(self, ticket: str, reason: str) -> None:
        """Re-open (and assign) the ticket for staff, with an internal note saying why."""
        fields: dict[str, Any] = {"status": REOPENED}
        if self.conf.handoff_assignee:
            fields["assigned_to"] = self.conf.handoff_assignee
        try:
            response = await self.http.patch(f"{self.base_url}/api/tickets/{ticket}/", json=fields, auth=self.auth)
            response.raise_for_status()
            why = {"user": "the customer asked for a person", "model": "the assistant could not help"}.get(
                reason, f"the persona's policy ({reason})" if reason.startswith("policy") else reason)
            await self.followup(ticket, f"The assistant handed this ticket to staff: {why}. It stays silent here "
                                        "until a staff member writes /bot as a private follow-up.", public=False)
        except httpx.HTTPError as exc:
            log.error("handing ticket %s to staff failed: %s", ticket, exc)

    # -- webhook ----------------------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        """A new ticket or follow-up: stored (if it is a customer's), then 200 at once."""
        if not self._accepting:
            return JSONResponse({"error": "restarting"}, status_code=503)
        try:
            data = parse_json_object(await read_body(request, max_bytes=5_000_000), what="the webhook")
            outcome = await self.handle(data)
        except BadRequest as exc:
            return JSONResponse({"error": exc.detail}, status_code=400)
        except ShuttingDown:
            return JSONResponse({"error": "restarting"}, status_code=503)
        log.debug("django-helpdesk webhook: %s", outcome)
        return Response(status_code=200)

    def _on_customers_behalf(self, ticket: dict[str, Any], followup: dict[str, Any], new: bool) -> bool:
        """A follow-up with a (staff) author that still speaks for the customer: an integration account's (the
        REST API is staff-only, so a form or portal filing tickets for customers writes as staff)."""
        author = followup.get("user")
        if author == self.bot_user or not followup.get("public", True):
            return False
        if self.conf.integration_users:
            return author in self.conf.integration_users
        assignee = ticket.get("assigned_to")
        assignee = assignee.get("id") if isinstance(assignee, dict) else assignee
        return new and bool(ticket.get("submitter_email")) and author != assignee

    async def handle(self, data: dict[str, Any]) -> str:
        ticket = data.get("ticket")
        if not isinstance(ticket, dict) or not isinstance(ticket.get("id"), int):
            raise BadRequest("a django-helpdesk webhook has a ticket with an id")
        followups = [f for f in ticket.get("followup_set") or [] if isinstance(f, dict)]
        new = "followup_id" not in data
        followup = followups[0] if new and followups else next(
            (f for f in followups if f.get("id") == data.get("followup_id")), None)
        if followup is None:
            return "ignored: no follow-up"
        key = ConversationKey(PLATFORM, str(ticket["id"]))
        queue = str(data.get("queue_slug") or "")
        if followup.get("user") is not None and not self._on_customers_behalf(ticket, followup, new):
            # staff or the bot itself; a staff's private "/bot" gives the ticket back to the assistant
            if followup.get("user") != self.bot_user and not followup.get("public") and \
                    str(followup.get("comment") or "").strip() == "/bot":
                await self.manager.hand_back(key, by="staff")
                return "given back"
            return "ignored: staff"
        if not followup.get("public", True):
            return "ignored: private"
        comment = str(followup.get("comment") or "").strip()
        text = f"{ticket.get('title', '')}\n\n{comment}".strip() if new else comment
        attachments = tuple(
            Attachment(str(a.get("file") or ""), str(a.get("filename") or "file"), str(a.get("mime_type") or ""),
                       a.get("size") if isinstance(a.get("size"), int) else None)
            for a in followup.get("followupattachment_set") or [] if isinstance(a, dict) and a.get("file"))
        route = {"queue": queue}
        if queue in self.assist:
            route["assist"] = "1"
        conversation_var.set(str(key))
        email = str(ticket.get("submitter_email") or "customer")
        await self.manager.submit(IncomingMessage(
            key=key, sender=Sender(email, email), text=text, attachments=attachments,
            event_id=f"followup:{followup.get('id')}", message_id=str(followup.get("id")), route=route, raw=data))
        return "stored"


def build(runtime: Runtime, conf: DjangoHelpdeskSettings) -> DjangoHelpdeskAdapter:
    """``serve``'s constructor (see adapters/registry.py)."""
    assert runtime.manager is not None
    return DjangoHelpdeskAdapter(runtime.manager, runtime.settings, conf)


__all__ = ["DjangoHelpdeskAdapter", "DjangoHelpdeskSettings", "build", "safe_comment"]
