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
gives it back). In agent-assist queues every draft is a private follow-up for staff, nothing public; when staff
then write a public follow-up, the newest draft before it is judged against their text (sent as is, edited,
discarded: :meth:`~bot.conversation.feedback.FeedbackDesk.draft_used`), and a ticket resolved or closed without
a public reply discards it — once per draft, however often the webhook or the sweep delivers the follow-up.

django-helpdesk posts each webhook once (``requests.post``, no retry, whatever the answer): a webhook the bot
refused (restarting: 503; its database failing: 500) or never got would lose the customer's message. So a
catch-up sweep reads the newest follow-ups through the REST API (the last page or pages, never the whole
history) at start and every ``catch_up_seconds``, and hands every follow-up newer than its high-water mark to
the same :meth:`DjangoHelpdeskAdapter.handle` as the webhook. The store drops what the webhook already stored
(event id ``followup:<id>``), so nothing is answered twice; the mark lives in the store's stash, so a restart
resumes where the last sweep stopped, and the very first sweep only sets it (old tickets are history, not
questions).
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from adapters.common.auth import SharedSecret
from adapters.common.base import PlatformAdapter
from adapters.common.http import BadRequest, download, parse_json_object, read_body
from adapters.common.sink import Message, PostingSink
from adapters.common.urlguard import NetworkList, UrlGuard, require_https
from bot.config import AdapterSection, IdList, Settings
from bot.errors import FileTooLarge, ShuttingDown, describe
from bot.ops.checks import CheckResult, platform_said, unreachable
from bot.ops.checks import shown as shown_url
from bot.ops.logs import conversation_var
from bot.seams import Channel
from bot.store import StoredMessage, is_store_error
from bot.types import (
    Attachment,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Sender,
    SinkContext,
)

if TYPE_CHECKING:
    from bot.conversation.manager import ConversationManager, Receipt

log = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORM = "django_helpdesk"
WEBHOOK_PATH = "/django-helpdesk/webhook"
REOPENED = 2
#: django-helpdesk's statuses of a ticket that is done with (a follow-up's ``new_status`` when staff close it)
RESOLVED, CLOSED = 3, 4
# django-helpdesk 2.6's default HELPDESK_VALID_EXTENSIONS: a file with another extension makes the REST call fail
# with a 500 after the follow-up itself was saved
HELPDESK_DEFAULT_EXTENSIONS = (".txt", ".asc", ".pdf", ".doc", ".docx", ".odt", ".jpg", ".png", ".eml")
#: Stash buckets (each followed by the base URL: another helpdesk has other ids): the newest follow-up id the
#: catch-up sweep has handed on, and queue id -> slug as webhooks told it (the REST API gives only the id).
MARK_BUCKET = "django_helpdesk:catch_up:"
QUEUE_BUCKET = "django_helpdesk:queues:"
CATCH_UP_PAGE = 100  # follow-ups a sweep reads per request
CATCH_UP_PAGES = 10  # pages one sweep reads back at most: a longer backlog is logged, its oldest part skipped
CATCH_UP_TURN_WAIT = 300.0  # seconds a sweep waits for a ticket's answer before it hands on the next message there


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
        description="the extensions the helpdesk accepts (its HELPDESK_VALID_EXTENSIONS); a file with another "
                    "extension goes under an accepted one of its type, a text export as <name>.txt")
    allow_private_networks: NetworkList = Field(
        default_factory=list, description="networks attachments may come from although not public (a helpdesk "
                                          "on the company network: 10.0.0.0/8); empty = public addresses only")
    catch_up_seconds: float = Field(
        60.0, ge=0,
        description="django-helpdesk sends each webhook once, never again: a follow-up whose webhook the bot "
                    "missed (down, restarting, its database failing) is found by a sweep of the newest follow-ups "
                    "through the REST API, at start and then every this many seconds, and answered once; the "
                    "first start only notes where the helpdesk is (older tickets are not answered); 0 = no sweep")


def safe_comment(text: str) -> str:
    """django-helpdesk renders follow-up comments as Django templates (``{{ … }}`` is evaluated) after wrapping
    every ``{%`` and every ``%}`` in ``verbatim`` tags: so a lone ``%}`` or ``{%`` in an answer makes the REST
    call fail with a template syntax error. A zero-width space inside each ``{{``, ``{%``, ``{#`` and ``%}`` keeps
    them literal (and invisible)."""
    return _TEMPLATE_OPENERS.sub("{\u200b", _TAG_CLOSERS.sub("%\u200b", text))


_TEMPLATE_OPENERS = re.compile(r"\{(?=[{%#])")
_TAG_CLOSERS = re.compile(r"%(?=\})")
_MARKDOWN_LINK = re.compile(r"(\[[^\]\n]*\])\((https?://[^\s()]+)\)")
_SPACED_LINK = re.compile(r"(\[[^\]\n]*\])\( (https?://[^\s()]+) \)")


def spaced_links(text: str) -> str:
    """Markdown links written ``[title]( https://… )``. django-helpdesk shows a follow-up to staff as Markdown,
    but to the customer (the public ticket page) as plain text through Django's ``urlize``, which took
    ``p.2](https://…`` of a Sources footer's ``[Manual p.2](https://…)`` for one address and linked
    ``http://p.2](https://…``: with the spaces, Markdown still makes the link and ``urlize`` links the URL
    alone."""
    return _MARKDOWN_LINK.sub(r"\1( \2 )", text)


def unspaced_links(text: str) -> str:
    """What :func:`spaced_links` changed, undone (a draft as the bot wrote it, to compare with what staff sent)."""
    return _SPACED_LINK.sub(r"\1(\2)", text)


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


class HelpdeskSink(PostingSink):
    """One turn's replies as follow-ups of the ticket (private ones in agent-assist queues)."""

    author_format = "{author}: {text}"

    def __init__(self, adapter: DjangoHelpdeskAdapter, context: SinkContext) -> None:
        super().__init__(context)
        self.adapter = adapter
        self.ticket = context.key.chat
        self.public = context.route.get("assist") != "1"

    async def post(self, text: str, event: Message) -> tuple[str, ...]:
        return await self.adapter.followup(self.ticket, text, public=self.public)

    async def file(self, reply: FileReply) -> tuple[str, ...]:
        return await self.adapter.followup(self.ticket, reply.caption or reply.filename, public=self.public,
                                           files=[reply])

    async def handed_off(self, event: HandoffUpdate) -> None:
        if self.public and event.state == "requested":
            await self.adapter.hand_to_staff(self.ticket, event.reason or "user")


class DjangoHelpdeskAdapter(PlatformAdapter[DjangoHelpdeskSettings]):
    """See the module docstring. Built by ``serve`` when ``adapters.django_helpdesk.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: DjangoHelpdeskSettings, *,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(manager, settings, conf)
        self.base_url = self.setting(conf.base_url, "base_url", "the helpdesk's site root").rstrip("/")
        require_https(self.base_url, "adapters.django_helpdesk.base_url", "the API user's password (HTTP Basic)")
        values = {field_name: self.secret(getattr(conf, field_name), what) for field_name, what in conf.secrets.items()}
        self.username = values["username_env"]
        self.auth = httpx.BasicAuth(self.username, values["password_env"])
        self.guard = UrlGuard(conf.allow_private_networks, setting="adapters.django_helpdesk.allow_private_networks")
        self.http = self.http_client(http, timeout=httpx.Timeout(30.0, connect=10.0))
        self.assist = {str(q) for q in conf.agent_assist_queues}
        self.channel = Channel(PLATFORM, HelpdeskFetcher(self), lambda context: HelpdeskSink(self, context),
                               conf.persona or None, policy=conf.policy(settings.limits), reaches_people=True,
                               endpoint=shown_url(self.base_url),
                               endpoint_setting="adapters.django_helpdesk.base_url")
        manager.register(self.channel)
        self.endpoint, self.endpoint_key = self.channel.endpoint, "base_url"
        self.bot_user: int | None = None
        shown = shown_url(self.base_url)
        self.mark_bucket = f"{MARK_BUCKET}{shown}"
        self.queue_bucket = f"{QUEUE_BUCKET}{shown}"
        self._queues: dict[int, str] = {}  # queue id -> slug
        self._queues_loaded = False
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_lock = asyncio.Lock()
        self.sweeps = 0  # sweeps finished (whatever their outcome): tests wait on it

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if self.conf.catch_up_seconds and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._catch_up_loop(), name="django-helpdesk catch-up")

    async def close(self) -> None:
        self.accepting = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await super().close()

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False,
                        dependencies=[Depends(SharedSecret(self.conf.webhook_token_env, query="token", bearer=True))])
        return r

    # -- serve --check -----------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """The API user logs in and reads what the catch-up sweep reads (``GET /api/followups/``, staff only).
        django-helpdesk 2.6's REST API has no queue list (tickets, user_tickets, followups,
        followups-attachments and users are all it serves), so queues are not checked. Then the webhook URLs
        the helpdesk must be given."""
        url = f"{self.base_url}/api/followups/"
        shown = shown_url(url)
        hooks = CheckResult(True, PLATFORM, f"set HELPDESK_NEW_TICKET_WEBHOOK_URLS and HELPDESK_FOLLOWUP_WEBHOOK_URLS "
                                            f"on the helpdesk to {self.served_at(WEBHOOK_PATH)}?token=<the value of "
                                            f"{self.conf.webhook_token_env}>")
        try:
            response = await self.http.get(url, params={"page_size": 1}, auth=self.auth)
        except httpx.HTTPError as exc:
            return [CheckResult(False, PLATFORM, "GET /api/followups/: " + unreachable(
                url, exc, "check adapters.django_helpdesk.base_url and the network")), hooks]
        users = f"{self.conf.username_env} and {self.conf.password_env}"
        if response.status_code == 200:
            try:
                count = response.json().get("count")
            except (ValueError, AttributeError):
                count = None
            if isinstance(count, int):
                return [CheckResult(True, PLATFORM, f"GET {shown}: the API user {self.username!r} logs in and reads "
                                                    f"the follow-ups ({count} in the helpdesk)"), hooks]
            return [CheckResult(False, PLATFORM, f"GET {shown}: HTTP 200 but not django-helpdesk's follow-up list — "
                                                 "check adapters.django_helpdesk.base_url (the site root)"), hooks]
        said = platform_said(response, "detail")
        # DRF answers bad credentials 401, or 403 when SessionAuthentication comes first (the default order)
        if response.status_code == 401 or "invalid username/password" in said.lower():
            fix = f"set {users} to a staff user's name and password (the helpdesk refuses these)"
        elif response.status_code == 403:
            fix = f"make {self.username!r} a staff user (is_staff), or set {users} to one: the REST API is staff-only"
        elif response.status_code == 404:
            fix = "no REST API there: check adapters.django_helpdesk.base_url (the site root, API under /api/)"
        else:
            fix = "check the helpdesk's log"
        return [CheckResult(False, PLATFORM, f"GET {shown}: the helpdesk said {said} — {fix}"), hooks]

    # -- REST -------------------------------------------------------------------------------

    async def followup(self, ticket: str, comment: str, *, public: bool,
                       files: list[FileReply] | None = None) -> tuple[str, ...]:
        """A follow-up by the API user; returns its id. (django-helpdesk fires the follow-up webhook back at
        us during this request: the webhook answers without waiting on anything.)"""
        data = {"ticket": ticket, "comment": safe_comment(spaced_links(comment)),
                "public": "true" if public else "false"}
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
        """The file as the helpdesk will take it: a name with an extension it accepts — another extension of
        the same type (a JPEG as ``.jpeg`` where only that is listed), else, for text, ``.txt``."""
        allowed = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.conf.attachment_extensions}
        name = file.filename
        stem, extension = os.path.splitext(name)
        if extension.lower() in allowed:
            return name, file.data, file.mime
        other = next((e for e in sorted(mimetypes.guess_all_extensions(file.mime)) if e in allowed), None)
        if other is not None:
            return f"{stem}{other}", file.data, file.mime
        if ".txt" in allowed and (file.mime.startswith("text/") or file.mime == "application/json"):
            return f"{name}.txt", file.data, "text/plain"
        # a picture named .txt would arrive as garbage text: as it is, the helpdesk refuses it and the log says so
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
        """A new ticket or follow-up: stored (if it is a customer's), then 200 at once. django-helpdesk never
        sends it again: what is refused here is the catch-up sweep's to find."""
        if not self.accepting:
            return self.restarting()
        try:
            data = parse_json_object(await read_body(request, max_bytes=5_000_000), what="the webhook")
            outcome = await self.handle(data)
        except BadRequest as exc:
            return JSONResponse({"error": exc.detail}, status_code=400)
        except ShuttingDown:
            return JSONResponse({"error": "restarting"}, status_code=503)
        except Exception as exc:
            if not is_store_error(exc):
                raise
            later = (f"the catch-up sweep answers it within {self.conf.catch_up_seconds:g} s"
                     if self.conf.catch_up_seconds else "unanswered: adapters.django_helpdesk.catch_up_seconds is 0")
            log.error("django-helpdesk webhook not stored (the store failed: %s): answered 500; %s",
                      _describe(exc), later)
            return JSONResponse({"error": "not stored"}, status_code=500)
        log.debug("django-helpdesk webhook: %s", outcome)
        await self._learn_queue(data)
        return Response(status_code=200)

    async def _learn_queue(self, data: dict[str, Any]) -> None:
        """Remember the queue's slug for its id (the sweep sees only ids; agent-assist queues are slugs)."""
        queue, slug = data["ticket"].get("queue"), data.get("queue_slug")
        if not isinstance(queue, int) or not isinstance(slug, str) or not slug or self._queues.get(queue) == slug:
            return
        self._queues[queue] = slug
        try:
            await self.manager.store.drop_stash(self.queue_bucket, [str(queue)])
            await self.manager.store.stash(self.queue_bucket, str(queue), slug)
        except Exception as exc:
            if not is_store_error(exc):
                raise
            log.debug("queue %d's slug not kept (%s): known until the next restart", queue, _describe(exc))

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

    async def handle(self, data: dict[str, Any], *, catch_up: bool = False) -> str:
        """One webhook's payload (``{"ticket": …, "queue_slug": …, "followup_id": …}``; no ``followup_id``: a new
        ticket, its first follow-up): the customer's message submitted, staff's ``/bot`` a give-back. The
        catch-up sweep (``catch_up``) never replays a give-back: staff may have taken the ticket again since."""
        return (await self._handle(data, catch_up=catch_up))[0]

    async def _handle(self, data: dict[str, Any], *, catch_up: bool = False) -> tuple[str, Receipt | None]:
        ticket = data.get("ticket")
        if not isinstance(ticket, dict) or not isinstance(ticket.get("id"), int):
            raise BadRequest("a django-helpdesk webhook has a ticket with an id")
        followups = [f for f in ticket.get("followup_set") or [] if isinstance(f, dict)]
        new = "followup_id" not in data
        followup = followups[0] if new and followups else next(
            (f for f in followups if f.get("id") == data.get("followup_id")), None)
        if followup is None:
            return "ignored: no follow-up", None
        key = ConversationKey(PLATFORM, str(ticket["id"]))
        queue = str(data.get("queue_slug") or "")
        # a queue the sweep knows only by id (no webhook named its slug yet) counts as one: drafts stay private
        assist = queue in self.assist or (not queue and bool(self.assist))
        if followup.get("user") is not None and not self._on_customers_behalf(ticket, followup, new):
            # staff or the bot itself; a staff's private "/bot" gives the ticket back to the assistant
            if not catch_up and followup.get("user") != self.bot_user and not followup.get("public") and \
                    str(followup.get("comment") or "").strip() == "/bot":
                await self.manager.hand_back(key, by="staff")
                return "given back", None
            if assist and not new and followup.get("user") != self.bot_user:
                return await self._judge_draft(key, ticket, followup), None
            return "ignored: staff", None
        if not followup.get("public", True):
            return "ignored: private", None
        comment = str(followup.get("comment") or "").strip()
        text = f"{ticket.get('title', '')}\n\n{comment}".strip() if new else comment
        attachments = tuple(
            Attachment(str(a.get("file") or ""), str(a.get("filename") or "file"), str(a.get("mime_type") or ""),
                       a.get("size") if isinstance(a.get("size"), int) else None)
            for a in followup.get("followupattachment_set") or [] if isinstance(a, dict) and a.get("file"))
        route = {"queue": queue}
        if assist:
            route["assist"] = "1"
        conversation_var.set(str(key))
        email = str(ticket.get("submitter_email") or "customer")
        submitted = await self.manager.submit(IncomingMessage(
            key=key, sender=Sender(email, email), text=text, attachments=attachments,
            event_id=f"followup:{followup.get('id')}", message_id=str(followup.get("id")), route=route, raw=data))
        return ("stored", submitted) if submitted is not None else ("not for the bot (a duplicate, or the policy)", None)

    async def _judge_draft(self, key: ConversationKey, ticket: dict[str, Any], followup: dict[str, Any]) -> str:
        """Staff's follow-up on an agent-assist ticket: a public one is their reply (the newest draft is judged
        against it), a private one that resolves or closes the ticket ends it without one (the draft
        discarded); other private notes say nothing about the draft."""
        public = bool(followup.get("public"))
        if not public and followup.get("new_status") not in (RESOLVED, CLOSED):
            return "ignored: a staff note"
        staff_id = followup.get("id")
        if not isinstance(staff_id, int):
            return "ignored: no follow-up id"
        # the drafts staff could have seen: the bot's private follow-ups older than theirs (ids only grow). A
        # sweep may hand on this follow-up after the bot drafted anew: the newer draft is not this reply's
        drafts = {str(f.get("id")) for f in ticket.get("followup_set") or []
                  if isinstance(f, dict) and not f.get("public") and isinstance(f.get("id"), int)
                  and f["id"] < staff_id}

        def seen(draft: StoredMessage) -> bool:
            return any(p in drafts for p in draft.platform_ids)

        # drafts are posted through safe_comment and spaced_links: a draft copied from the helpdesk keeps the
        # zero-width spaces and the spaced links
        sent = unspaced_links(str(followup.get("comment") or "").replace("\u200b", "")) if public else None
        judged = await self.manager.feedback.draft_used(key, sent, user=str(followup.get("user") or ""), seen=seen)
        return "noted: staff's reply" if judged is not None else "noted: no draft left to judge"

    # -- catch-up sweep -------------------------------------------------------------------

    async def _catch_up_loop(self) -> None:
        while self.accepting:
            await self.catch_up()
            self.sweeps += 1
            await asyncio.sleep(self.conf.catch_up_seconds)

    async def catch_up(self) -> int:
        """One sweep: the follow-ups newer than the high-water mark, each handed to :meth:`handle` as its webhook
        would have been, in order; the mark moves past each one handled. Returns how many were handed on. A
        failure is one log line (what, where, the fix) and ends the sweep where it stood: the next one goes on
        from there. Never raises (but a cancel)."""
        async with self._sweep_lock:
            try:
                return await self._sweep()
            except _SweepFailed as failed:
                if isinstance(failed.error, ShuttingDown):
                    return 0  # stopping: the next start goes on from the mark
                log.warning("django-helpdesk catch-up: %s failed (%s): %s", failed.part, _describe(failed.error),
                            self._fix(failed.error))
            except Exception as exc:  # the sweep never stops the adapter: one line, the next sweep tries again
                log.error("django-helpdesk catch-up failed (%s): %s", _describe(exc), self._fix(exc))
            return 0

    async def _sweep(self) -> int:
        store = self.manager.store
        items = (await _step("reading the high-water mark from the store", store.stashed(self.mark_bucket))
                 ).get(self.mark_bucket, [])
        mark = max((int(item) for item, _ in items if item.isdigit()), default=None)
        if not self._queues_loaded:
            known = await _step("reading the queues' slugs from the store", store.stashed(self.queue_bucket))
            for item, slug in known.get(self.queue_bucket, []):
                if item.isdigit():
                    self._queues.setdefault(int(item), slug)
            self._queues_loaded = True
        followups = await self._newest(mark)
        newest = max((f["id"] for f in followups), default=0)
        if mark is None:  # the first sweep ever: from here on (the helpdesk's past is not a question to us)
            await self._move_mark(newest, items)
            log.info("django-helpdesk catch-up starts after follow-up %d (older ones are not answered)", newest)
            return 0
        if newest < mark:  # ids are never reused: another database behind the same base_url
            log.warning("django-helpdesk catch-up: the newest follow-up (%d) is older than where the last sweep "
                        "stopped (%d): a new helpdesk database? Going on after %d", newest, mark, newest)
            await self._move_mark(newest, items)
            return 0
        handed, start = 0, mark
        failed: _SweepFailed | None = None
        tickets: dict[int, dict[str, Any] | None] = {}
        turns: dict[int, Receipt] = {}  # ticket id -> the turn this sweep started there last
        for followup in sorted((f for f in followups if f["id"] > mark), key=lambda f: f["id"]):
            if not self.accepting:
                break
            try:
                if self._maybe_customers(followup):
                    handed += await self._hand_on(followup, tickets, turns)
            except _SweepFailed as exc:
                failed = exc
                break
            mark = followup["id"]
        if mark != start:
            await self._move_mark(mark, items)
        if failed is not None:
            raise failed
        return handed

    async def _newest(self, mark: int | None) -> list[dict[str, Any]]:
        """The last page of follow-ups (oldest first), and earlier pages until one reaches back to ``mark``."""
        url = f"{self.base_url}/api/followups/"
        page = await self._get(url, {"page": "last", "page_size": CATCH_UP_PAGE})
        found = _followups(page)
        number = max(1, -(-int(page.get("count") or 0) // CATCH_UP_PAGE))
        last = number
        while mark is not None and number > 1 and all(f["id"] > mark for f in found):
            if last - number + 1 >= CATCH_UP_PAGES:
                log.warning("django-helpdesk catch-up: more than %d follow-ups since follow-up %d; only the newest "
                            "are looked at (the bot was away long: read the older tickets yourself)",
                            CATCH_UP_PAGE * CATCH_UP_PAGES, mark)
                break
            number -= 1
            found = _followups(await self._get(url, {"page": number, "page_size": CATCH_UP_PAGE})) + found
        return found

    def _maybe_customers(self, followup: dict[str, Any]) -> bool:
        """Could :meth:`handle` answer this follow-up, or judge a draft with it? (Saves reading the ticket of
        every staff note.)"""
        author = followup.get("user")
        staff = author is not None and author != self.bot_user
        if self.assist and staff and (followup.get("public") or followup.get("new_status") in (RESOLVED, CLOSED)):
            return True  # staff's reply to, or closing of, what may be an agent-assist ticket
        if not followup.get("public", True):
            return False  # private: never the customer's (and a staff /bot is not replayed)
        if author is None:
            return True
        if author == self.bot_user:
            return False
        return author in self.conf.integration_users if self.conf.integration_users else True

    async def _hand_on(self, followup: dict[str, Any], tickets: dict[int, dict[str, Any] | None],
                       turns: dict[int, Receipt]) -> int:
        ticket_id = followup["ticket"]
        if ticket_id not in tickets:
            try:
                tickets[ticket_id] = await self._get(f"{self.base_url}/api/tickets/{ticket_id}/", {})
            except _SweepFailed as failed:
                if not (isinstance(failed.error, httpx.HTTPStatusError) and failed.error.response.status_code == 404):
                    raise
                tickets[ticket_id] = None  # deleted since (or out of the API user's reach)
        ticket = tickets[ticket_id]
        if ticket is None:
            return 0
        first = next((f.get("id") for f in ticket.get("followup_set") or [] if isinstance(f, dict)), None)
        queue = ticket.get("queue")
        data: dict[str, Any] = {"ticket": ticket, "queue_slug": self._queues.get(queue, "") if isinstance(queue, int)
                                else ""}
        if first != followup["id"]:
            data["followup_id"] = followup["id"]
        if ticket_id in turns:
            # the customer wrote these one after the other, not at once: each waits for the answer before it (as
            # its webhook would have), else the next would meet conversation.max_pending_per_conversation
            await asyncio.wait([turns.pop(ticket_id).done], timeout=CATCH_UP_TURN_WAIT)
        try:
            outcome, turn = await self._handle(data, catch_up=True)
        except BadRequest as exc:
            log.warning("django-helpdesk catch-up: follow-up %d skipped (%s)", followup["id"], exc.detail)
            return 0
        except Exception as exc:
            raise _SweepFailed(f"storing follow-up {followup['id']} of ticket {ticket_id}", exc) from None
        log.debug("django-helpdesk catch-up, follow-up %d: %s", followup["id"], outcome)
        if turn is None:
            return 0
        turns[ticket_id] = turn
        return 1

    async def _get(self, url: str, params: dict[str, Any]) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            response = await self.http.get(url, params=params, auth=self.auth)
            response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("the answer is not a JSON object")
            return body

        shown = shown_url(url) + (f"?{httpx.QueryParams(params)}" if params else "")
        return await _step(f"GET {shown}", get())

    async def _move_mark(self, mark: int, old: list[tuple[str, str]]) -> None:
        """The new mark first, then the old ones go (a crash between leaves both: the higher one counts)."""
        store = self.manager.store
        await _step("saving the high-water mark in the store", store.stash(self.mark_bucket, f"{mark:012d}", ""))
        stale = [item for item, _ in old if item != f"{mark:012d}"]
        if stale:
            await _step("saving the high-water mark in the store", store.drop_stash(self.mark_bucket, stale))

    def _fix(self, error: BaseException) -> str:
        again = f"tried again in {self.conf.catch_up_seconds:g} s"
        if isinstance(error, httpx.HTTPStatusError):
            status = error.response.status_code
            if status in (401, 403):
                return (f"the helpdesk refuses the API user: set {self.conf.username_env} and {self.conf.password_env} "
                        f"to a staff user's name and password ({again})")
            if status == 404:
                return f"no REST API there: check adapters.django_helpdesk.base_url (the site root) ({again})"
            return f"the helpdesk answered HTTP {status}; {again}"
        if isinstance(error, httpx.HTTPError):
            return f"the helpdesk cannot be reached: check adapters.django_helpdesk.base_url and the network; {again}"
        if isinstance(error, ShuttingDown):
            return "the bot is stopping"
        if is_store_error(error):
            return f"the bot's database failed; {again}"
        return f"unexpected: please report it; {again}"


class _SweepFailed(Exception):
    """A step of the catch-up sweep failed: ``part`` says which (and the URL)."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(part)
        self.part = part
        self.error = error


async def _step(part: str, work: Awaitable[T]) -> T:
    """``await work``, any failure but a cancel raised as :class:`_SweepFailed` naming ``part``."""
    try:
        return await work
    except _SweepFailed:
        raise
    except Exception as exc:
        raise _SweepFailed(part, exc) from None


def _followups(page: dict[str, Any]) -> list[dict[str, Any]]:
    results = page.get("results")
    return [f for f in results if isinstance(f, dict) and isinstance(f.get("id"), int)
            and isinstance(f.get("ticket"), int)] if isinstance(results, list) else []


def _describe(exc: BaseException) -> str:
    """:func:`bot.errors.describe`, with an HTTP error as its status only (its text repeats the URL)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{type(exc).__name__}: HTTP {exc.response.status_code}"
    return describe(exc)


build = DjangoHelpdeskAdapter.build


__all__ = ["DjangoHelpdeskAdapter", "DjangoHelpdeskSettings", "build", "safe_comment", "spaced_links"]
