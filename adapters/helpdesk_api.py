"""A generic helpdesk API: any other helpdesk (Zendesk, Freshdesk, Zammad, an in-house one) posts customers'
messages as JSON and gets the answers by a signed callback, by polling, or both.

Every request is signed like the framework's own webhooks, with the secret in the environment variable
``secret_env`` (``HELPDESK_API_SECRET``): headers ``X-InternVL-Bot-Timestamp: <unix seconds>`` and
``X-InternVL-Bot-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<signed>")>``, where ``<signed>`` is
the raw body of a POST and the request target (path and query, as sent: ``/api/helpdesk/v1/conversations/c1/
messages?after=3``) of a GET. Unsigned, wrong or stale (> 5 min) requests get 401. A mode change whose
signature was accepted before (the same signed request sent again) gets ``200 {"replayed": true}`` and does
nothing; a message needs no such memory (its ``message_id`` makes a repeat a duplicate).

- ``POST /api/helpdesk/v1/messages``: a customer's message (``conversation_id``, ``message_id``, ``text``,
  ``customer``, ``attachments`` by URL — fetched only from ``attachment_hosts``, from non-public addresses only
  within ``allow_private_networks`` — or inline as base64; ``assist: true`` makes every answer a private draft
  for agents). Stored before the 202 (the store failing: 503 with ``Retry-After``, send it again); the same
  ``message_id`` again (a retry) is the same message, answered once.
- ``GET /api/helpdesk/v1/conversations/{conversation_id}/messages?after=<id>``: the assistant's replies after
  a cursor, and whether the bot or a person has the conversation. A reply with a picture (the boxes the model
  drew) lists it in ``files``, each with the ``url`` (``…/conversations/{conversation_id}/files/{sha256}``)
  a signed GET fetches it from.
- ``POST /api/helpdesk/v1/conversations/{conversation_id}/mode``: agents take the conversation (``human``:
  the bot stays silent) or give it back (``bot``), without a message to the customer.
- Callbacks (``callback_url``): each reply POSTed as JSON with the same signature headers and
  ``X-InternVL-Bot-Delivery`` (the same on retries, and for a turn re-run after a restart: receivers drop
  deliveries they have seen). Retried with back-off on connection errors, 429 and 5xx; polling stays the source
  of truth.

The routes and their JSON shapes are in the served OpenAPI schema (``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.common.auth import SignedBody, same
from adapters.common.base import PlatformAdapter
from adapters.common.http import BadRequest, StoredFiles, download
from adapters.common.sink import Message, PostingSink
from adapters.common.urlguard import (
    NetworkList,
    UrlGuard,
    UrlRefused,
    host_allowed,
    require_https,
)
from bot.config import AdapterSection, Settings
from bot.errors import AttachmentUnavailable, FileTooLarge, ShuttingDown, StartupError, describe
from bot.handoff.notifiers import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from bot.ops.checks import CheckResult, shown, unreachable
from bot.ops.logs import conversation_var, register_secret
from bot.seams import Channel
from bot.store import StoredMessage, checked_sha256, is_store_error
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffUpdate,
    IncomingMessage,
    Notice,
    Sender,
    SinkContext,
)

if TYPE_CHECKING:
    from bot.conversation.manager import ConversationManager

log = logging.getLogger(__name__)

PLATFORM = "helpdesk_api"
PREFIX = "/api/helpdesk/v1"
DELIVERY_HEADER = "X-InternVL-Bot-Delivery"
MAX_REDIRECTS = 5
#: How many stored messages of a conversation polling looks at (the newest ones).
POLL_WINDOW = 500
#: Retry-After (seconds) of a 503 for a message the store failed to take: a database blip, not a restart.
STORE_RETRY_AFTER = 1

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]


class HelpdeskApiSettings(AdapterSection):
    """``adapters.helpdesk_api``: the generic helpdesk API."""

    secrets: ClassVar[dict[str, str]] = {"secret_env": "the secret that signs requests and callbacks"}

    enabled: bool = False
    persona: str = "support"
    secret_env: str = Field("HELPDESK_API_SECRET", description="environment variable with the HMAC secret")
    callback_url: str = Field("", description="where replies are POSTed, signed; empty = polling only")
    callback_attempts: int = Field(5, ge=1, le=20, description="accepted for older configs; a callback that "
                                   "fails is now sent again by the outbox until conversation.delivery_deadline_seconds")
    attachment_hosts: list[str] = Field(
        default_factory=list, description="hosts attachment URLs may come from (*.example.com allowed); "
                                          "empty = attachments only inline")
    allow_private_networks: NetworkList = Field(
        default_factory=list, description="networks attachment URLs may reach although not public (a file "
                                          "server on the company network: 10.0.0.0/8); empty = public addresses only")
    max_request_bytes: int = Field(25_000_000, ge=10_000, description="largest request body (inline files count)")
    max_files_per_message: int = Field(10, ge=0, le=50)


# -- the API's JSON shapes (served in the OpenAPI schema) ------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=32_000)


class ApiAttachment(_Model):
    """A file of the customer's message: by ``url`` (fetched from ``attachment_hosts`` only) or inline
    (``data``, base64)."""

    url: str | None = Field(None, max_length=2048, description="http(s) URL on one of the configured hosts")
    data: str | None = Field(None, max_length=40_000_000, description="the file itself, base64")
    filename: str = Field("file", min_length=1, max_length=255)
    mime_type: str = Field("", max_length=200, description="e.g. image/png; guessed from the content if empty")
    size: int | None = Field(None, ge=0, description="bytes, when known: too large files are refused before "
                                                     "any download")

    @model_validator(mode="after")
    def _one_source(self) -> ApiAttachment:
        if (self.url is None) == (self.data is None):
            raise ValueError("an attachment has either url or data")
        return self


class ApiCustomer(_Model):
    id: Identifier = Field(description="the customer's id in the helpdesk")
    name: str = Field("", max_length=200)
    email: str = Field("", max_length=320)


class ApiMessage(_Model):
    """A customer's message. ``message_id`` is its id in the helpdesk: a retry with the same id is the same
    message, answered once."""

    conversation_id: Identifier = Field(description="the helpdesk's ticket or conversation id")
    message_id: Identifier
    text: str = Field("", max_length=32_000)
    customer: ApiCustomer
    language: str | None = Field(None, max_length=35, pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$",
                                 description="the customer's locale (BCP 47), when the helpdesk knows it")
    attachments: list[ApiAttachment] = Field(default_factory=list, max_length=50)
    assist: bool = Field(False, description="answers go to agents as private drafts, never to the customer")

    @model_validator(mode="after")
    def _not_empty(self) -> ApiMessage:
        if not self.text.strip() and not self.attachments:
            raise ValueError("a message has text or attachments")
        return self


class Accepted(BaseModel):
    conversation_id: str
    message_id: str
    duplicate: bool = Field(description="true when this message_id was posted before (answered once)")
    held: bool = Field(description="true when a person has the conversation: the bot does not answer")


class ApiFile(BaseModel):
    """A file a reply carries (a picture with the boxes the model drew): fetched by a signed GET of ``url``."""

    filename: str
    mime_type: str
    size: int | None
    sha256: str
    url: str = Field(description="the request target to GET, signed like every GET")


class ApiReply(BaseModel):
    """One reply of the assistant (or of a person through the operator API). ``id`` is the polling cursor."""

    id: int
    type: Literal["answer", "notice", "command"]
    text: str
    in_reply_to: str | None = Field(description="the message_id of the customer's message it answers")
    private: bool = Field(description="a draft for agents (assist), not for the customer")
    failed: bool = Field(description="the text says the answer failed")
    author: str = Field(description="a person's name for an operator's reply; empty for the assistant")
    files: list[ApiFile] = Field(default_factory=list, description="what a callback of type file carries")
    created_at: float


class ApiConversation(BaseModel):
    conversation_id: str
    mode: Literal["bot", "human"] = Field(description="human: a person has it and the bot is silent")
    replies: list[ApiReply]
    next_after: int = Field(description="pass as ?after= to get only newer replies")


class ModeChange(_Model):
    mode: Literal["bot", "human"]
    by: str = Field("agent", min_length=1, max_length=200, description="who, for the log and the transcript")


class ModeResult(BaseModel):
    conversation_id: str
    mode: Literal["bot", "human"]
    changed: bool


class ApiError(BaseModel):
    error: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ApiCallback(BaseModel):
    """What ``callback_url`` receives, one POST per reply."""

    id: str = Field(description="the delivery id, also in X-InternVL-Bot-Delivery; the same on retries")
    type: Literal["answer", "notice", "handoff", "file"]
    conversation_id: str
    in_reply_to: str | None
    text: str
    private: bool
    language: str
    author: str = ""
    handoff: dict[str, str] | None = Field(None, description="type handoff: state (requested, taken, returned) "
                                                             "and reason")
    file: dict[str, Any] | None = Field(None, description="type file: filename, mime_type, size, data (base64)")
    at: float


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` put in place (an OpenAPI request body cannot point at them)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema(model)}}}}


_SIGNED = {"parameters": [
    {"name": TIMESTAMP_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
     "description": "unix seconds; requests older than 5 minutes are refused"},
    {"name": SIGNATURE_HEADER, "in": "header", "required": True, "schema": {"type": "string"},
     "description": 'sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>; for a GET the request target '
                    "(path and query) stands for the body"},
]}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ApiError, "description": "unsigned, wrong or stale signature"},
    413: {"model": ApiError, "description": "the body or an inline file is too large"},
    400: {"model": ApiError, "description": "the JSON or the path does not fit the schema (details say where)"},
    503: {"model": ApiError, "description": "the service is restarting, or its database failed for a moment: the "
                                           "message was not taken; retry after Retry-After seconds"},
}


# -- attachments ------------------------------------------------------------------------------------------------


class ApiFetcher:
    """``url:<url>`` attachments from the configured hosts (redirects followed only within them);
    ``blob:<sha256>`` inline files, kept in the store before the message was."""

    def __init__(self, adapter: HelpdeskApiAdapter) -> None:
        self.adapter = adapter

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        kind, _, ref = attachment.ref.partition(":")
        if kind == "blob":
            return await self.adapter.uploads.fetch(attachment, limit)
        name = attachment.filename or "file"
        if kind != "url":
            raise AttachmentUnavailable(f"bad attachment reference {attachment.ref[:40]!r}", name=name)
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(name=name, size=attachment.size, limit=limit)
        return await download(self.adapter.http, ref, name=name, limit=limit, max_redirects=MAX_REDIRECTS,
                              allowed=lambda url: host_allowed(url, self.adapter.conf.attachment_hosts),
                              guard=self.adapter.guard)


# -- replies ----------------------------------------------------------------------------------------------------


class CallbackSink(PostingSink):
    """One turn's replies as signed callbacks (when ``callback_url`` is set; polling sees them either way).
    A receiver that is down does not fail the turn: the answer is stored and can be polled."""

    def __init__(self, adapter: HelpdeskApiAdapter, context: SinkContext) -> None:
        super().__init__(context)
        self.adapter = adapter
        self.private = context.route.get("assist") == "1"
        self.count = 0

    def _payload(self, answer: bool) -> ApiCallback:
        """A callback with the same id when a turn is re-run after a restart or the outbox sends it again, so
        receivers can drop what they have seen: the turn's own, or the stored reply's, with the event's place."""
        self.count += 1
        context = self.context
        turn = (f"m{context.message_id}" if context.message_id is not None
                else f"r{context.reply_row}" if context.reply_row is not None else uuid.uuid4().hex)
        return ApiCallback(id=f"{turn}-answer" if answer else f"{turn}-{self.count}", type="answer",
                           conversation_id=context.key.chat, in_reply_to=context.reply_to, text="",
                           private=self.private, language=context.language, at=time.time())

    async def post(self, text: str, event: Message) -> tuple[str, ...]:
        payload = self._payload(isinstance(event, AnswerDone))
        if isinstance(event, HandoffUpdate):
            payload.type, payload.text = "handoff", event.text
            payload.handoff = {"state": event.state, "reason": event.reason}
        else:
            payload.type = "answer" if isinstance(event, AnswerDone) else "notice"
            payload.text, payload.author = event.text, event.author if isinstance(event, Notice) else ""
        await self.adapter.callback(payload)
        return (payload.id,)

    async def file(self, reply: FileReply) -> tuple[str, ...]:
        payload = self._payload(False)
        payload.type, payload.text = "file", reply.caption
        payload.file = {"filename": reply.filename, "mime_type": reply.mime, "size": len(reply.data),
                        "data": base64.b64encode(reply.data).decode()}
        await self.adapter.callback(payload)
        return (payload.id,)


class HelpdeskApiAdapter(PlatformAdapter[HelpdeskApiSettings]):
    """See the module docstring. Built by ``serve`` when ``adapters.helpdesk_api.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: HelpdeskApiSettings, *,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(manager, settings, conf)
        self.signing_secret = self.secret(conf.secret_env, "the secret that signs requests and callbacks")
        callback = urlsplit(conf.callback_url)
        if conf.callback_url and callback.scheme not in ("http", "https"):
            raise StartupError("adapters.helpdesk_api.callback_url: an http(s) URL")
        if callback.username or callback.password:  # httpx sends a URL's user:password as HTTP Basic
            require_https(conf.callback_url, "adapters.helpdesk_api.callback_url", "the user and password in it")
            register_secret(callback.password)
        self.verify = SignedBody(conf.secret_env, signature_header=SIGNATURE_HEADER,
                                 timestamp_header=TIMESTAMP_HEADER, max_bytes=conf.max_request_bytes)
        self.guard = UrlGuard(conf.allow_private_networks, setting="adapters.helpdesk_api.allow_private_networks")
        self.http = self.http_client(http, timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False)
        self.uploads = StoredFiles(manager.store)
        self.backoff = 1.0
        self.channel = Channel(PLATFORM, ApiFetcher(self), lambda context: CallbackSink(self, context),
                               conf.persona or None, policy=conf.policy(settings.limits), reaches_people=True,
                               endpoint=shown(conf.callback_url),
                               endpoint_setting="adapters.helpdesk_api.callback_url")
        manager.register(self.channel)
        self.endpoint, self.endpoint_key = self.channel.endpoint, "callback_url"
        self.callbacks_delivered = 0
        self.callbacks_failed = 0

    # -- serve --check -----------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """Where the helpdesk posts, and with ``callback_url``: its host resolves and takes a connection (TLS
        verified for https). Nothing is POSTed there: a request would be a delivery. Callbacks do not go
        through the attachments' address guard, so a private address is said, not refused."""
        results = [CheckResult(True, PLATFORM, f"the helpdesk posts signed messages to "
                                               f"{self.served_at(PREFIX + '/messages')} (HMAC secret in "
                                               f"{self.conf.secret_env})")]
        url = self.conf.callback_url
        if not url:
            results.append(CheckResult(True, PLATFORM, "no callback_url: the helpdesk polls the replies (GET "
                                                       f"{PREFIX}/conversations/{{conversation_id}}/messages)"))
            return results
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            addresses = sorted(await self.guard.addresses(host, port), key=str)
        except (UrlRefused, ValueError) as exc:
            results.append(CheckResult(False, PLATFORM, f"callback_url {shown(url)}: {exc} — check "
                                                        "adapters.helpdesk_api.callback_url"))
            return results
        tls = ssl.create_default_context() if parts.scheme == "https" else None
        try:
            async with asyncio.timeout(10):
                _, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None)
        except (OSError, TimeoutError) as exc:
            results.append(CheckResult(False, PLATFORM, "callback_url: " + unreachable(
                url, exc, "check adapters.helpdesk_api.callback_url and that the helpdesk's receiver runs")))
            return results
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        kinds = sorted({kind for address in addresses if (kind := self.guard.refusal(address))})
        note = f"; {host} is {' and '.join(kinds)} (fine for a helpdesk on your network)" if kinds else ""
        listed = ", ".join(str(a) for a in addresses)
        results.append(CheckResult(True, PLATFORM, f"callback_url {shown(url)}: {host} ({listed}) takes connections"
                                                   f"{' (TLS verified)' if tls else ''}{note}; replies are POSTed "
                                                   "there, signed"))
        return results

    # -- life cycle -------------------------------------------------------------------------

    def announced(self, router: APIRouter) -> list[str]:
        return [f"{PREFIX}/"]  # (its routes are in /openapi.json)

    def ready_detail(self) -> str:
        return f"replies POSTed to {self.endpoint}" if self.endpoint else "replies by polling (no callback_url)"

    def router(self) -> APIRouter:
        r = APIRouter(prefix=PREFIX, tags=["helpdesk API"])
        r.add_api_route("/messages", self.post_message, methods=["POST"], status_code=202,
                        response_model=Accepted, responses={**_ERRORS}, openapi_extra={**_body(ApiMessage), **_SIGNED},
                        summary="Post a customer's message")
        r.add_api_route("/conversations/{conversation_id}/messages", self.poll, methods=["GET"],
                        response_model=ApiConversation, responses={**_ERRORS}, openapi_extra=_SIGNED,
                        summary="The assistant's replies after a cursor")
        r.add_api_route("/conversations/{conversation_id}/files/{sha256}", self.file, methods=["GET"],
                        response_class=Response, responses={**_ERRORS, 404: {"model": ApiError}},
                        openapi_extra=_SIGNED, summary="A file of one of the assistant's replies")
        r.add_api_route("/conversations/{conversation_id}/mode", self.change_mode, methods=["POST"],
                        response_model=ModeResult, responses={**_ERRORS}, openapi_extra={**_body(ModeChange), **_SIGNED},
                        summary="Agents take the conversation or give it back",
                        description='The same signed request again (a replay within its 5 minutes) answers 200 '
                                    '`{"replayed": true}` and changes nothing.')
        return r

    # -- requests ---------------------------------------------------------------------------

    def _check_target(self, request: Request) -> None:
        """A GET is signed over its request target (path and query as sent)."""
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.verify.refuse_unless_signed(request, self.signing_secret, target.encode())

    @staticmethod
    def _invalid(exc: ValidationError) -> JSONResponse:
        details = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors(include_url=False)]
        return JSONResponse({"error": "the JSON does not fit the schema", "details": details}, status_code=400)

    async def post_message(self, request: Request) -> Response:
        # no replay memory here: the same message_id again is the same message (a retry), answered once
        body = await self.verify(request)
        if not self.accepting:
            return self.restarting()
        try:
            message = ApiMessage.model_validate_json(body)
        except ValidationError as exc:
            return self._invalid(exc)
        if len(message.attachments) > self.conf.max_files_per_message:
            return JSONResponse({"error": f"at most {self.conf.max_files_per_message} attachments"}, status_code=400)
        for i, item in enumerate(message.attachments):
            if item.url is not None and not host_allowed(item.url, self.conf.attachment_hosts):
                return JSONResponse({"error": f"attachments[{i}].url is not on an allowed host (attachment_hosts)"},
                                    status_code=400)
        key = ConversationKey(PLATFORM, message.conversation_id)
        conversation_var.set(str(key))
        route = {"assist": "1"} if message.assist else {}
        customer = message.customer
        try:
            attachments = await self._attachments(message)
            ticket = await self.manager.submit(IncomingMessage(
                key=key, sender=Sender(customer.id, customer.name or customer.email or customer.id),
                text=message.text, attachments=attachments, locale=message.language,
                event_id=f"{message.conversation_id}/{message.message_id}", message_id=message.message_id,
                is_direct=True, route=route, raw={"conversation_id": message.conversation_id}))
            conv = await self.manager.store.conversation(key)
        except ShuttingDown:
            return self.restarting()
        except Exception as exc:
            if not is_store_error(exc):
                raise
            # not confirmed: the helpdesk sends it again (the same message_id: answered once, whatever got stored)
            log.error("helpdesk API message %s of %s not stored (the store failed: %s): answered 503",
                      message.message_id, message.conversation_id, describe(exc))
            return JSONResponse({"error": "not stored: the bot's database failed; send it again"}, status_code=503,
                                headers={"Retry-After": str(STORE_RETRY_AFTER)})
        return JSONResponse(Accepted(conversation_id=message.conversation_id, message_id=message.message_id,
                                     duplicate=ticket is None, held=conv.mode == "human").model_dump(),
                            status_code=202)

    async def _attachments(self, message: ApiMessage) -> tuple[Attachment, ...]:
        """Attachments for the store: URLs as they are (fetched later), inline files decoded and kept in the
        store (any replica can then read them)."""
        limit = self.settings.media.max_file_bytes
        found: list[Attachment] = []
        for i, item in enumerate(message.attachments):
            mime = item.mime_type.strip().lower()
            if item.url is not None:
                found.append(Attachment(f"url:{item.url}", item.filename, mime, item.size))
                continue
            assert item.data is not None
            if len(item.data) * 3 // 4 > limit + 3:
                raise BadRequest(f"attachments[{i}] is larger than {limit} bytes", status_code=413)
            try:
                data = base64.b64decode(item.data, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"attachments[{i}].data is not base64", status_code=400) from None
            sha = await self.manager.store.save_blob(data, mime)
            found.append(Attachment(StoredFiles.ref(sha), item.filename, mime, len(data)))
        return tuple(found)

    async def poll(self, request: Request, conversation_id: Identifier, after: int = 0) -> Response:
        self._check_target(request)
        key = ConversationKey(PLATFORM, conversation_id)
        rows = await self.manager.store.transcript(key, limit=POLL_WINDOW)
        users = {row.id: row for row in rows if row.role == "user"}
        replies = [self._reply(row, users, conversation_id) for row in rows
                   if row.role == "assistant" and row.id > after]
        conv = await self.manager.store.conversation(key)
        newest = max((r.id for r in rows), default=after)
        return JSONResponse(ApiConversation(conversation_id=conversation_id, mode=conv.mode, replies=replies,
                                            next_after=max(after, newest)).model_dump())

    @staticmethod
    def _reply(row: StoredMessage, users: dict[int, StoredMessage], conversation_id: str) -> ApiReply:
        asked = users.get(row.reply_to) if row.reply_to is not None else None
        # a helpdesk without callback_url polls: the picture a callback would carry is fetched from its URL
        files = [ApiFile(filename=a.filename or "file", mime_type=a.mime, size=a.size, sha256=a.sha256,
                         url=f"{PREFIX}/conversations/{conversation_id}/files/{a.sha256}")
                 for a in row.attachments if a.sha256]
        return ApiReply(id=row.id, type="answer" if row.kind == "chat" else row.kind, text=row.text,
                        in_reply_to=asked.platform_message_id if asked else None,
                        private=bool(asked and asked.route.get("assist") == "1"), failed=row.state == "failed",
                        author=row.sender_name, files=files, created_at=row.created_at)

    async def file(self, request: Request, conversation_id: Identifier, sha256: str) -> Response:
        """A file of one of the assistant's replies in this conversation (the window polling lists): the
        signature covers the conversation, so a file of another conversation is never served by guessing."""
        self._check_target(request)
        try:
            checked_sha256(sha256)
        except ValueError:
            return JSONResponse({"error": "not a SHA-256"}, status_code=400)
        rows = await self.manager.store.transcript(ConversationKey(PLATFORM, conversation_id), limit=POLL_WINDOW)
        found = next((a for row in rows if row.role == "assistant" for a in row.attachments if a.sha256 == sha256),
                     None)
        if found is None:
            return JSONResponse({"error": "no such file in this conversation"}, status_code=404)
        try:
            data = await self.manager.store.attachment_data(sha256)
        except FileNotFoundError:
            return JSONResponse({"error": "no such file"}, status_code=404)
        return Response(data, media_type=found.mime or "application/octet-stream",
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Content-Disposition": f'attachment; filename="{sha256[:12]}"'})

    async def change_mode(self, request: Request, conversation_id: Identifier) -> Response:
        return await self.verify.once(request, lambda body: self._change_mode(body, conversation_id))

    async def _change_mode(self, body: bytes, conversation_id: str) -> Response:
        try:
            change = ModeChange.model_validate_json(body)
        except ValidationError as exc:
            return self._invalid(exc)
        key = ConversationKey(PLATFORM, conversation_id)
        changed = await self.manager.set_mode(key, change.mode, by=change.by)
        conv = await self.manager.store.conversation(key)
        return JSONResponse(ModeResult(conversation_id=conversation_id, mode=conv.mode, changed=changed).model_dump())

    # -- callbacks --------------------------------------------------------------------------

    async def callback(self, payload: ApiCallback) -> None:
        """POST one reply to ``callback_url``, signed, once. A 429, a 5xx or a network error raises (the
        outbox sends it again later, with the same delivery id, never holding the conversation); a refusal
        (another 4xx) is logged and not retried. Polling has every reply either way."""
        if not self.conf.callback_url:
            return
        body = json.dumps(payload.model_dump(exclude_none=True), ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp, DELIVERY_HEADER: payload.id,
                   SIGNATURE_HEADER: sign(self.signing_secret.encode(), timestamp, body)}
        try:
            response = await self.http.post(self.conf.callback_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.callbacks_failed += 1
            log.warning("helpdesk callback %s: %s (sent again later)", payload.id, type(exc).__name__)
            raise
        if response.is_success:
            self.callbacks_delivered += 1
            return
        self.callbacks_failed += 1
        if response.status_code < 500 and response.status_code != 429:
            log.error("helpdesk callback %s refused: HTTP %d (not sent again; the reply can be polled)", payload.id,
                      response.status_code)
            return
        log.warning("helpdesk callback %s: HTTP %d (sent again later)", payload.id, response.status_code)
        response.raise_for_status()


def verify_callback(secret: str, headers: Mapping[str, str], body: bytes, *, max_age: float = 300) -> bool:
    """For receivers (and tests): True when a callback's signature headers are right for ``body``."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp, signature = lower.get(TIMESTAMP_HEADER.lower(), ""), lower.get(SIGNATURE_HEADER.lower(), "")
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age
    except ValueError:
        return False
    return fresh and same(sign(secret.encode(), timestamp, body), signature)


build = HelpdeskApiAdapter.build


__all__ = ["ApiMessage", "HelpdeskApiAdapter", "HelpdeskApiSettings", "build", "host_allowed", "verify_callback"]
