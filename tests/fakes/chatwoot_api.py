"""A protocol-faithful fake of Chatwoot for tests, seen from an *Agent Bot*.

``FakeChatwoot`` runs two real HTTP servers (starlette on uvicorn, inside the test's event loop):

* the Chatwoot app on ``http://127.0.0.1:PORT`` (``url``, the adapter's ``base_url``): the REST API an
  agent bot may call and the ActiveStorage ``data_url`` redirects;
* an S3-like storage on another host and port (``storage_url``, ``http://localhost:PORT2``) that serves
  attachment bytes behind presigned URLs, as Chatwoot's production storage does.

The customer and the human agents are driven from the test (``customer_message``, ``agent_message``,
``set_status``, ``widget_opened``...); every event Chatwoot would send the bot is POSTed to ``webhook_url``
like ``AgentBots::WebhookJob`` does. Everything that changes state wakes ``wait_for``: tests never sleep.

Example::

    async with FakeChatwoot() as cw:
        cw.webhook_url = f"{my_adapter_url}/chatwoot/webhook"
        conv = cw.conversation()
        await cw.customer_message(conv, "hi")
        await cw.wait_for(lambda: cw.public_replies(conv))

What is modelled, checked against Chatwoot's source (chatwoot/chatwoot, read through the code index; the
index holds several versions and forks, the newest upstream-looking one was used):

* ``app/listeners/agent_bot_listener.rb``: message_created / message_updated for every message that is
  ``webhook_sendable?`` (``app/models/concerns/message_filter_helpers.rb``: incoming, outgoing or template;
  **private notes are outgoing, so they are sent; activity messages are not**), conversation_opened /
  conversation_resolved / conversation_status_changed (+ ``changed_attributes``) / conversation_updated,
  webwidget_triggered (the contact_inbox's webhook data + ``event_info``). Each event gets a fresh
  ``delivery_id`` (``SecureRandom.uuid``) that retries reuse.
* ``lib/webhooks/trigger.rb`` + ``app/jobs/agent_bots/webhook_job.rb``: a JSON POST (Rails ``to_json``:
  compact, UTF-8, ``< > &`` escaped as ``\\u003c``...) with a 5 s timeout; headers ``X-Chatwoot-Delivery``
  and, when the bot has a secret, ``X-Chatwoot-Timestamp`` (unix seconds, taken anew on each attempt) and
  ``X-Chatwoot-Signature: sha256=HMAC_SHA256(secret, "{timestamp}.{body}")``. Only 429 and 500 are retried
  (``retry_on ... wait: 3.seconds, attempts: 3``); any other failure (other status, timeout, refused
  connection) of a message event, or retries running out, opens a *pending* conversation to humans
  (``conversation.open!`` + the activity "Conversation was marked open by system due to an error with the
  agent bot."), unless the account keeps pending on bot failure.
* ``app/models/message.rb`` (``webhook_data``, ``push_event_data``), ``app/presenters/conversations/
  event_data_presenter.rb`` (the conversation object), ``app/models/attachment.rb`` (``file_type``,
  ``data_url``, ``thumb_url``, ``file_size``, ``width``, ``height``), ``app/models/contact_inbox.rb``.
* REST (``app/controllers/api/v1/accounts/conversations/messages_controller.rb``, ``conversations_controller.rb``,
  ``app/controllers/concerns/access_token_auth_helper.rb``, ``request_exception_handler.rb``): header
  ``api_access_token`` (``api-access-token`` too, as Rack maps both to ``HTTP_API_ACCESS_TOKEN``); none →
  devise's 401 ``{"errors": ["You need to sign in or sign up before continuing."]}``, unknown → 401
  ``{"error": "Invalid Access Token"}``; an agent bot may only call ``BOT_ACCESSIBLE_ENDPOINTS`` (messages
  ``create``; conversations ``show``, ``toggle_status``, ``toggle_typing_status``...), else 401
  ``{"error": "Access to this endpoint is not authorized for bots"}`` (so it cannot list messages, nor read
  ``GET /api/v1/profile``, which answers a user's token with the user's profile). A bot
  asking ``open`` on a *pending* conversation is a ``bot_handoff!`` (the answer's ``success`` is null then).
* The status activity messages of ``app/models/concerns/activity_message_handler.rb`` with the en.yml texts.
* CSAT (``csat_survey_enabled`` inboxes): resolving a conversation posts the survey, a ``template`` message of
  content_type ``input_csat`` (``MessageTemplates::Template::CsatSurvey``, en.yml ``csat_input_message_body``),
  which the bot receives as ``message_created``; the customer's answer (the widget's ``PATCH
  /api/v1/widget/messages/:id`` with ``submitted_values.csat_survey_response`` {rating 1-5,
  feedback_message}) updates that message, and the bot receives ``message_updated``.

* Help Center and history, read with a user's (agent's) token as ``internvl-bot kb`` does
  (``app/controllers/api/v1/accounts/portals_controller.rb``, ``articles_controller.rb``: ``find_by!(slug:)``, so
  an unknown portal is a 404; ``index`` filtered by ``status`` and paged by Kaminari's 25; views
  ``api/v1/accounts/articles/_article.json.jbuilder`` with ``status`` as the enum's name; the public URL
  ``hc/{portal}/articles/{article slug}`` of ``config/routes.rb`` and the public ``json.link``;
  ``ConversationFinder``: ``status`` (default ``open``, ``all``), 25 per page, newest activity first, the
  answer under ``data.meta``/``data.payload``; ``MessageFinder``: the latest 20, ``before=`` 20 older,
  ``after=`` up to 100 newer, oldest first). Article slugs are made as Chatwoot makes them
  (``"#{Time.now.utc.to_i}-#{title.parameterize}"``).
* A throttled request (``fail(..., status=429, retry_after=N)``) answers Rack::Attack's ``Retry later`` with
  ``Retry-After`` (Chatwoot sets ``throttled_response_retry_after_header``).

Simplified: one account, agent bot and agent; no Sidekiq queue (each event is delivered by its own task, so
events of different messages may interleave); ActiveStorage analysis is not run (``width``/``height`` are
null unless given, as they are when ``message_created`` fires before the blob is analysed); the presigned
storage URL is an S3-like shape with the fake's own signature.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.fakes.serving import serve_asgi, walk

PAYLOAD_DIR = Path(__file__).resolve().parent.parent / "payloads" / "chatwoot"
"""Where the recorded webhook payloads live (``load_payload`` reads them)."""
RECORDED_ORIGIN = "https://chatwoot.example.com"
"""The app origin in the recorded payloads' ``data_url``s (``FakeChatwoot.load_payload`` rewrites it)."""

WEBHOOK_TIMEOUT = 5.0
"""``Webhooks::Trigger``: ``GlobalConfig WEBHOOK_TIMEOUT`` or 5 s (open and read)."""
RETRYABLE_STATUSES = (429, 500)
"""``RETRYABLE_AGENT_BOT_STATUSES``: the only statuses ``AgentBots::WebhookJob`` retries."""
ATTEMPTS = 3
"""``retry_on ..., attempts: 3``: three attempts in all."""
REAL_RETRY_DELAY = 3.0
"""``wait: 3.seconds`` between attempts (the fake waits ``retry_delay``)."""
MAX_CONTENT_LENGTH = 150_000
"""``Message validates :content, length: { maximum: 150_000 }``."""
STORAGE_URL_TTL = 300
"""``ActiveStorage.service_urls_expire_in`` (5 minutes): presigned storage URLs expire after this."""
MESSAGE_EVENTS = frozenset({"message_created", "message_updated"})
"""``Webhooks::Trigger::SUPPORTED_ERROR_HANDLE_EVENTS``: a failed delivery of these opens the conversation."""
STATUSES = ("open", "resolved", "pending", "snoozed")
"""``Conversation.statuses`` in enum order."""
MESSAGE_TYPES = ("incoming", "outgoing", "activity", "template")
"""``Message.message_types`` in enum order (the REST answers give the index)."""
CONTENT_TYPES = ("text", "input_text", "input_textarea", "input_email", "input_select", "cards", "form",
                 "article", "incoming_email", "input_csat", "integrations", "sticker", "voice_call")
FILE_TYPES = ("image", "audio", "video", "file", "location", "fallback", "share", "story_mention", "contact",
              "ig_reel", "ig_post", "ig_story", "embed")
BOT_ACCESSIBLE = frozenset({
    # access_token_auth_helper.rb BOT_ACCESSIBLE_ENDPOINTS, as the fake names its endpoints.
    "messages.create", "conversations.show", "conversations.toggle_status",
    "conversations.toggle_typing_status", "conversations.toggle_priority", "conversations.update",
    "conversations.custom_attributes", "conversations.create", "assignments.create", "labels.index",
    "labels.create",
})
STATUS_ACTIVITY = {
    # config/locales/en.yml conversations.activity.status.*
    "resolved": "Conversation was marked resolved by {user_name}",
    "open": "Conversation was reopened by {user_name}",
    "pending": "Conversation was marked as pending by {user_name}",
    "snoozed": "Conversation was snoozed by {user_name}",
}
BOT_ERROR_ACTIVITY = "Conversation was marked open by system due to an error with the agent bot."
"""en.yml ``conversations.activity.agent_bot.error_moved_to_open``."""
CSAT_BODY = "Please rate the conversation"
"""en.yml ``conversations.templates.csat_input_message_body``."""
USER_AGENT = "rest-client/2.1.0 (linux x86_64) ruby/3.4.4p34"
_SIGN_IN = {"errors": ["You need to sign in or sign up before continuing."]}
_NOT_FOUND = {"error": "Resource could not be found"}


# ---------------------------------------------------------------------------------------------- records


@dataclass
class Delivery:
    """One HTTP attempt to deliver an event to the bot's ``webhook_url``."""

    event: str
    delivery_id: str | None
    attempt: int
    """1, 2 or 3 (retries of a 429/500 share ``delivery_id``)."""
    payload: dict[str, Any]
    body: bytes
    """The exact bytes POSTed (what the signature covers)."""
    headers: dict[str, str]
    status: int | None
    """The receiver's HTTP status; None on a timeout or a refused connection."""
    error: str = ""
    """Empty when delivered (2xx); else ``http_<status>``, ``timeout`` or ``connection_failed``."""
    elapsed: float = 0.0
    retrying: bool = False
    """Whether Chatwoot will try again (429/500 before the third attempt)."""
    response_text: str = ""

    @property
    def ok(self) -> bool:
        """Whether this attempt got a 2xx."""
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Call:
    """One request the app server received (REST call or ``data_url`` redirect)."""

    name: str
    """``messages.create``, ``messages.index``, ``conversations.show``, ``conversations.toggle_status``,
    ``conversations.toggle_typing_status``, ``profiles.show``, ``download`` (a data_url/thumb_url redirect) or
    ``unknown``."""
    method: str
    path: str
    token: str | None
    """The ``api_access_token`` header, if any."""
    headers: dict[str, str]
    body_kind: str
    """``json``, ``multipart``, ``form`` or ``none``."""
    params: dict[str, Any]
    files: list[dict[str, Any]] = field(default_factory=list)
    """Multipart files: field, filename, content_type, size, data."""
    status: int = 200
    response: Any = None
    time: float = 0.0


@dataclass
class _Fault:
    spec: str
    status: int
    times: int
    retry_after: float | None = None
    after: int = 0


@dataclass
class _Delay:
    spec: str
    seconds: float
    times: int


@dataclass
class _Blob:
    id: int
    key: str
    signed_id: str
    data: bytes
    filename: str
    mime: str
    byte_size: int


@dataclass
class _Message:
    id: int
    conversation_id: int
    message_type: str
    content: str | None
    private: bool = False
    content_type: str = "text"
    content_attributes: dict[str, Any] = field(default_factory=dict)
    sender_type: str | None = None
    """``Contact``, ``User``, ``AgentBot`` or None (activity messages)."""
    sender: dict[str, Any] | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    status: str = "sent"
    source_id: str | None = None
    echo_id: str | None = None
    additional_attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Conversation:
    id: int
    """The display id (what URLs and payloads call the conversation id)."""
    inbox_id: int
    status: str
    contact: dict[str, Any]
    contact_inbox: dict[str, Any]
    created_at: float
    updated_at: float
    additional_attributes: dict[str, Any] = field(default_factory=dict)
    custom_attributes: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    assignee: dict[str, Any] | None = None
    priority: str | None = None
    snoozed_until: str | None = None
    agent_last_seen_at: float = 0.0
    contact_last_seen_at: float = 0.0
    first_reply_created_at: float | None = None
    waiting_since: float | None = None
    last_activity_at: float = 0.0
    messages: list[_Message] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers


def rails_json(payload: Any) -> bytes:
    """``payload.to_json`` as Rails writes it: compact, UTF-8, and ``<``, ``>``, ``&``, U+2028, U+2029
    escaped (``ActiveSupport.escape_html_entities_in_json``). Receivers must verify the raw bytes."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``X-Chatwoot-Signature``: ``sha256=`` + hex HMAC-SHA256(secret, ``"{timestamp}.{body}"``)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def iso(t: float | None) -> str | None:
    """A Rails JSON time: ``2026-05-04T10:11:12.345Z``."""
    if t is None:
        return None
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _bool_param(value: Any) -> bool:
    """ActiveModel's boolean cast of a request parameter (``"false"``, ``"0"``, ``""`` are false)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value).strip().lower() not in ("", "0", "f", "false", "off", "no", "n")


def file_type_for(mime: str) -> str:
    """``FileTypeHelper#file_type``: image, video, audio, else file."""
    major = (mime or "").split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "file"


def load_payload(name: str, **overrides: Any) -> dict[str, Any]:
    """A recorded agent-bot webhook payload from ``tests/payloads/chatwoot/<name>.json``. ``overrides``
    replace top-level keys; ``a__b=value`` sets a nested key (``conversation__status="open"``)."""
    payload = json.loads((PAYLOAD_DIR / f"{name.removesuffix('.json')}.json").read_text())
    for key, value in overrides.items():
        target = payload
        *parents, leaf = key.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return payload


# ---------------------------------------------------------------------------------------------- the fake


class FakeChatwoot:
    """A Chatwoot account with one agent bot connected to its inboxes (see the module docstring)."""

    def __init__(self, *, bot_token: str = "cw-bot-token", secret: str | None = "cw-webhook-secret",
                 account_id: int = 1, inbox_id: int = 1, timeout: float = WEBHOOK_TIMEOUT,
                 retry_delay: float = 0.05, agent_token: str = "cw-agent-token", bot_id: int = 7,
                 bot_name: str = "InternVL", agent_name: str = "Ana Agent", account_name: str = "Acme Inc",
                 keep_pending_on_bot_failure: bool = False, deliver_activity: bool = False,
                 status_events: Iterable[str] = ("conversation_status_changed",)) -> None:
        """Configure the account; the servers start in ``__aenter__``.

        ``secret``: the agent bot's webhook secret (None: deliveries are unsigned, as before 4.13 or for a
        bot without one). ``timeout``: the delivery timeout (Chatwoot: 5 s). ``retry_delay``: the wait
        between attempts of a 429/500 (Chatwoot: 3 s). ``agent_token``: a human agent's access token (may
        list messages). ``keep_pending_on_bot_failure``: the account setting that stops failed deliveries
        from opening conversations. ``deliver_activity``: also deliver activity messages (Chatwoot does not:
        they are not ``webhook_sendable?``). ``status_events``: the events a status change delivers, among
        ``conversation_opened``/``conversation_resolved`` (legacy), ``conversation_status_changed`` and
        ``conversation_updated`` (the bot's subscribed event categories).
        """
        self.bot_token = bot_token
        self.secret = secret
        self.account_id = account_id
        self.inbox_id = inbox_id
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.agent_token = agent_token
        self.keep_pending_on_bot_failure = keep_pending_on_bot_failure
        self.deliver_activity = deliver_activity
        self.status_events: list[str] = list(status_events)

        self.url = ""
        """``http://127.0.0.1:PORT`` once started: the adapter's base_url."""
        self.storage_url = ""
        """``http://localhost:PORT2``: the storage the ``data_url`` redirects lead to."""
        self.webhook_url: str | None = None
        """The agent bot's outgoing URL; None: Chatwoot sends nothing (``outgoing_url.blank?``)."""

        self.account = {"id": account_id, "name": account_name}
        self.bot = {"id": bot_id, "name": bot_name, "avatar_url": "", "type": "agent_bot"}
        self.agent = {"id": 1, "name": agent_name, "available_name": agent_name, "avatar_url": "",
                      "type": "user", "availability_status": "online", "thumbnail": "",
                      "email": "ana.agent@example.com"}

        self.calls: list[Call] = []
        self.deliveries: list[Delivery] = []
        """Every delivery attempt, in order."""
        self.typing: list[dict[str, Any]] = []
        """toggle_typing_status calls: conversation_id, typing_status, is_private, by, time."""
        self.status_changes: list[dict[str, Any]] = []
        """Every status change: conversation_id, previous, current, by (agent_bot, agent, system, contact),
        reason (``bot_handoff``, ``agent_bot_error``, ``incoming_message``, ``toggle``, ``set_status``)."""
        self.downloads: list[dict[str, Any]] = []
        """Requests for attachment bytes: server (``app`` or ``storage``), path, status, blob_id,
        api_access_token (did that header come?), authorization, headers."""

        self._inboxes: dict[int, dict[str, Any]] = {}
        self._conversations: dict[int, _Conversation] = {}
        self._messages: dict[int, _Message] = {}
        self._blobs: dict[str, _Blob] = {}
        self._blobs_by_key: dict[str, _Blob] = {}
        self._faults: list[_Fault] = []
        self._portals: dict[str, dict[str, Any]] = {}
        self._articles: dict[int, dict[str, Any]] = {}
        self._article_ids = itertools.count(71)
        self._delays: list[_Delay] = []
        self._message_ids = itertools.count(1001)
        self._attachment_ids = itertools.count(501)
        self._blob_ids = itertools.count(301)
        self._contact_ids = itertools.count(41)
        self._contact_inbox_ids = itertools.count(61)
        self._storage_secret = uuid.uuid4().hex
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._serving: list[contextlib.AbstractAsyncContextManager[str]] = []
        self.add_inbox(inbox_id, "Website")

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeChatwoot:
        """Start the app server and the storage server."""
        app = serve_asgi(self._app())
        self.url = await app.__aenter__()
        self._serving.append(app)
        storage = serve_asgi(self._storage_app(), advertise="localhost")
        self.storage_url = await storage.__aenter__()
        self._serving.append(storage)
        self._http = httpx.AsyncClient(follow_redirects=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Cancel pending deliveries, stop both servers."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._http is not None:
            await self._http.aclose()
        for serving in reversed(self._serving):
            await serving.__aexit__(None, None, None)
        self._serving.clear()

    def _app(self) -> Starlette:
        conv = "/api/v1/accounts/{account_id}/conversations/{conversation_id}"
        return Starlette(routes=[
            Route(conv + "/messages", self._messages_endpoint, methods=["GET", "POST"]),
            Route(conv + "/toggle_status", self._toggle_status_endpoint, methods=["POST"]),
            Route(conv + "/toggle_typing_status", self._typing_endpoint, methods=["POST"]),
            Route(conv, self._show_endpoint, methods=["GET"]),
            Route("/api/v1/profile", self._profile_endpoint, methods=["GET"]),
            Route("/api/v1/accounts/{account_id}/conversations", self._conversations_endpoint, methods=["GET"]),
            Route("/api/v1/accounts/{account_id}/portals/{portal_id}", self._portal_endpoint, methods=["GET"]),
            Route("/api/v1/accounts/{account_id}/portals/{portal_id}/articles", self._articles_endpoint,
                  methods=["GET"]),
            Route("/rails/active_storage/blobs/redirect/{signed_id}/{filename:path}", self._redirect_endpoint,
                  methods=["GET", "HEAD"]),
            Route("/rails/active_storage/representations/redirect/{signed_id}/{variation}/{filename:path}",
                  self._redirect_endpoint, methods=["GET", "HEAD"]),
            Route("/{rest:path}", self._unknown_endpoint, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ])

    def _storage_app(self) -> Starlette:
        return Starlette(routes=[Route("/{bucket}/{key:path}", self._storage_endpoint, methods=["GET", "HEAD"])])

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:  # noqa: ASYNC109
        """Return as soon as ``predicate()`` holds; it is re-checked on every state change (a call, a
        delivery attempt, a message, a status change, a download). TimeoutError says what the fake saw."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(self._describe(getattr(predicate, "__name__", "predicate"), timeout))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _describe(self, what: str, timeout: float) -> str:
        calls = ", ".join(f"{c.name}→{c.status}" for c in self.calls[-10:]) or "none"
        deliveries = ", ".join(f"{d.event}#{d.attempt}→{d.status or d.error}" for d in self.deliveries[-10:])
        convs = ", ".join(f"{c.id}:{c.status}" for c in self._conversations.values())
        return (f"FakeChatwoot: {what} did not hold within {timeout}s. Last calls: {calls}. Last deliveries: "
                f"{deliveries or 'none'}. Conversations: {convs or 'none'}.")

    # ------------------------------------------------------------------------------------------ setup

    def add_inbox(self, inbox_id: int, name: str = "Website", *, channel: str = "Channel::WebWidget",
                  csat_survey_enabled: bool = False) -> None:
        """An inbox the bot is connected to (``channel``: ``Channel::WebWidget``, ``Channel::Api``...);
        ``csat_survey_enabled``: resolving a conversation asks the customer to rate it."""
        self._inboxes[inbox_id] = {"id": inbox_id, "name": name, "channel_type": channel,
                                   "csat_survey_enabled": csat_survey_enabled}

    def conversation(self, conversation_id: int | None = None, *, status: str = "pending",
                     inbox_id: int | None = None, contact: dict[str, Any] | None = None,
                     locale: str | None = None) -> int:
        """Create a conversation (Chatwoot makes it ``pending`` when the inbox has an active bot); returns
        its display id. ``contact`` overrides fields of the contact (name, email, phone_number...)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        inbox_id = self.inbox_id if inbox_id is None else inbox_id
        if inbox_id not in self._inboxes:
            raise ValueError(f"unknown inbox {inbox_id}: add_inbox() first")
        if conversation_id is None:
            conversation_id = max(self._conversations, default=0) + 1
        if conversation_id in self._conversations:
            raise ValueError(f"conversation {conversation_id} exists")
        now = time.time()
        contact_id = next(self._contact_ids)
        person = {"id": contact_id, "name": f"Visitor {contact_id}", "email": None, "phone_number": None,
                  "identifier": None, "thumbnail": "", "avatar": "", "additional_attributes": {},
                  "custom_attributes": {}, "blocked": False}
        person.update(contact or {})
        contact_inbox = {"id": next(self._contact_inbox_ids), "contact_id": person["id"], "inbox_id": inbox_id,
                         "source_id": str(uuid.uuid4()), "created_at": iso(now), "updated_at": iso(now),
                         "hmac_verified": False, "pubsub_token": base64.b32encode(uuid.uuid4().bytes)[:24].decode()}
        additional: dict[str, Any] = {}
        if self._inboxes[inbox_id]["channel_type"] == "Channel::WebWidget":
            additional = {"browser": {"device_name": "Unknown", "browser_name": "Firefox", "platform_name": "Linux",
                                      "browser_version": "128.0", "platform_version": ""},
                          "referer": "https://shop.example.com/help",
                          "initiated_at": {"timestamp": datetime.fromtimestamp(now, UTC).strftime(
                              "%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)")},
                          "browser_language": locale or "en"}
        elif locale:
            additional = {"browser_language": locale}
        self._conversations[conversation_id] = _Conversation(
            id=conversation_id, inbox_id=inbox_id, status=status, contact=person, contact_inbox=contact_inbox,
            created_at=now, updated_at=now, last_activity_at=now, waiting_since=now,
            additional_attributes=additional)
        self._notify()
        return conversation_id

    def _conv(self, conversation_id: int) -> _Conversation:
        try:
            return self._conversations[int(conversation_id)]
        except (KeyError, ValueError):
            raise KeyError(f"no conversation {conversation_id}") from None

    def attachment(self, data: bytes, *, file_type: str = "image", filename: str = "photo.jpg",
                   mime: str = "image/jpeg", size: int | None = None, width: int | None = None,
                   height: int | None = None, extension: str | None = None) -> dict[str, Any]:
        """Upload ``data`` to storage and return an attachment object (``Attachment#push_event_data``) to
        pass to ``customer_message`` / ``agent_message``: ``data_url`` and ``thumb_url`` (images only) are
        on the app server and answer 302 to a presigned storage URL. ``size`` overrides ``file_size`` (to
        claim a huge file without the bytes); ``width``/``height`` are null unless given (not analysed
        yet); ``extension`` is null unless given (web widget uploads leave it empty)."""
        if file_type not in FILE_TYPES:
            raise ValueError(f"file_type must be one of {FILE_TYPES}")
        blob = self._add_blob(data, filename, mime, size)
        data_url = f"{self.url}/rails/active_storage/blobs/redirect/{blob.signed_id}/{quote(filename)}"
        thumb_url = ""
        if file_type == "image":
            thumb_url = (f"{self.url}/rails/active_storage/representations/redirect/{blob.signed_id}/"
                         f"{_signed('variation', blob.id)}/{quote(filename)}")
        return {"id": next(self._attachment_ids), "message_id": None, "file_type": file_type,
                "account_id": self.account_id, "extension": extension, "data_url": data_url,
                "thumb_url": thumb_url, "file_size": blob.byte_size, "width": width, "height": height}

    def _add_blob(self, data: bytes, filename: str, mime: str, size: int | None = None,
                  signed_id: str | None = None) -> _Blob:
        blob_id = next(self._blob_ids)
        key = uuid.uuid4().hex[:28]
        blob = _Blob(id=blob_id, key=key, signed_id=signed_id or _signed("blob_id", blob_id), data=data,
                     filename=filename, mime=mime, byte_size=len(data) if size is None else size)
        self._blobs[blob.signed_id] = blob
        self._blobs_by_key[key] = blob
        return blob

    # ------------------------------------------------------------------------------------------ payloads

    @staticmethod
    def _contact_push(contact: dict[str, Any]) -> dict[str, Any]:
        return {"additional_attributes": contact["additional_attributes"],
                "custom_attributes": contact["custom_attributes"], "email": contact["email"], "id": contact["id"],
                "identifier": contact["identifier"], "name": contact["name"],
                "phone_number": contact["phone_number"], "thumbnail": contact["thumbnail"],
                "blocked": contact["blocked"], "type": "contact"}

    def _contact_webhook(self, contact: dict[str, Any]) -> dict[str, Any]:
        # Contact#webhook_data: no "type" key (unlike push_event_data), in the current source.
        return {"account": dict(self.account), "additional_attributes": contact["additional_attributes"],
                "avatar": contact["avatar"], "custom_attributes": contact["custom_attributes"],
                "email": contact["email"], "id": contact["id"], "identifier": contact["identifier"],
                "name": contact["name"], "phone_number": contact["phone_number"],
                "thumbnail": contact["thumbnail"], "blocked": contact["blocked"]}

    def _sender_webhook(self, msg: _Message) -> dict[str, Any] | None:
        if msg.sender_type == "Contact" and msg.sender is not None:
            return self._contact_webhook(msg.sender)
        if msg.sender_type == "User" and msg.sender is not None:
            return {"id": msg.sender["id"], "name": msg.sender["name"], "email": msg.sender["email"],
                    "type": "user"}
        if msg.sender_type == "AgentBot" and msg.sender is not None:
            return {"id": msg.sender["id"], "name": msg.sender["name"], "type": "agent_bot"}
        return None

    def _sender_push(self, msg: _Message) -> dict[str, Any] | None:
        if msg.sender_type == "Contact" and msg.sender is not None:
            return self._contact_push(msg.sender)
        if msg.sender_type == "User" and msg.sender is not None:
            return {k: msg.sender[k] for k in ("id", "name", "available_name", "avatar_url", "type",
                                               "availability_status", "thumbnail")}
        if msg.sender_type == "AgentBot" and msg.sender is not None:
            return {"id": msg.sender["id"], "name": msg.sender["name"], "avatar_url": msg.sender["avatar_url"],
                    "type": "agent_bot"}
        return None

    def _message_push(self, msg: _Message) -> dict[str, Any]:
        """``Message#push_event_data`` (the ``messages`` of a conversation object, the REST shapes)."""
        conv = self._conversations[msg.conversation_id]
        data: dict[str, Any] = {
            "id": msg.id, "content": msg.content, "account_id": self.account_id, "inbox_id": conv.inbox_id,
            "conversation_id": conv.id, "message_type": MESSAGE_TYPES.index(msg.message_type),
            "created_at": int(msg.created_at), "updated_at": iso(msg.updated_at), "private": msg.private,
            "status": msg.status, "source_id": msg.source_id, "content_type": msg.content_type,
            "content_attributes": copy.deepcopy(msg.content_attributes), "sender_type": msg.sender_type,
            "sender_id": msg.sender["id"] if msg.sender else None, "external_source_ids": {},
            "additional_attributes": copy.deepcopy(msg.additional_attributes),
            "processed_message_content": msg.content, "sentiment": {},
            "conversation": {"assignee_id": conv.assignee["id"] if conv.assignee else None,
                             "unread_count": self._unread(conv), "last_activity_at": int(conv.last_activity_at),
                             "contact_inbox": {"source_id": conv.contact_inbox["source_id"]}},
        }
        if msg.echo_id:
            data["echo_id"] = msg.echo_id
        if msg.attachments:
            data["attachments"] = copy.deepcopy(msg.attachments)
        sender = self._sender_push(msg)
        if sender is not None:
            data["sender"] = sender
        return data

    @staticmethod
    def _unread(conv: _Conversation) -> int:
        return len([m for m in conv.messages
                    if m.message_type == "incoming" and m.created_at > conv.agent_last_seen_at][-10:])

    def conversation_data(self, conversation_id: int) -> dict[str, Any]:
        """``Conversation#webhook_data`` (``Conversations::EventDataPresenter#push_data``) as it is now."""
        conv = self._conv(conversation_id)
        chat = [m for m in conv.messages if m.message_type != "activity" and not m.private]
        return {
            "additional_attributes": copy.deepcopy(conv.additional_attributes),
            "can_reply": True,
            "channel": self._inboxes[conv.inbox_id]["channel_type"],
            "contact_inbox": dict(conv.contact_inbox),
            "id": conv.id,
            "inbox_id": conv.inbox_id,
            "messages": [self._message_push(chat[-1])] if chat else [],
            "labels": list(conv.labels),
            "meta": {"sender": self._contact_push(conv.contact), "assignee": copy.deepcopy(conv.assignee),
                     "team": None, "hmac_verified": conv.contact_inbox["hmac_verified"]},
            "status": conv.status,
            "custom_attributes": copy.deepcopy(conv.custom_attributes),
            "snoozed_until": conv.snoozed_until,
            "unread_count": self._unread(conv),
            "first_reply_created_at": iso(conv.first_reply_created_at),
            "priority": conv.priority,
            "waiting_since": int(conv.waiting_since or 0),
            "agent_last_seen_at": int(conv.agent_last_seen_at),
            "contact_last_seen_at": int(conv.contact_last_seen_at),
            "last_activity_at": int(conv.last_activity_at),
            "timestamp": int(conv.last_activity_at),
            "created_at": int(conv.created_at),
            "updated_at": conv.updated_at,
        }

    def message_data(self, message_id: int, event: str = "message_created") -> dict[str, Any]:
        """``Message#webhook_data`` merged with ``event``: what the bot receives for a message."""
        msg = self._messages[message_id]
        conv = self._conversations[msg.conversation_id]
        inbox = self._inboxes[conv.inbox_id]
        data: dict[str, Any] = {
            "account": dict(self.account),
            "additional_attributes": copy.deepcopy(msg.additional_attributes),
            "content_attributes": copy.deepcopy(msg.content_attributes),
            "content_type": msg.content_type,
            "content": msg.content,
            "conversation": self.conversation_data(conv.id),
            "created_at": iso(msg.created_at),
            "id": msg.id,
            "inbox": {"id": inbox["id"], "name": inbox["name"]},
            "message_type": msg.message_type,
            "private": msg.private,
            "sender": self._sender_webhook(msg),
            "source_id": msg.source_id,
        }
        if msg.attachments:
            data["attachments"] = copy.deepcopy(msg.attachments)
        data["event"] = event
        return data

    def _status_payload(self, conv: _Conversation, event: str, previous: str, before: float) -> dict[str, Any]:
        payload = self.conversation_data(conv.id)
        payload["event"] = event
        if event == "conversation_status_changed":
            payload["changed_attributes"] = [{"status": {"previous_value": previous, "current_value": conv.status}}]
        elif event == "conversation_updated":
            payload["changed_attributes"] = [
                {"status": {"previous_value": previous, "current_value": conv.status}},
                {"updated_at": {"previous_value": iso(before), "current_value": iso(conv.updated_at)}}]
        return payload

    # ------------------------------------------------------------------------------------------ state changes

    def _add_message(self, conv: _Conversation, message_type: str, content: str | None, *, private: bool = False,
                     sender_type: str | None = None, sender: dict[str, Any] | None = None,
                     attachments: Iterable[dict[str, Any]] = (), content_type: str = "text",
                     content_attributes: dict[str, Any] | None = None, echo_id: str | None = None) -> _Message:
        now = max(time.time(), max((m.created_at for m in conv.messages), default=0.0) + 0.001)
        msg = _Message(id=next(self._message_ids), conversation_id=conv.id, message_type=message_type,
                       content=content, private=private, content_type=content_type,
                       content_attributes=dict(content_attributes or {}), sender_type=sender_type, sender=sender,
                       created_at=now, updated_at=now, echo_id=echo_id)
        for att in attachments:
            att = dict(att)
            att["message_id"] = msg.id
            msg.attachments.append(att)
        conv.messages.append(msg)
        self._messages[msg.id] = msg
        if message_type in ("incoming", "outgoing"):
            conv.last_activity_at = now
        conv.updated_at = now
        self._notify()
        return msg

    def _change_status(self, conv: _Conversation, new: str, *, by: str, reason: str,
                       actor: str | None = None, snoozed_until: str | None = None) -> tuple[str, float] | None:
        """Set the status; returns (previous status, previous updated_at) when it changed. ``actor``: the
        Current.user name that makes Chatwoot write a status activity message."""
        if new not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        previous, before = conv.status, conv.updated_at
        conv.snoozed_until = snoozed_until if new == "snoozed" else None
        if previous == new:
            return None
        conv.status = new
        conv.updated_at = max(time.time(), before + 0.001)
        self.status_changes.append({"conversation_id": conv.id, "previous": previous, "current": new, "by": by,
                                    "reason": reason, "time": time.monotonic()})
        if actor is not None:
            self._add_message(conv, "activity", STATUS_ACTIVITY[new].format(user_name=actor))
        self._notify()
        return previous, before

    async def _status_events(self, conv: _Conversation, change: tuple[str, float] | None, *,
                             legacy: bool = False) -> None:
        if change is None:
            return
        previous, before = change
        events = list(self.status_events)
        if legacy:
            events = ["conversation_opened", "conversation_resolved", *events]
        for event in ("conversation_opened", "conversation_resolved", "conversation_status_changed",
                      "conversation_updated"):
            if event not in events:
                continue
            if (event == "conversation_opened" and conv.status != "open") or (
                    event == "conversation_resolved" and conv.status != "resolved"):
                continue
            await self._deliver_event(event, self._status_payload(conv, event, previous, before))

    async def _message_event(self, msg: _Message, event: str = "message_created") -> list[Delivery]:
        if msg.message_type == "activity" and not self.deliver_activity:
            return []  # not webhook_sendable?
        return await self._deliver_event(event, self.message_data(msg.id, event))

    async def _deliver_event(self, event: str, payload: dict[str, Any]) -> list[Delivery]:
        if not self.webhook_url:
            return []
        return await self.deliver(event, payload)

    # ------------------------------------------------------------------------------------------ the customer and agents

    async def customer_message(self, conversation_id: int, content: str = "", *,
                               attachments: Iterable[dict[str, Any] | bytes] = (), locale: str | None = None,
                               content_attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The customer writes (an ``incoming`` message from the contact); delivers ``message_created`` to
        the bot (signed, retried per Chatwoot's rules; a failure opens a pending conversation) and returns
        the payload. A resolved conversation goes back to ``pending`` first (the inbox has an active bot), a
        snoozed one to ``open``, each delivering its status events. ``attachments``: objects from
        ``attachment()`` or bytes (an image). ``locale``: the widget's ``browser_language``."""
        conv = self._conv(conversation_id)
        if locale:
            conv.additional_attributes["browser_language"] = locale
        atts = [self.attachment(a) if isinstance(a, bytes | bytearray) else a for a in attachments]
        change = None
        if conv.status == "resolved":
            change = self._change_status(conv, "pending", by="contact", reason="incoming_message")
        elif conv.status == "snoozed":
            change = self._change_status(conv, "open", by="contact", reason="incoming_message")
        msg = self._add_message(conv, "incoming", content if content or not atts else None, sender_type="Contact",
                                sender=conv.contact, attachments=atts, content_attributes=content_attributes)
        payload = self.message_data(msg.id)
        await self._status_events(conv, change)
        if self.webhook_url:
            await self.deliver("message_created", payload)
        return payload

    async def agent_message(self, conversation_id: int, content: str, *, private: bool = False,
                            attachments: Iterable[dict[str, Any] | bytes] = ()) -> dict[str, Any]:
        """A human agent replies (``outgoing``) or writes a private note (``private=True``, still
        ``outgoing``); the bot gets ``message_created`` for it as for any message. Returns the payload."""
        conv = self._conv(conversation_id)
        atts = [self.attachment(a) if isinstance(a, bytes | bytearray) else a for a in attachments]
        msg = self._add_message(conv, "outgoing", content, private=private, sender_type="User",
                                sender=self.agent, attachments=atts)
        if not private and conv.first_reply_created_at is None:
            conv.first_reply_created_at = msg.created_at
            conv.waiting_since = None
        payload = self.message_data(msg.id)
        if self.webhook_url:
            await self.deliver("message_created", payload)
        return payload

    async def update_message(self, conversation_id: int, message_id: int, *, content: str | None = None,
                             content_attributes: dict[str, Any] | None = None,
                             status: str | None = None) -> dict[str, Any]:
        """A message changes (an edit, a submitted form/CSAT in ``content_attributes``, a delivery
        ``status`` such as ``read``): Chatwoot's ``after_update`` sends ``message_updated``."""
        conv = self._conv(conversation_id)
        msg = self._messages[message_id]
        if msg.conversation_id != conv.id:
            raise KeyError(f"message {message_id} is not in conversation {conversation_id}")
        if content is not None:
            msg.content = content
        if content_attributes is not None:
            msg.content_attributes.update(content_attributes)
        if status is not None:
            msg.status = status
        msg.updated_at = time.time()
        self._notify()
        payload = self.message_data(msg.id, "message_updated")
        if self.webhook_url and msg.message_type in ("incoming", "outgoing", "template"):
            await self.deliver("message_updated", payload)
        return payload

    async def set_status(self, conversation_id: int, status: str, *, notify: bool = True,
                         legacy: bool = False) -> None:
        """A human agent changes the status: the activity message "Conversation was marked resolved by
        <agent>" (etc.), then, with ``notify``, the bot gets the ``status_events`` (``legacy``: also
        ``conversation_opened``/``conversation_resolved`` as the matching status asks)."""
        conv = self._conv(conversation_id)
        change = self._change_status(conv, status, by="agent", reason="set_status", actor=self.agent["name"])
        if notify:
            await self._status_events(conv, change, legacy=legacy)
        if change is not None and status == "resolved" and self._inboxes[conv.inbox_id].get("csat_survey_enabled") \
                and not any(m.content_type == "input_csat" for m in conv.messages):
            # Conversations::TemplateMessageService / CsatSurveyService: one survey per conversation
            survey = self._add_message(conv, "template", CSAT_BODY, content_type="input_csat",
                                       content_attributes={"display_type": "emoji"})
            await self._message_event(survey)

    def csat_survey(self, conversation_id: int) -> int | None:
        """The id of the conversation's CSAT survey message, if one was posted."""
        return next((m.id for m in self._conv(conversation_id).messages if m.content_type == "input_csat"), None)

    async def csat_response(self, conversation_id: int, rating: int, feedback_message: str = "") -> dict[str, Any]:
        """The customer rates the conversation in the survey (the widget's PATCH of the survey message):
        ``message_updated`` of the ``input_csat`` message with ``submitted_values.csat_survey_response``.
        Returns the payload (deliver it again to model a redelivery)."""
        if not 1 <= rating <= 5:
            raise ValueError("a CSAT rating is 1 to 5")
        survey = self.csat_survey(conversation_id)
        if survey is None:
            raise KeyError(f"conversation {conversation_id} has no CSAT survey (resolve it in a CSAT inbox)")
        response = {"rating": rating, "feedback_message": feedback_message}
        return await self.update_message(conversation_id, survey,
                                         content_attributes={"submitted_values": {"csat_survey_response": response}})

    async def widget_opened(self, conversation_id: int, *, locale: str | None = None) -> dict[str, Any]:
        """The customer opens the web widget: ``webwidget_triggered`` (the contact inbox's webhook data with
        the current conversation, plus ``event_info``). Returns the payload."""
        conv = self._conv(conversation_id)
        inbox = self._inboxes[conv.inbox_id]
        language = locale or conv.additional_attributes.get("browser_language", "en")
        payload = {
            "id": conv.contact_inbox["id"],
            "contact": self._contact_webhook(conv.contact),
            "inbox": {"id": inbox["id"], "name": inbox["name"]},
            "account": dict(self.account),
            "current_conversation": self.conversation_data(conv.id),
            "source_id": conv.contact_inbox["source_id"],
            "event": "webwidget_triggered",
            "event_info": {"initiated_at": {"timestamp": conv.additional_attributes.get("initiated_at", {})
                                            .get("timestamp", "")},
                           "referer": conv.additional_attributes.get("referer", ""),
                           "widget_language": language, "browser_language": language,
                           "browser": copy.deepcopy(conv.additional_attributes.get("browser", {}))},
        }
        if self.webhook_url:
            await self.deliver("webwidget_triggered", payload)
        return payload

    # ------------------------------------------------------------------------------------------ delivery

    async def deliver(self, event: str, payload: dict[str, Any], *, sign: bool = True, secret: str | None = None,
                      timestamp: int | None = None, delivery_id: str | None = None,
                      retries: bool = True) -> list[Delivery]:
        """POST ``payload`` (with ``event`` set) to ``webhook_url`` as ``AgentBots::WebhookJob`` does and
        return the attempts. ``sign=False`` leaves the signature headers out; ``secret``, ``timestamp`` and
        ``delivery_id`` forge them (a wrong secret, a stale timestamp, a replayed delivery id);
        ``retries=False`` makes one attempt. A failure of a message event opens the conversation when it
        is pending (the payload's ``id`` must be a message the fake knows)."""
        if not self.webhook_url:
            return []
        assert self._http is not None, "use `async with FakeChatwoot()`"
        payload = dict(payload)
        payload["event"] = event
        body = rails_json(payload)
        did = delivery_id or str(uuid.uuid4())
        key = self.secret if secret is None else secret
        attempts: list[Delivery] = []
        for n in range(1, ATTEMPTS + 1):
            ts = int(time.time()) if timestamp is None else timestamp
            headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT,
                       "X-Chatwoot-Delivery": did}
            if sign and key:
                headers["X-Chatwoot-Timestamp"] = str(ts)
                headers["X-Chatwoot-Signature"] = signature(key, ts, body)
            start = time.monotonic()
            status: int | None = None
            error, text = "", ""
            try:
                response = await self._http.post(self.webhook_url, content=body, headers=headers,
                                                 timeout=self.timeout)
                status, text = response.status_code, response.text[:2000]
                error = "" if 200 <= status < 300 else f"http_{status}"
            except httpx.TimeoutException:
                error = "timeout"
            except httpx.TransportError:
                error = "connection_failed"
            retrying = bool(error) and retries and status in RETRYABLE_STATUSES and n < ATTEMPTS
            attempt = Delivery(event=event, delivery_id=did, attempt=n, payload=payload, body=body,
                               headers=headers, status=status, error=error, elapsed=time.monotonic() - start,
                               retrying=retrying, response_text=text)
            attempts.append(attempt)
            self.deliveries.append(attempt)
            self._notify()
            if not error:
                break
            if retrying:
                await asyncio.sleep(self.retry_delay)
                continue
            await self._bot_failure(payload)
            break
        return attempts

    async def _bot_failure(self, payload: dict[str, Any]) -> None:
        """``Webhooks::Trigger#handle_error`` for an agent bot: open a pending conversation to humans."""
        if payload.get("event") not in MESSAGE_EVENTS:
            return
        msg = self._messages.get(payload.get("id"))  # type: ignore[arg-type]
        if msg is None:
            return
        conv = self._conversations[msg.conversation_id]
        if conv.status != "pending" or self.keep_pending_on_bot_failure:
            return
        change = self._change_status(conv, "open", by="system", reason="agent_bot_error")
        activity = self._add_message(conv, "activity", BOT_ERROR_ACTIVITY)
        await self._status_events(conv, change)
        await self._message_event(activity)

    def delivered(self, event: str | None = None, *, message_id: int | None = None) -> list[Delivery]:
        """The 2xx delivery attempts, optionally of one event / of one message's events."""
        return [d for d in self.deliveries if d.ok and (event is None or d.event == event)
                and (message_id is None or d.payload.get("id") == message_id)]

    # ------------------------------------------------------------------------------------------ what people see

    def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        """Every message of the conversation in order (incoming, outgoing, private notes, activity):
        id, message_type, private, content, content_type, content_attributes, sender_type (``Contact``,
        ``User``, ``AgentBot`` or None), sender_id, sender_name, attachments, status, created_at."""
        conv = self._conv(conversation_id)
        return [{"id": m.id, "message_type": m.message_type, "private": m.private, "content": m.content,
                 "content_type": m.content_type, "content_attributes": copy.deepcopy(m.content_attributes),
                 "sender_type": m.sender_type, "sender_id": m.sender["id"] if m.sender else None,
                 "sender_name": m.sender["name"] if m.sender else None,
                 "attachments": copy.deepcopy(m.attachments), "status": m.status, "created_at": m.created_at}
                for m in conv.messages]

    def public_replies(self, conversation_id: int) -> list[str]:
        """What the customer sees from the support side: outgoing, non-private contents (bot and agents)."""
        return [m.content or "" for m in self._conv(conversation_id).messages
                if m.message_type == "outgoing" and not m.private]

    def bot_replies(self, conversation_id: int) -> list[str]:
        """The bot's own outgoing, non-private contents."""
        return [m.content or "" for m in self._conv(conversation_id).messages
                if m.message_type == "outgoing" and not m.private and m.sender_type == "AgentBot"]

    def private_notes(self, conversation_id: int) -> list[str]:
        """Private notes (only agents see them)."""
        return [m.content or "" for m in self._conv(conversation_id).messages if m.private]

    def activities(self, conversation_id: int) -> list[str]:
        """Activity messages (status changes and the like)."""
        return [m.content or "" for m in self._conv(conversation_id).messages if m.message_type == "activity"]

    def status(self, conversation_id: int) -> str:
        """The conversation's status now: open, resolved, pending or snoozed."""
        return self._conv(conversation_id).status

    def typing_now(self, conversation_id: int) -> bool:
        """Whether the bot's typing indicator is on for the customer."""
        state = [t for t in self.typing if t["conversation_id"] == int(conversation_id)]
        return bool(state) and state[-1]["typing_status"] in ("on", "recording")

    def calls_to(self, name: str) -> list[Call]:
        """Calls by name (``messages.create``) or short name (``toggle_status``)."""
        return [c for c in self.calls if c.name == name or c.name.split(".", 1)[-1] == name]

    def load_payload(self, name: str, files: Mapping[int, bytes] | None = None, **overrides: Any) -> dict[str, Any]:
        """A recorded payload (``load_payload``) made live in this fake: attachment URLs point to this fake
        (serving ``files[attachment_id]``, or stand-in bytes of ``file_size``), and the conversation and the
        message exist here (with the payload's status), so REST calls and failure handling apply."""
        payload = load_payload(name, **overrides)
        for obj in walk(payload):
            if obj.get("file_type") and isinstance(obj.get("data_url"), str) and obj["data_url"].startswith(
                    RECORDED_ORIGIN):
                data = (files or {}).get(obj.get("id"))
                if data is None:
                    data = b"\xff\xd8\xff\xe0" + bytes(max(0, int(obj.get("file_size") or 0) - 4))
                parts = urlsplit(obj["data_url"]).path.split("/")
                signed_id, filename = parts[-2], parts[-1]
                blob = self._blobs.get(signed_id) or self._add_blob(
                    data, filename, "application/octet-stream", signed_id=signed_id)
                blob.data, blob.byte_size = data, len(data)
                obj["file_size"] = len(data)
                for key in ("data_url", "thumb_url"):
                    if isinstance(obj.get(key), str):
                        obj[key] = obj[key].replace(RECORDED_ORIGIN, self.url, 1)
        self._adopt(payload)
        return payload

    def _adopt(self, payload: dict[str, Any]) -> None:
        conv_data = payload.get("conversation") if "message_type" in payload else (
            payload.get("current_conversation") or (payload if "contact_inbox" in payload else None))
        if not isinstance(conv_data, dict) or "id" not in conv_data:
            return
        inbox = payload.get("inbox") or {"id": conv_data.get("inbox_id", self.inbox_id)}
        if inbox["id"] not in self._inboxes:
            self.add_inbox(inbox["id"], inbox.get("name", "Inbox"),
                           channel=conv_data.get("channel", "Channel::WebWidget"))
        cid = conv_data["id"]
        if cid not in self._conversations:
            sender = conv_data.get("meta", {}).get("sender") or {}
            contact = {k: sender[k] for k in ("id", "name", "email", "phone_number", "identifier") if k in sender}
            self.conversation(cid, status=conv_data.get("status", "pending"), inbox_id=inbox["id"], contact=contact)
        conv = self._conversations[cid]
        conv.status = conv_data.get("status", conv.status)
        mid = payload.get("id")
        if "message_type" in payload and isinstance(mid, int) and mid not in self._messages:
            sender = payload.get("sender") or {}
            kind = {"user": "User", "agent_bot": "AgentBot"}.get(sender.get("type", ""), "Contact")
            if payload["message_type"] == "activity":
                kind = None
            who = {"Contact": conv.contact, "User": self.agent, "AgentBot": self.bot}.get(kind or "")
            msg = _Message(id=mid, conversation_id=cid, message_type=payload["message_type"],
                           content=payload.get("content"), private=bool(payload.get("private")),
                           content_type=payload.get("content_type") or "text",
                           content_attributes=dict(payload.get("content_attributes") or {}), sender_type=kind,
                           sender=who, attachments=list(payload.get("attachments") or []),
                           created_at=time.time(), updated_at=time.time())
            conv.messages.append(msg)
            self._messages[mid] = msg
        self._notify()

    # ------------------------------------------------------------------------------------------ faults

    def fail(self, method_path_or_name: str, *, status: int = 500, times: int = 1,
             retry_after: float | None = None, after: int = 0) -> None:
        """The next ``times`` requests matching (a call name such as ``messages.create`` or
        ``toggle_status``, ``"POST /api/v1/..."``, a path, ``download`` for data_url redirects, ``storage``
        for storage GETs, ``*`` for any) answer ``status`` with Chatwoot's error body, without effect;
        ``retry_after``: the ``Retry-After`` header of a throttled (429) answer; ``after``: that many matching
        requests are answered normally first (the platform fails part-way through a listing)."""
        self._faults.append(_Fault(method_path_or_name, status, times, retry_after, after))

    def delay(self, method_path_or_name: str, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` answers to matching requests come ``seconds`` late (the effect happens first)."""
        self._delays.append(_Delay(method_path_or_name, seconds, times))

    def heal(self) -> None:
        """Every fault and delay not yet served is dropped: the API answers normally again."""
        self._faults.clear()
        self._delays.clear()

    @staticmethod
    def _matches(spec: str, name: str, method: str, path: str) -> bool:
        return spec in ("*", name, name.split(".", 1)[-1], path, f"{method} {path}")

    def _take_fault(self, name: str, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if self._matches(fault.spec, name, method, path):
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _take_delay(self, name: str, method: str, path: str) -> float:
        for delay in self._delays:
            if self._matches(delay.spec, name, method, path):
                delay.times -= 1
                if delay.times <= 0:
                    self._delays.remove(delay)
                return delay.seconds
        return 0.0

    @staticmethod
    def _fault_response(status: int, retry_after: float | None = None) -> Response:
        if status == 429:  # Rack::Attack's throttled answer
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return PlainTextResponse("Retry later\n", status_code=429, headers=headers)
        if status in (502, 503, 504):  # the proxy in front of Rails
            return HTMLResponse(f"<html><head><title>{status}</title></head><body><center><h1>{status}</h1>"
                                "</center><hr><center>nginx</center></body></html>", status_code=status)
        if status >= 500:
            return JSONResponse({"status": status, "error": "Internal Server Error"}, status_code=status)
        if status == 404:
            return JSONResponse(_NOT_FOUND, status_code=404)
        if status == 401:
            return JSONResponse({"error": "Invalid Access Token"}, status_code=401)
        return JSONResponse({"error": "Error"}, status_code=status)

    # ------------------------------------------------------------------------------------------ REST

    async def _read(self, request: Request) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        params: dict[str, Any] = dict(request.query_params)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        files: list[dict[str, Any]] = []
        if ctype == "multipart/form-data" or ctype == "application/x-www-form-urlencoded":
            kind = "multipart" if ctype == "multipart/form-data" else "form"
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        data = await value.read()
                        files.append({"field": key, "filename": value.filename or "file",
                                      "content_type": value.content_type or "application/octet-stream",
                                      "size": len(data), "data": data})
                    elif key.endswith("[]"):
                        params.setdefault(key, []).append(value)
                    else:
                        params[key] = value
            return params, kind, files
        body = await request.body()
        if not body:
            return params, "none", files
        try:
            data = json.loads(body)
        except ValueError:
            raise _HttpError(400, {"status": 400, "error": "Bad Request"}) from None
        if isinstance(data, dict):
            params.update(data)
        return params, "json", files

    async def _rest(self, request: Request, name: str,
                    handler: Callable[[str, _Conversation | None, dict[str, Any], list[dict[str, Any]]], Any]
                    ) -> Response:
        method, path = request.method, request.url.path
        token = request.headers.get("api_access_token") or request.headers.get("api-access-token")
        call = Call(name=name, method=method, path=path, token=token, headers=dict(request.headers),
                    body_kind="none", params={}, time=time.monotonic())
        try:
            params, kind, files = await self._read(request)
            call.params, call.body_kind, call.files = params, kind, files
            fault = self._take_fault(name, method, path)
            if fault is not None:
                response = self._fault_response(fault.status, fault.retry_after)
            else:
                role = self._authenticate(token, name)
                if int(request.path_params["account_id"]) != self.account_id:
                    raise _HttpError(404, _NOT_FOUND)
                conv = None
                if "conversation_id" in request.path_params:
                    conv = self._conversations.get(int(request.path_params["conversation_id"]))
                    if conv is None:
                        raise _HttpError(404, _NOT_FOUND)
                response = handler(role, conv, params, files)
        except _HttpError as exc:
            response = JSONResponse(exc.body, status_code=exc.status)
        except ValueError:
            response = JSONResponse(_NOT_FOUND, status_code=404)
        call.status = response.status_code
        with contextlib.suppress(ValueError):
            call.response = json.loads(response.body) if response.body else None
        self.calls.append(call)
        self._notify()
        delay = self._take_delay(name, method, path)
        if delay:
            await asyncio.sleep(delay)
        return response

    def _authenticate(self, token: str | None, name: str) -> str:
        """``Api::BaseController``: devise without the header, then the access token, then the bot's
        endpoint allow-list. Returns ``bot`` or ``agent``."""
        if not token:
            raise _HttpError(401, _SIGN_IN)
        if hmac.compare_digest(token, self.bot_token):
            if name not in BOT_ACCESSIBLE:
                raise _HttpError(401, {"error": "Access to this endpoint is not authorized for bots"})
            return "bot"
        if self.agent_token and hmac.compare_digest(token, self.agent_token):
            return "agent"
        raise _HttpError(401, {"error": "Invalid Access Token"})

    async def _messages_endpoint(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._rest(request, "messages.index", self._list_messages)
        return await self._rest(request, "messages.create", self._create_message)

    def _list_messages(self, role: str, conv: _Conversation | None, params: dict[str, Any],
                       files: list[dict[str, Any]]) -> Response:
        """``MessageFinder``: ``after`` (up to 100 newer, oldest first), ``before`` (20 older), else the latest 20."""
        assert conv is not None
        ordered = sorted(conv.messages, key=lambda m: (m.created_at, m.id))
        if params.get("after") not in (None, ""):
            chosen = [m for m in ordered if m.id > int(params["after"])][:100]
        elif params.get("before") not in (None, ""):
            chosen = [m for m in ordered if m.id < int(params["before"])][-20:]
        else:
            chosen = ordered[-20:]
        return JSONResponse({"meta": {"labels": list(conv.labels), "additional_attributes": conv.additional_attributes,
                                      "contact": self._contact_push(conv.contact), "assignee": conv.assignee,
                                      "agent_last_seen_at": iso(conv.agent_last_seen_at)},
                             "payload": [self._message_push(m) for m in chosen]})

    def _create_message(self, role: str, conv: _Conversation | None, params: dict[str, Any],
                        files: list[dict[str, Any]]) -> Response:
        """``Messages::MessageBuilder``: the bot's reply or note; its message_created goes back to the bot."""
        assert conv is not None
        message_type = params.get("message_type") or "outgoing"
        if message_type not in MESSAGE_TYPES:
            raise _HttpError(422, {"error": f"'{message_type}' is not a valid message_type"})
        if message_type == "incoming" and self._inboxes[conv.inbox_id]["channel_type"] != "Channel::Api":
            raise _HttpError(422, {"error": "Incoming messages are only allowed in Api inboxes"})
        content_type = params.get("content_type") or "text"
        if content_type not in CONTENT_TYPES:
            raise _HttpError(422, {"error": f"'{content_type}' is not a valid content_type"})
        content = params.get("content")
        if content is not None and not isinstance(content, str):
            content = str(content)
        if content is not None and len(content) > MAX_CONTENT_LENGTH:
            raise _HttpError(422, {"message": f"Content is too long (maximum is {MAX_CONTENT_LENGTH} characters)",
                                   "attributes": ["content"]})
        attributes = params.get("content_attributes")
        if isinstance(attributes, str):
            with contextlib.suppress(ValueError):
                attributes = json.loads(attributes)
        atts = []
        for f in files:
            if f["field"] not in ("attachments[]", "attachments"):
                continue
            att = self.attachment(f["data"], file_type=file_type_for(f["content_type"]), filename=f["filename"],
                                  mime=f["content_type"])
            atts.append(att)
        sender_type, sender = ("AgentBot", self.bot) if role == "bot" else ("User", self.agent)
        if message_type == "incoming":
            sender_type, sender = "Contact", conv.contact
        msg = self._add_message(conv, message_type, content, private=_bool_param(params.get("private")),
                                sender_type=sender_type, sender=sender, attachments=atts, content_type=content_type,
                                content_attributes=attributes if isinstance(attributes, dict) else None,
                                echo_id=params.get("echo_id"))
        self._spawn(self._message_event(msg))
        body = {"id": msg.id, "content": msg.content, "inbox_id": conv.inbox_id, "echo_id": msg.echo_id,
                "conversation_id": conv.id, "message_type": MESSAGE_TYPES.index(msg.message_type),
                "content_type": msg.content_type, "status": msg.status, "content_attributes": msg.content_attributes,
                "created_at": int(msg.created_at), "private": msg.private, "source_id": msg.source_id,
                "sender": self._sender_push(msg)}
        if msg.attachments:
            body["attachments"] = copy.deepcopy(msg.attachments)
        return JSONResponse(body)

    async def _toggle_status_endpoint(self, request: Request) -> Response:
        return await self._rest(request, "conversations.toggle_status", self._toggle_status)

    def _toggle_status(self, role: str, conv: _Conversation | None, params: dict[str, Any],
                       files: list[dict[str, Any]]) -> Response:
        """``ConversationsController#toggle_status``: a bot opening a pending conversation is a handoff
        (``bot_handoff!``, ``success`` null); a ``status`` is set as given; none toggles."""
        assert conv is not None
        wanted = params.get("status")
        actor = self.bot["name"] if role == "bot" else self.agent["name"]
        by = "agent_bot" if role == "bot" else "agent"
        success: bool | None = True
        if role == "bot" and conv.status == "pending" and wanted == "open":
            change = self._change_status(conv, "open", by=by, reason="bot_handoff", actor=actor)
            success = None
        elif wanted:
            if wanted not in STATUSES:
                raise _HttpError(500, {"status": 500, "error": "Internal Server Error"})
            change = self._change_status(conv, wanted, by=by, reason="toggle", actor=actor,
                                         snoozed_until=params.get("snoozed_until"))
        else:
            new = "resolved" if conv.status == "open" else "open"
            change = self._change_status(conv, new, by=by, reason="toggle", actor=actor)
        self._spawn(self._after_status(conv, change))
        return JSONResponse({"meta": {}, "payload": {"success": success, "conversation_id": conv.id,
                                                     "current_status": conv.status,
                                                     "snoozed_until": conv.snoozed_until}})

    async def _after_status(self, conv: _Conversation, change: tuple[str, float] | None) -> None:
        await self._status_events(conv, change)
        if change is not None and self.deliver_activity:
            activity = [m for m in conv.messages if m.message_type == "activity"]
            if activity:
                await self._message_event(activity[-1])

    async def _typing_endpoint(self, request: Request) -> Response:
        return await self._rest(request, "conversations.toggle_typing_status", self._toggle_typing)

    def _toggle_typing(self, role: str, conv: _Conversation | None, params: dict[str, Any],
                       files: list[dict[str, Any]]) -> Response:
        assert conv is not None
        self.typing.append({"conversation_id": conv.id, "typing_status": params.get("typing_status"),
                            "is_private": _bool_param(params.get("is_private")),
                            "by": "agent_bot" if role == "bot" else "agent", "time": time.monotonic()})
        return Response(status_code=200)  # head :ok

    async def _show_endpoint(self, request: Request) -> Response:
        return await self._rest(request, "conversations.show", self._show)

    def _show(self, role: str, conv: _Conversation | None, params: dict[str, Any],
              files: list[dict[str, Any]]) -> Response:
        assert conv is not None
        return JSONResponse(self.conversation_data(conv.id))

    # ------------------------------------------------------------------------------------------ help center, history

    def portal(self, slug: str, name: str = "Help", *, custom_domain: str | None = None,
               locales: Iterable[str] = ("en",)) -> dict[str, Any]:
        """A Help Center portal of the account (``Portal``: slug unique per installation)."""
        locales = list(locales)
        self._portals[slug] = {"id": len(self._portals) + 1, "slug": slug, "name": name, "archived": False,
                               "color": "#1f93ff", "custom_domain": custom_domain, "header_text": name,
                               "homepage_link": None, "page_title": name, "account_id": self.account_id,
                               "config": {"allowed_locales": [{"code": c, "articles_count": 0, "categories_count": 0}
                                                              for c in locales],
                                          "default_locale": locales[0]}}
        return self._portals[slug]

    def article(self, portal: str, title: str, content: str, *, status: str = "published", category: str = "",
                description: str = "") -> int:
        """An article of ``portal`` (``status``: draft, published, archived); returns its id. Its slug is made
        as Chatwoot's ``Article#ensure_slug`` makes it: ``<unix time>-<parameterized title>``."""
        if status not in ("draft", "published", "archived"):
            raise ValueError("status must be draft, published or archived")
        now = time.time()
        article_id = next(self._article_ids)
        slug = f"{int(now)}-" + "-".join(w for w in "".join(c if c.isalnum() else " " for c in title.lower()).split())
        self._articles[article_id] = {
            "id": article_id, "portal": portal, "slug": slug, "title": title, "content": content,
            "description": description, "status": status, "position": article_id, "locale": "en",
            "meta": {}, "views": 0, "updated_at": now, "created_at": now, "author_id": self.agent["id"],
            "category": ({"id": 1, "name": category, "slug": category.lower().replace(" ", "-"), "locale": "en"}
                         if category else {"id": None, "name": None, "slug": None, "locale": None})}
        self._notify()
        return article_id

    def update_article(self, article_id: int, **fields: Any) -> None:
        """An agent edits an article (``title``, ``content``, ``status``...): ``updated_at`` moves."""
        self._articles[article_id].update(fields)
        self._articles[article_id]["updated_at"] = time.time()
        self._notify()

    def delete_article(self, article_id: int) -> None:
        del self._articles[article_id]
        self._notify()

    def article_url(self, article_id: int) -> str:
        """The article's public page: ``{custom domain or installation}/hc/{portal}/articles/{slug}``."""
        article = self._articles[article_id]
        domain = self._portals[article["portal"]].get("custom_domain")
        root = (domain if "://" in domain else f"https://{domain}") if domain else self.url
        return f"{root}/hc/{article['portal']}/articles/{article['slug']}"

    def label(self, conversation_id: int, *labels: str, **custom_attributes: Any) -> None:
        """Agents tag a conversation and fill its custom attributes."""
        conv = self._conv(conversation_id)
        conv.labels.extend(labels)
        conv.custom_attributes.update(custom_attributes)
        self._notify()

    def _article_data(self, article: dict[str, Any]) -> dict[str, Any]:
        """``api/v1/accounts/articles/_article.json.jbuilder``."""
        author = {k: self.agent[k] for k in ("id", "name", "available_name", "avatar_url", "thumbnail")}
        return {"id": article["id"], "slug": article["slug"], "title": article["title"],
                "content": article["content"], "description": article["description"], "status": article["status"],
                "position": article["position"], "account_id": self.account_id,
                "updated_at": int(article["updated_at"]), "meta": article["meta"], "locale": article["locale"],
                "associated_article_id": None, "category": dict(article["category"]), "views": article["views"],
                "author": author, "associated_articles": []}

    async def _account_rest(self, request: Request, name: str,
                            handler: Callable[[str, dict[str, Any]], Response]) -> Response:
        return await self._rest(request, name, lambda role, conv, params, files: handler(role, params))

    async def _portal_endpoint(self, request: Request) -> Response:
        slug = request.path_params["portal_id"]

        def show(role: str, params: dict[str, Any]) -> Response:
            portal = self._portals.get(slug)
            if portal is None:  # Current.account.portals.find_by!(slug:) -> RecordNotFound
                raise _HttpError(404, _NOT_FOUND)
            return JSONResponse(copy.deepcopy(portal))

        return await self._account_rest(request, "portals.show", show)

    async def _articles_endpoint(self, request: Request) -> Response:
        slug = request.path_params["portal_id"]

        def index(role: str, params: dict[str, Any]) -> Response:
            if slug not in self._portals:
                raise _HttpError(404, _NOT_FOUND)
            articles = [a for a in self._articles.values() if a["portal"] == slug]
            counts = {s: sum(1 for a in articles if a["status"] == s) for s in ("draft", "published", "archived")}
            chosen = [a for a in articles if not params.get("status") or a["status"] == params["status"]]
            chosen.sort(key=lambda a: (-a["updated_at"], a["id"]))  # order_by_updated_at
            page = max(1, int(params.get("page") or 1))
            payload = [self._article_data(a) for a in chosen[(page - 1) * 25:page * 25]]
            return JSONResponse({"payload": payload, "meta": {
                "all_articles_count": len(articles), "archived_articles_count": counts["archived"],
                "articles_count": len(articles), "current_page": str(params.get("page") or 1),
                "draft_articles_count": counts["draft"], "mine_articles_count": len(articles),
                "published_count": counts["published"]}})

        return await self._account_rest(request, "articles.index", index)

    async def _conversations_endpoint(self, request: Request) -> Response:
        def index(role: str, params: dict[str, Any]) -> Response:
            status = params.get("status") or "open"
            chosen = [c for c in self._conversations.values() if status == "all" or c.status == status]
            chosen.sort(key=lambda c: -c.last_activity_at)  # Conversation.latest
            page = max(1, int(params.get("page") or 1))
            payload = []
            for conv in chosen[(page - 1) * 25:page * 25]:
                data = self.conversation_data(conv.id)
                data["account_id"] = self.account_id
                payload.append(data)
            assigned = sum(1 for c in chosen if c.assignee)
            return JSONResponse({"data": {"meta": {"mine_count": assigned, "assigned_count": assigned,
                                                   "unassigned_count": len(chosen) - assigned,
                                                   "all_count": len(chosen)},
                                          "payload": payload}})

        return await self._account_rest(request, "conversations.index", index)

    async def _profile_endpoint(self, request: Request) -> Response:
        """``GET /api/v1/profile`` (``Api::V1::ProfilesController#show``, an ``Api::BaseController``): the token is
        checked first (``authenticate_access_token!``, then ``validate_bot_access_token!``: profiles are not among
        the bot's endpoints, so an agent bot's token gets 401 "not authorized for bots"); a user's token gets its
        profile (``api/v1/models/_user.json.jbuilder``, the account list included)."""
        token = request.headers.get("api_access_token") or request.headers.get("api-access-token")
        call = Call(name="profiles.show", method="GET", path=request.url.path, token=token,
                    headers=dict(request.headers), body_kind="none", params=dict(request.query_params),
                    time=time.monotonic())
        try:
            self._authenticate(token, "profiles.show")
            agent = self.agent
            response: Response = JSONResponse({
                "access_token": self.agent_token, "account_id": self.account_id,
                "available_name": agent["available_name"], "avatar_url": agent["avatar_url"], "confirmed": True,
                "display_name": None, "message_signature": None, "email": agent["email"], "id": agent["id"],
                "inviter_id": None, "name": agent["name"], "provider": "email", "pubsub_token": "pubsub-agent",
                "role": "agent", "ui_settings": {}, "uid": agent["email"], "type": "user",
                "accounts": [{"id": self.account_id, "name": self.account["name"], "status": "active",
                              "active_at": None, "role": "agent", "permissions": ["agent"],
                              "availability": "online", "availability_status": "online", "auto_offline": True}]})
        except _HttpError as exc:
            response = JSONResponse(exc.body, status_code=exc.status)
        call.status = response.status_code
        self.calls.append(call)
        self._notify()
        return response

    async def _unknown_endpoint(self, request: Request) -> Response:
        self.calls.append(Call(name="unknown", method=request.method, path=request.url.path,
                               token=request.headers.get("api_access_token"), headers=dict(request.headers),
                               body_kind="none", params=dict(request.query_params), status=404,
                               time=time.monotonic()))
        self._notify()
        return HTMLResponse("<html><body><h1>The page you were looking for doesn't exist.</h1></body></html>",
                            status_code=404)

    # ------------------------------------------------------------------------------------------ attachments

    def _download_record(self, server: str, request: Request, status: int, blob: _Blob | None) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.downloads.append({
            "server": server, "method": request.method, "path": request.url.path, "status": status,
            "blob_id": blob.id if blob else None, "filename": blob.filename if blob else None,
            "api_access_token": "api_access_token" in headers or "api-access-token" in headers,
            "authorization": "authorization" in headers, "headers": headers, "time": time.monotonic()})
        self._notify()

    def _presigned(self, blob: _Blob) -> str:
        date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        signature = hmac.new(self._storage_secret.encode(), f"{blob.key}\n{date}\n{STORAGE_URL_TTL}".encode(),
                             hashlib.sha256).hexdigest()
        disposition = quote(f'inline; filename="{blob.filename}"', safe="")
        return (f"{self.storage_url}/chatwoot-uploads/{blob.key}?response-content-disposition={disposition}"
                f"&response-content-type={quote(blob.mime, safe='')}&X-Amz-Algorithm=AWS4-HMAC-SHA256"
                f"&X-Amz-Credential=AKIAFAKE%2F{date[:8]}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={date}"
                f"&X-Amz-Expires={STORAGE_URL_TTL}&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}")

    async def _redirect_endpoint(self, request: Request) -> Response:
        """``ActiveStorage::Blobs::RedirectController``: no authentication (the signed id is the key); 302
        to a presigned storage URL valid for 5 minutes."""
        blob = self._blobs.get(request.path_params["signed_id"])
        fault = self._take_fault("download", request.method, request.url.path)
        if fault is not None:
            response = self._fault_response(fault.status)
        elif blob is None:
            response = HTMLResponse("<html><body><h1>The page you were looking for doesn't exist.</h1></body></html>",
                                    status_code=404)
        else:
            response = RedirectResponse(self._presigned(blob), status_code=302,
                                        headers={"Cache-Control": f"max-age={STORAGE_URL_TTL}, private"})
        self._download_record("app", request, response.status_code, blob)
        delay = self._take_delay("download", request.method, request.url.path)
        if delay:
            await asyncio.sleep(delay)
        return response

    async def _storage_endpoint(self, request: Request) -> Response:
        """The S3-like storage: a valid, unexpired presigned query is the only authentication; an
        ``Authorization`` header on top is refused like S3 does."""
        blob = self._blobs_by_key.get(request.path_params["key"])
        query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        fault = self._take_fault("storage", request.method, request.url.path)
        response: Response
        if fault is not None:
            response = self._fault_response(fault.status)
        elif "authorization" in {k.lower() for k in request.headers}:
            response = _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
                                 "query parameter, Signature query string parameter or the Authorization header "
                                 "should be specified")
        elif blob is None:
            response = _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        else:
            date, expires = query.get("X-Amz-Date", ""), query.get("X-Amz-Expires", "")
            expected = hmac.new(self._storage_secret.encode(), f"{blob.key}\n{date}\n{expires}".encode(),
                                hashlib.sha256).hexdigest()
            if not hmac.compare_digest(query.get("X-Amz-Signature", ""), expected):
                response = _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not "
                                     "match the signature you provided.")
            elif datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp() + int(expires) < time.time():
                response = _s3_error(403, "AccessDenied", "Request has expired")
            else:
                headers = {"ETag": f'"{hashlib.md5(blob.data).hexdigest()}"',
                           "Content-Disposition": query.get("response-content-disposition", "inline"),
                           "Accept-Ranges": "bytes"}
                body = b"" if request.method == "HEAD" else blob.data
                response = Response(body, media_type=query.get("response-content-type") or blob.mime,
                                    headers=headers)
                if request.method == "HEAD":
                    response.headers["content-length"] = str(len(blob.data))
        self._download_record("storage", request, response.status_code, blob)
        delay = self._take_delay("storage", request.method, request.url.path)
        if delay:
            await asyncio.sleep(delay)
        return response


class _HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _signed(purpose: str, value: int) -> str:
    """A Rails-looking signed id: base64 JSON message ``--`` a digest."""
    data = base64.b64encode(json.dumps({"_rails": {"data": value, "pur": purpose}},
                                       separators=(",", ":")).encode()).decode()
    digest = hashlib.sha1(f"{data}{purpose}".encode()).hexdigest()
    return f"{data}--{digest}"


def _s3_error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>")
    return Response(body, status_code=status, media_type="application/xml")
