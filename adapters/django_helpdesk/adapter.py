"""The django-helpdesk adapter (see adapters/django_helpdesk/__init__.py): the webhook, the answers as
follow-ups through the REST API, handoffs to staff and agent-assist drafts."""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from adapters.common.auth import SharedSecret
from adapters.common.base import PlatformAdapter
from adapters.common.http import BadRequest, download, parse_json_object, read_body
from adapters.common.sink import Message, PostingSink
from adapters.common.urlguard import UrlGuard, require_https
from adapters.django_helpdesk import (
    CLOSED,
    MARK_BUCKET,
    PLATFORM,
    QUEUE_BUCKET,
    REOPENED,
    RESOLVED,
    WEBHOOK_PATH,
    DjangoHelpdeskSettings,
    safe_comment,
    spaced_links,
    unspaced_links,
)
from adapters.django_helpdesk.catch_up import CatchUp, describe_failure
from bot.config import Settings
from bot.errors import FileTooLarge, ShuttingDown
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

log = logging.getLogger("adapters.django_helpdesk")  # one logger name for the whole adapter
T = TypeVar("T")

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
        self.queues: dict[int, str] = {}  # queue id -> slug
        self.sweeper = CatchUp(self)
        self._sweeping: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        if self.conf.catch_up_seconds and self._sweeping is None:
            self._sweeping = asyncio.create_task(self.sweeper.loop(), name="django-helpdesk catch-up")

    async def close(self) -> None:
        self.accepting = False
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
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
                      describe_failure(exc), later)
            return JSONResponse({"error": "not stored"}, status_code=500)
        log.debug("django-helpdesk webhook: %s", outcome)
        await self._learn_queue(data)
        return Response(status_code=200)

    async def _learn_queue(self, data: dict[str, Any]) -> None:
        """Remember the queue's slug for its id (the sweep sees only ids; agent-assist queues are slugs)."""
        queue, slug = data["ticket"].get("queue"), data.get("queue_slug")
        if not isinstance(queue, int) or not isinstance(slug, str) or not slug or self.queues.get(queue) == slug:
            return
        self.queues[queue] = slug
        try:
            await self.manager.store.drop_stash(self.queue_bucket, [str(queue)])
            await self.manager.store.stash(self.queue_bucket, str(queue), slug)
        except Exception as exc:
            if not is_store_error(exc):
                raise
            log.debug("queue %d's slug not kept (%s): known until the next restart", queue, describe_failure(exc))

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
        return (await self.handle_turn(data, catch_up=catch_up))[0]

    async def handle_turn(self, data: dict[str, Any], *, catch_up: bool = False) -> tuple[str, Receipt | None]:
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

    # -- catch-up sweep (adapters/django_helpdesk/catch_up.py) -----------------------------

    @property
    def sweeps(self) -> int:
        """Sweeps finished, whatever their outcome (tests wait on it)."""
        return self.sweeper.sweeps

    async def catch_up(self) -> int:
        """One sweep now: how many missed follow-ups were handed on."""
        return await self.sweeper.catch_up()
