"""A protocol-faithful fake of Slack for tests: Web API, Socket Mode and an Events API sender.

``FakeSlack`` is a real HTTP + WebSocket server (starlette on uvicorn, 127.0.0.1, a free port) that runs
inside the test's event loop. Point the real ``slack_sdk`` / ``slack_bolt`` clients at it:

    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        await client.chat_postMessage(channel="C0GENERAL", text="hi")
        assert slack.messages("C0GENERAL")[0].text == "hi"

What is modelled on the wire, checked against slack_sdk 3.48 / slack_bolt 1.30 and the method specs in
slack-ruby/slack-api-ref (docs.slack.dev/methods/*.json):

* Web API ``POST|GET /api/<method>``; arguments from the query string (the SDK's ``params=``), a form body
  or a JSON body (the SDK's ``json=``; a token inside JSON is ignored, like Slack: JSON needs the header).
  Token from ``Authorization: Bearer`` or a ``token`` form/query argument: missing → ``not_authed``,
  unknown → ``invalid_auth``, the wrong kind (app token for chat, bot token for apps.connections.open) →
  ``not_allowed_token_type``. Logical errors are HTTP 200 with ``{"ok": false, "error": ...}``.
* Rate limits (``rate_limits=True``): token buckets per ``SlackLimits``; over the limit → HTTP 429,
  ``Retry-After: N`` and ``{"ok": false, "error": "ratelimited"}``.
* Native AI streaming (chat.startStream / appendStream / stopStream) with per-message state, expiry
  (``message_not_in_streaming_state``), ``streaming_state_conflict`` for chat.update of a live stream.
* files_upload_v2's three steps (getUploadURLExternal, the raw upload POST, completeUploadExternal) and
  ``url_private`` downloads that need ``Authorization: Bearer <bot token>`` (without it: a 302 to an HTML
  sign-in page, as Slack does).
* Socket Mode: ``apps.connections.open`` → ``ws://.../link/?ticket=...``; hello, envelopes, acks,
  redelivery of unacked ``events_api`` envelopes, ``disconnect`` messages, several connections.
* The Events API over HTTP: v0 request signatures, ``X-Slack-Retry-Num`` / ``X-Slack-Retry-Reason``,
  retries when the app does not answer 2xx within 3 s.

Everything that changes the fake's state wakes ``wait_for`` waiters, so tests never sleep for ordering.
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
import math
import mimetypes
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote
from zoneinfo import ZoneInfo

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from tests.fakes.serving import serve_asgi, walk

PAYLOAD_DIR = Path(__file__).resolve().parent.parent / "payloads" / "slack"
"""Where the recorded Events API payloads live (``load_payload`` reads them)."""

MAX_TEXT = 40_000
"""chat.postMessage truncates ``text`` past this; chat.update and chat.postEphemeral answer ``msg_too_long``."""
MAX_MARKDOWN_TEXT = 12_000
"""``markdown_text`` (and each markdown_text chunk) is limited to 12,000 characters."""
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ACTIONS = 5
"""A ``context_actions`` block holds 1 to 5 ``feedback_buttons`` / ``icon_button`` elements."""
MAX_FEEDBACK_TEXT = 75
MAX_FEEDBACK_VALUE = 2000
SCOPES = ("app_mentions:read,assistant:write,channels:history,chat:write,files:read,files:write,"
          "groups:history,im:history,im:read,mpim:history,reactions:write,users:read,commands")
SLACK_USER_AGENT = "Slackbot 1.0 (+https://api.slack.com/robots)"
_ENVELOPE_KEYS = frozenset({"token", "team_id", "api_app_id", "event_id", "event_time", "authorizations",
                            "is_ext_shared_channel", "event_context", "context_team_id", "context_enterprise_id"})
_TS_KEYS = frozenset({"ts", "thread_ts", "event_ts", "deleted_ts"})
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CHUNK_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "markdown_text": lambda c: isinstance(c.get("text"), str),
    "task_update": lambda c: bool(c.get("id") and c.get("title"))
    and c.get("status") in ("pending", "in_progress", "complete", "error"),
    "plan_update": lambda c: isinstance(c.get("title"), str),
    "blocks": lambda c: isinstance(c.get("blocks"), list),
}


# ---------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``burst`` calls may come at once, refilled at ``per_minute`` calls a minute."""

    per_minute: float
    burst: float

    @property
    def per_second(self) -> float:
        """Refill rate in calls per second."""
        return self.per_minute / 60.0


TIER1 = Rate(per_minute=1, burst=1)
"""Slack's Tier 1: 1+ calls a minute."""
TIER2 = Rate(per_minute=20, burst=20)
"""Slack's Tier 2: 20+ calls a minute (chat.startStream, chat.stopStream)."""
TIER3 = Rate(per_minute=50, burst=50)
"""Slack's Tier 3: 50+ calls a minute (chat.update, chat.delete, conversations.*)."""
TIER4 = Rate(per_minute=100, burst=100)
"""Slack's Tier 4: 100+ calls a minute (chat.appendStream, users.info, files.*)."""

DEFAULT_METHOD_LIMITS: Mapping[str, Rate] = {
    # Tiers from the method specs (slack-api-ref docs.slack.dev/methods/*.json "rate_limits").
    "chat.update": TIER3,
    "chat.delete": TIER3,
    "chat.postEphemeral": TIER4,
    "chat.startStream": TIER2,
    "chat.appendStream": TIER4,
    "chat.stopStream": TIER2,
    "assistant.threads.setStatus": TIER4,  # "special" in the spec; modelled as Tier 4
    "assistant.threads.setSuggestedPrompts": TIER4,
    "assistant.threads.setTitle": TIER4,
    "users.info": TIER4,
    "conversations.info": TIER3,
    "conversations.replies": TIER3,
    "files.getUploadURLExternal": TIER4,
    "files.completeUploadExternal": TIER4,
    "files.info": TIER4,
    "apps.connections.open": TIER3,
    "reactions.add": TIER3,
    "reactions.remove": TIER3,
}


@dataclass(frozen=True)
class SlackLimits:
    """The rate limits ``FakeSlack(rate_limits=True)`` enforces.

    * ``post_message_per_channel``: chat.postMessage is "1 message per second per channel, short bursts
      allowed" (Slack's "special" tier): a bucket of 3 refilled at 1/s, per channel.
    * ``methods``: per method, per workspace (Slack counts per app per workspace per method). The tiers are
      Slack's published minimums (Tier 2: 20/min, Tier 3: 50/min, Tier 4: 100/min); a tier's whole minute
      may be spent at once. Methods not listed (auth.test, the "special" ones) are unlimited.
    """

    post_message_per_channel: Rate = Rate(per_minute=60, burst=3)
    methods: Mapping[str, Rate] = field(default_factory=lambda: dict(DEFAULT_METHOD_LIMITS))

    def with_rate(self, method: str, rate: Rate) -> SlackLimits:
        """A copy with ``method`` limited to ``rate`` (``chat.postMessage`` sets the per-channel rate)."""
        if method == "chat.postMessage":
            return replace(self, post_message_per_channel=rate)
        return replace(self, methods={**self.methods, method: rate})


class _Bucket:
    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = time.monotonic()

    def take(self) -> int:
        """0 when a call may go through (and spends a token), else the seconds to wait (Retry-After)."""
        now = time.monotonic()
        self.tokens = min(self.rate.burst, self.tokens + (now - self.stamp) * self.rate.per_second)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate.per_second))


# ---------------------------------------------------------------------------------------------- records


@dataclass
class Call:
    """One Web API request the fake received (also the upload POST, as method ``upload``, and file
    downloads, as method ``download``)."""

    method: str
    params: dict[str, Any]
    """Every argument, decoded: query string, form fields and JSON body merged (JSON-encoded form fields
    such as ``blocks`` stay strings here, as sent)."""
    body_kind: str
    """``json``, ``form``, ``multipart``, ``raw`` or ``query`` (nothing in the body)."""
    time: float
    """``time.monotonic()`` when the request arrived."""
    status: int = 200
    """The HTTP status answered."""
    ok: bool = True
    error: str | None = None
    token: str | None = None
    response: dict[str, Any] | None = None


@dataclass
class SlackMessage:
    """A message as users see it in a channel (bot messages, and user messages the fake has seen)."""

    ts: str
    channel: str
    text: str = ""
    """Current text; for streamed messages the concatenation of every markdown_text appended so far."""
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] | None = None
    markdown_text: str | None = None
    user: str | None = None
    bot_id: str | None = None
    app_id: str | None = None
    team: str | None = None
    subtype: str | None = None
    metadata: dict[str, Any] | None = None
    attachments: list[dict[str, Any]] | None = None
    files: list[dict[str, Any]] | None = None
    updates: int = 0
    """How many chat.update calls changed it."""
    history: list[str] = field(default_factory=list)
    """Every text it has had, oldest first (``history[-1] == text``); a stream adds one per append."""
    streaming: bool = False
    """True while chat.appendStream would be accepted."""
    stream_state: str | None = None
    """``None`` (not streamed), ``streaming``, ``stopped``, ``expired`` or ``stopped_by_user``."""
    stream_appends: int = 0
    chunks: list[dict[str, Any]] = field(default_factory=list)
    """Every streaming chunk received, in order (markdown_text arguments appear as markdown_text chunks)."""
    recipient_user_id: str | None = None
    recipient_team_id: str | None = None
    deleted: bool = False
    truncated: bool = False
    """chat.postMessage cut ``text`` at 40,000 characters."""
    edited_ts: str | None = None
    reply_broadcast: bool = False
    unfurl_links: bool | None = None
    unfurl_media: bool | None = None
    mrkdwn: bool | None = None
    username: str | None = None
    icon_emoji: str | None = None
    icon_url: str | None = None
    client_msg_id: str | None = None
    started_at: float = field(default=0.0, repr=False)
    last_append_at: float = field(default=0.0, repr=False)

    @property
    def is_bot(self) -> bool:
        """Posted by an app (has a ``bot_id``)."""
        return self.bot_id is not None

    def to_api(self) -> dict[str, Any]:
        """The message object as the Web API returns it."""
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.subtype:
            out["subtype"] = self.subtype
        if self.user:
            out["user"] = self.user
        if self.bot_id:
            out["bot_id"] = self.bot_id
            out["app_id"] = self.app_id
            out["bot_profile"] = {"id": self.bot_id, "app_id": self.app_id, "name": self.username or "internvl",
                                  "deleted": False, "team_id": self.team,
                                  "icons": {"image_36": "", "image_48": "", "image_72": ""}}
        if self.client_msg_id:
            out["client_msg_id"] = self.client_msg_id
        if self.team:
            out["team"] = self.team
        if self.thread_ts:
            out["thread_ts"] = self.thread_ts
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.attachments:
            out["attachments"] = self.attachments
        if self.files:
            out["files"] = self.files
            out["upload"] = False
        if self.metadata:
            out["metadata"] = self.metadata
        if self.edited_ts:
            out["edited"] = {"user": self.user, "ts": self.edited_ts}
        return out


@dataclass
class EventDeliveryAttempt:
    """One HTTP attempt of ``FakeSlack.deliver_event``."""

    retry_num: int
    status: int | None
    """The HTTP status, or None when the app did not answer in time or could not be reached."""
    reason: str
    """Empty when delivered, else Slack's retry reason: http_timeout, http_error, connection_failed."""
    elapsed: float


@dataclass
class EventDelivery:
    """What ``FakeSlack.deliver_event`` did."""

    event_id: str | None
    attempts: list[EventDeliveryAttempt]

    @property
    def delivered(self) -> bool:
        """Whether an attempt got a 2xx."""
        return any(a.status is not None and 200 <= a.status < 300 for a in self.attempts)


class _ApiError(Exception):
    def __init__(self, error: str, status: int = 200, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.extra = extra


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int
    times: int


@dataclass
class _Conn:
    id: int
    ws: WebSocket
    host: str
    opened_at: float
    open: bool = True
    received: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Chain:
    """An envelope and its redeliveries."""

    first_id: str
    type: str
    payload: dict[str, Any]
    ids: list[str] = field(default_factory=list)
    acked: bool = False
    task: asyncio.Task[None] | None = None


@dataclass
class _Upload:
    file_id: str
    filename: str
    length: int
    alt_txt: str | None
    snippet_type: str | None
    data: bytes | None = None


def _new_id(prefix: str, n: int = 10) -> str:
    return prefix + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(n))


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, (str, int)) and str(value).lower() in ("1", "true"))


def sign_request(signing_secret: str, timestamp: int | str, body: bytes) -> str:
    """Slack's v0 request signature: ``v0=HMAC_SHA256(secret, "v0:{timestamp}:{body}")``, hex."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def load_payload(name: str, files: dict[str, bytes] | None = None, *, fake: FakeSlack | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """A recorded Events API payload from ``tests/payloads/slack/<name>.json``.

    With ``fake``, placeholder ids and timestamps become fresh ones of that fake (the same placeholder maps
    to the same fresh value within one fake, so ``retried_delivery`` keeps ``mention_with_image``'s
    event_id), and file objects whose placeholder id is a key of ``files`` are served by the fake with
    those bytes. ``overrides`` replace keys of the envelope (``event_id``, ``team_id``...) or else of the
    inner event (``text``, ``channel``, ``user``...).
    """
    if fake is not None:
        return fake.load_payload(name, files, **overrides)
    if files:
        raise ValueError("serving files needs a FakeSlack: use fake.load_payload(...)")
    payload = json.loads((PAYLOAD_DIR / f"{name.removesuffix('.json')}.json").read_text())
    _apply_overrides(payload, overrides)
    return payload


def _apply_overrides(payload: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key in _ENVELOPE_KEYS or "event" not in payload:
            payload[key] = value
        else:
            payload["event"][key] = value


def _context_actions_problems(block: Mapping[str, Any], where: str) -> list[str]:
    """What Slack says of a ``context_actions`` block (docs.slack.dev/reference/block-kit/blocks/
    context-actions-block, .../block-elements/feedback-buttons-element): 1 to 5 elements, each a
    ``feedback_buttons`` (a ``positive_button`` and a ``negative_button``, each a plain_text ``text`` of at most
    75 characters and a ``value`` of at most 2,000) or an ``icon_button``."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_CONTEXT_ACTIONS:
        return [f"[ERROR] must provide 1 to {MAX_CONTEXT_ACTIONS} items [json-pointer:{where}/elements]"]
    problems = []
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        kind = element.get("type") if isinstance(element, dict) else None
        if kind == "icon_button":
            continue
        if kind != "feedback_buttons":
            problems.append(f"[ERROR] must be one of feedback_buttons, icon_button [json-pointer:{at}/type]")
            continue
        for side in ("positive_button", "negative_button"):
            button = element.get(side)
            text = button.get("text") if isinstance(button, dict) else None
            if not isinstance(text, dict) or text.get("type") != "plain_text" or not text.get("text"):
                problems.append(f"[ERROR] missing required field: text [json-pointer:{at}/{side}]")
            elif len(str(text["text"])) > MAX_FEEDBACK_TEXT:
                problems.append(f"[ERROR] must be less than {MAX_FEEDBACK_TEXT + 1} characters "
                                f"[json-pointer:{at}/{side}/text/text]")
            value = button.get("value") if isinstance(button, dict) else None
            if not isinstance(value, str) or not value:
                problems.append(f"[ERROR] missing required field: value [json-pointer:{at}/{side}]")
            elif len(value) > MAX_FEEDBACK_VALUE:
                problems.append(f"[ERROR] must be less than {MAX_FEEDBACK_VALUE + 1} characters "
                                f"[json-pointer:{at}/{side}/value]")
    return problems


def _rich_text(text: str) -> list[dict[str, Any]]:
    """The rich_text block a Slack client attaches to what a user types."""
    elements: list[dict[str, Any]] = []
    for part in re.split(r"(<@[UW][A-Z0-9]+>)", text):
        if not part:
            continue
        mention = re.fullmatch(r"<@([UW][A-Z0-9]+)>", part)
        elements.append({"type": "user", "user_id": mention.group(1)} if mention else {"type": "text", "text": part})
    return [{"type": "rich_text", "block_id": _new_id("", 5).lower(),
             "elements": [{"type": "rich_text_section", "elements": elements}]}]


# ---------------------------------------------------------------------------------------------- the fake


class FakeSlack:
    """A Slack workspace with one app installed, served on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, bot_token: str = "xoxb-test-bot-token", app_token: str = "xapp-test-app-token",
                 signing_secret: str = "test-signing-secret", team_id: str = "T0001", bot_user_id: str = "U0BOT",
                 bot_id: str = "B0BOT", app_id: str = "A0APP", rate_limits: bool = False,
                 limits: SlackLimits | None = None, stream_idle_expiry: float = 300.0,
                 socket_ack_timeout: float = 3.0, stream_max_age: float | None = 306.0,
                 stream_requires_thread_ts: bool = True, strict_stream_recipients: bool = False,
                 strict_channels: bool = False, max_socket_connections: int = 10,
                 team_domain: str = "fake-workspace", team_name: str = "Fake Workspace",
                 bot_name: str = "internvl", verification_token: str = "test-verification-token",
                 echo_bot_messages: bool = False) -> None:
        """Configure the workspace; the server starts in ``__aenter__``.

        ``stream_idle_expiry``: a streamed message stops accepting appends this long after its last append.
        ``stream_max_age``: ... and this long after chat.startStream whatever the appends (Slack ends
        streams about 5 minutes after they start; None disables). ``stream_requires_thread_ts``: slack_sdk
        3.48 always sends thread_ts and the spec says streamed messages must be replies; without it the fake
        answers ``invalid_arguments``. ``strict_stream_recipients``: also require recipient_user_id /
        recipient_team_id in DMs (Slack's docs require them only in channels). ``strict_channels``: only
        channels registered with ``add_channel`` (or seen in events) exist; otherwise any well-formed
        C…/G…/D… id does. ``socket_ack_timeout``: unacked events_api envelopes are redelivered after this
        (Slack: ~3 s), up to 3 times. ``echo_bot_messages``: like Slack for an app subscribed to message.*
        events, every message the bot posts comes back to it as a ``message`` event (with ``bot_id``) over
        Socket Mode, to test that the app ignores its own messages.
        """
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.team_domain = team_domain
        self.team_name = team_name
        self.bot_name = bot_name
        self.verification_token = verification_token
        self.rate_limits = rate_limits
        self.limits = limits or SlackLimits()
        self.stream_idle_expiry = stream_idle_expiry
        self.stream_max_age = stream_max_age
        self.stream_requires_thread_ts = stream_requires_thread_ts
        self.strict_stream_recipients = strict_stream_recipients
        self.strict_channels = strict_channels
        self.socket_ack_timeout = socket_ack_timeout
        self.max_socket_connections = max_socket_connections
        self.echo_bot_messages = echo_bot_messages

        self.url = ""
        """``http://127.0.0.1:PORT`` once started."""
        self.api_url = ""
        """``{url}/api/``: pass as ``AsyncWebClient(base_url=...)``."""

        self.calls: list[Call] = []
        self.served_429 = 0
        self.statuses: list[dict[str, Any]] = []
        """assistant.threads.setStatus calls: channel_id, thread_ts, status, loading_messages."""
        self.thread_status: dict[tuple[str, str], str] = {}
        """The status a user sees now per (channel, thread_ts); Slack clears it when the app replies."""
        self.suggested_prompts: list[dict[str, Any]] = []
        self.titles: list[dict[str, Any]] = []
        self.uploads: list[dict[str, Any]] = []
        """Files completed through files.completeUploadExternal: file_id, filename, title, bytes, length,
        channel_id, thread_ts, initial_comment, alt_txt."""
        self.downloads: list[dict[str, Any]] = []
        """url_private GETs: file_id, authorized, path."""
        self.ephemerals: list[dict[str, Any]] = []
        self.reactions: list[dict[str, Any]] = []
        self.command_responses: list[dict[str, Any]] = []
        """What apps POSTed to slash-command ``response_url``s."""

        self.acks: dict[str, dict[str, Any]] = {}
        """envelope_id → the ack message the app sent (``{"envelope_id", "payload"?}``)."""
        self.envelopes: list[dict[str, Any]] = []
        """Every Socket Mode envelope sent (or attempted with no connection: ``connection`` is None), with
        ``first_envelope_id`` and ``connection`` added."""
        self.socket_messages: list[dict[str, Any]] = []
        """Every JSON message apps sent over Socket Mode (acks included)."""
        self.hello_sent = 0
        self.connections_opened = 0

        self._messages: dict[str, list[SlackMessage]] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, dict[str, Any]] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self._file_data: dict[str, bytes] = {}
        self._uploads: dict[str, _Upload] = {}
        self._upload_keys: dict[str, str] = {}
        self._tickets: set[str] = set()
        self._conns: list[_Conn] = []
        self._rr = itertools.count()
        self._conn_ids = itertools.count(1)
        self._chains: dict[str, _Chain] = {}
        self._chain_of: dict[str, _Chain] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._delays: dict[str, list[list[float]]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed = asyncio.Event()
        self._last_ts_us = 0
        self._map: dict[str, str] = {}
        self._http: httpx.AsyncClient | None = None
        self._serving: contextlib.AbstractAsyncContextManager[str] | None = None

        self.add_user(bot_user_id, name=bot_name, is_bot=True)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeSlack:
        """Start the server."""
        self._serving = serve_asgi(self._app())
        self.url = await self._serving.__aenter__()
        self.api_url = f"{self.url}/api/"
        self._http = httpx.AsyncClient(timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close every socket, cancel redeliveries and timers, stop the server."""
        for handle in self._expiry_timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for conn in list(self._conns):
            await self._close_conn(conn, 1001)
        if self._http is not None:
            await self._http.aclose()
        if self._serving is not None:
            await self._serving.__aexit__(None, None, None)

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/{method}", self._api, methods=["GET", "POST"]),
            Route("/upload/v1/{key}", self._upload, methods=["POST"]),
            Route("/files-pri/{team_file}/{rest:path}", self._download, methods=["GET", "HEAD"]),
            Route("/commands/{key}", self._command_response, methods=["POST"]),
            Route("/", self._signin_page, methods=["GET"]),
            WebSocketRoute("/link/", self._socket),
        ])

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10, *,  # noqa: ASYNC109
                       what: str = "") -> None:
        """Return as soon as ``predicate()`` holds; it is re-checked whenever the fake's state changes
        (a call, an ack, a socket opening or closing, a stream expiring). TimeoutError says what the fake
        saw meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed
            if predicate():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(self._describe(what or getattr(predicate, "__name__", "predicate"), timeout))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _describe(self, what: str, timeout: float) -> str:
        calls = ", ".join(f"{c.method}→{c.error or c.status}" for c in self.calls[-12:]) or "none"
        bots = [f"{m.channel}/{m.ts}: {m.text[:40]!r}" for ms in self._messages.values() for m in ms if m.is_bot]
        return (f"FakeSlack: {what} did not hold within {timeout}s. Last calls: {calls}. "
                f"Bot messages: {bots[-6:] or 'none'}. Socket connections: {self.socket_connections} "
                f"(hello sent {self.hello_sent}), envelopes sent {len(self.envelopes)}, acks {len(self.acks)}.")

    # ------------------------------------------------------------------------------------------ workspace

    def new_ts(self) -> str:
        """A fresh message timestamp ("1732900000.000100"), increasing."""
        now_us = int(time.time() * 1_000_000)
        self._last_ts_us = max(now_us, self._last_ts_us + 100)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def add_user(self, user_id: str, *, name: str = "ana", locale: str = "en-US", tz: str = "Europe/Lisbon",
                 is_bot: bool = False, real_name: str | None = None, email: str | None = None,
                 deleted: bool = False) -> dict[str, Any]:
        """Add (or replace) a member; returns the user object users.info answers (locale included)."""
        zone = ZoneInfo(tz)
        now = time.time()
        local = datetime.fromtimestamp(now, zone)
        offset = local.utcoffset()
        real = real_name or name.capitalize()
        user: dict[str, Any] = {
            "id": user_id, "team_id": self.team_id, "name": name, "deleted": deleted, "color": "9f69e7",
            "real_name": real, "tz": tz, "tz_label": local.tzname() or tz,
            "tz_offset": int(offset.total_seconds()) if offset else 0,
            "profile": {"real_name": real, "real_name_normalized": real, "display_name": name,
                        "display_name_normalized": name, "first_name": real.split(" ")[0],
                        "last_name": " ".join(real.split(" ")[1:]), "status_text": "", "status_emoji": "",
                        "image_48": f"https://avatars.slack-edge.com/{user_id}_48.png", "team": self.team_id,
                        **({"email": email} if email else {}),
                        **({"bot_id": self.bot_id, "api_app_id": self.app_id, "always_active": True}
                           if user_id == self.bot_user_id else {})},
            "is_admin": False, "is_owner": False, "is_primary_owner": False, "is_restricted": False,
            "is_ultra_restricted": False, "is_bot": is_bot, "is_app_user": False, "updated": int(now),
            "is_email_confirmed": not is_bot, "who_can_share_contact_card": "EVERYONE", "locale": locale,
        }
        self._users[user_id] = user
        self._notify()
        return user

    def add_channel(self, channel_id: str, *, name: str | None = None, user: str | None = None,
                    is_archived: bool = False) -> dict[str, Any]:
        """Register a conversation: C… public channel, G… private channel, D… DM (``user``: the member)."""
        kind = channel_id[0]
        info: dict[str, Any]
        if kind == "D":
            info = {"id": channel_id, "created": int(time.time()), "is_im": True, "is_org_shared": False,
                    "user": user or "", "is_user_deleted": False, "priority": 0, "is_archived": is_archived}
        else:
            cname = name or f"channel-{channel_id.lower()}"
            info = {"id": channel_id, "name": cname, "name_normalized": cname, "is_channel": kind == "C",
                    "is_group": kind == "G", "is_im": False, "is_mpim": False, "is_private": kind == "G",
                    "created": int(time.time()), "is_archived": is_archived, "is_general": False,
                    "is_shared": False, "is_org_shared": False, "is_ext_shared": False, "is_member": True,
                    "creator": "", "context_team_id": self.team_id}
        self._channels[channel_id] = info
        return info

    def dm_channel(self, user_id: str) -> str:
        """The DM conversation between the bot and ``user_id`` (created on first use)."""
        for cid, info in self._channels.items():
            if info.get("is_im") and info.get("user") == user_id:
                return cid
        cid = "D" + hashlib.sha1(user_id.encode()).hexdigest()[:9].upper()
        self.add_channel(cid, user=user_id)
        return cid

    def add_file(self, data: bytes, *, name: str, mimetype: str, filetype: str = "", size: int | None = None,
                 host: str | None = None, user: str | None = None, file_id: str | None = None,
                 title: str | None = None) -> dict[str, Any]:
        """Host ``data`` and return its Slack file object. ``url_private`` / ``url_private_download`` are
        served by this fake and need ``Authorization: Bearer <bot token>``; ``host`` ("https://evil.test")
        forges URLs on another host; ``size`` lets the object lie about the size."""
        fid = file_id or _new_id("F")
        base = (host or self.url).rstrip("/")
        ftype = filetype or (name.rsplit(".", 1)[-1].lower() if "." in name else "binary")
        now = int(time.time())
        obj: dict[str, Any] = {
            "id": fid, "created": now, "timestamp": now, "name": name, "title": title or name,
            "mimetype": mimetype, "filetype": ftype, "pretty_type": ftype.upper(), "user": user or "",
            "user_team": self.team_id, "editable": False, "size": len(data) if size is None else size,
            "mode": "hosted", "is_external": False, "external_type": "", "is_public": False,
            "public_url_shared": False, "display_as_bot": False, "username": "",
            "url_private": f"{base}/files-pri/{self.team_id}-{fid}/{quote(name)}",
            "url_private_download": f"{base}/files-pri/{self.team_id}-{fid}/download/{quote(name)}",
            "media_display_type": "unknown",
            "permalink": f"https://{self.team_domain}.slack.com/files/{user or self.bot_user_id}/{fid}/{quote(name)}",
            "permalink_public": f"https://slack-files.com/{self.team_id}-{fid}-{secrets.token_hex(5)}",
            "has_rich_preview": False, "file_access": "visible",
        }
        if mimetype.startswith("image/"):
            obj.update({"original_w": 640, "original_h": 480, "thumb_tiny": "",
                        "thumb_360": obj["url_private"], "thumb_360_w": 360, "thumb_360_h": 270})
        self._files[fid] = obj
        self._file_data[fid] = data
        self._notify()
        return copy.deepcopy(obj)

    def _channel_info(self, channel: str) -> dict[str, Any]:
        if channel in self._channels:
            return self._channels[channel]
        if self.strict_channels or not _CHANNEL_ID.match(channel):
            raise _ApiError("channel_not_found")
        return self.add_channel(channel)

    def _resolve_channel(self, p: Mapping[str, Any], key: str = "channel") -> str:
        channel = str(p.get(key) or "")
        if not channel:
            raise _ApiError("channel_not_found")
        if _USER_ID.match(channel) and channel in self._users:  # posting to a user ID opens the DM
            channel = self.dm_channel(channel)
        info = self._channel_info(channel)
        if info.get("is_archived"):
            raise _ApiError("is_archived")
        return channel

    # ------------------------------------------------------------------------------------------ users' side

    def event_callback(self, event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
        """Wrap ``event`` in the Events API envelope Slack sends (over HTTP and inside Socket Mode)."""
        channel = event.get("channel") or event.get("assistant_thread", {}).get("channel_id") or event.get("item", {}).get("channel")
        context = {"et": event.get("type"), "tid": self.team_id, "aid": self.app_id}
        if channel:
            context["cid"] = channel
        encoded = base64.urlsafe_b64encode(json.dumps(context, separators=(",", ":")).encode()).decode().rstrip("=")
        return {
            "token": self.verification_token, "team_id": self.team_id, "context_team_id": self.team_id,
            "context_enterprise_id": None, "api_app_id": self.app_id, "event": event, "type": "event_callback",
            "event_id": event_id or _new_id("Ev"), "event_time": int(time.time()),
            "authorizations": [{"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id,
                                "is_bot": True, "is_enterprise_install": False}],
            "is_ext_shared_channel": False, "event_context": f"4-{encoded}",
        }

    def message_event(self, channel: str, user: str, text: str, *, channel_type: str = "channel",
                      thread_ts: str | None = None, files: list[dict[str, Any]] | None = None,
                      subtype: str | None = None, bot_id: str | None = None, ts: str | None = None) -> dict[str, Any]:
        """A ``message`` event (message.channels / message.im / ...) as a user's client produces it.

        With ``files`` and no subtype it is a ``file_share`` message; with ``bot_id`` it is an app's message
        (``subtype="bot_message"`` for a legacy bot/webhook one). Returns the inner event: wrap it with
        ``event_callback`` (``send_socket_event`` / ``post_event`` wrap bare events themselves).
        """
        ts = ts or self.new_ts()
        event: dict[str, Any] = {"type": "message"}
        if files and subtype is None and bot_id is None:
            subtype = "file_share"
        if subtype:
            event["subtype"] = subtype
        event["text"] = text
        if files:
            event["files"] = files
            event["upload"] = False
        if subtype == "bot_message":
            event.update({"username": "Other App", "bot_id": bot_id or "B0OTHER", "app_id": "A0OTHER"})
        else:
            event["user"] = user
            if bot_id:
                event.update({"bot_id": bot_id, "app_id": self.app_id if bot_id == self.bot_id else "A0OTHER",
                              "bot_profile": {"id": bot_id, "name": "bot", "deleted": False, "team_id": self.team_id}})
            else:
                event["client_msg_id"] = str(uuid.uuid4())
                event["blocks"] = _rich_text(text)
            event["display_as_bot"] = False
            event["team"] = self.team_id
        event.update({"ts": ts, "channel": channel, "event_ts": ts, "channel_type": channel_type})
        if thread_ts:
            event["thread_ts"] = thread_ts
            parent = self._find(channel, thread_ts)
            event["parent_user_id"] = parent.user if parent and parent.user else user
        return event

    def app_mention(self, channel: str, user: str, text: str, *, thread_ts: str | None = None,
                    files: list[dict[str, Any]] | None = None, ts: str | None = None) -> dict[str, Any]:
        """An ``app_mention`` event (``text`` should contain ``<@{bot_user_id}>``); the inner event."""
        ts = ts or self.new_ts()
        event: dict[str, Any] = {"type": "app_mention", "user": user, "text": text, "ts": ts,
                                 "client_msg_id": str(uuid.uuid4()), "team": self.team_id,
                                 "blocks": _rich_text(text)}
        if files:
            event["files"] = files
            event["upload"] = False
            event["display_as_bot"] = False
        if thread_ts:
            event["thread_ts"] = thread_ts
        event.update({"channel": channel, "event_ts": ts})
        return event

    def assistant_thread_started(self, channel: str, user: str, thread_ts: str, *,
                                 context_channel: str | None = None) -> dict[str, Any]:
        """An ``assistant_thread_started`` event (a user opened the app's assistant pane); the inner event."""
        context: dict[str, Any] = {"channel_id": context_channel, "team_id": self.team_id, "enterprise_id": None}
        if context_channel is None:
            context = {}
        return {"type": "assistant_thread_started",
                "assistant_thread": {"user_id": user, "context": context, "channel_id": channel,
                                     "thread_ts": thread_ts},
                "event_ts": self.new_ts()}

    def _wrap(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("type") in ("event_callback", "url_verification", "app_rate_limited"):
            return payload
        return self.event_callback(payload)

    def _observe_event(self, payload: dict[str, Any]) -> None:
        """Users' messages exist in Slack once their events are sent: keep them for conversations.*."""
        event = payload.get("event") if payload.get("type") == "event_callback" else None
        if not isinstance(event, dict) or not event.get("channel"):
            return
        channel = event["channel"]
        if channel not in self._channels and _CHANNEL_ID.match(channel):
            self.add_channel(channel, user=event.get("user") if channel.startswith("D") else None)
        subtype = event.get("subtype")
        if subtype == "message_changed":
            msg = self._find(channel, event.get("message", {}).get("ts", ""))
            if msg is not None:
                msg.text = event["message"].get("text", msg.text)
                msg.history.append(msg.text)
                msg.edited_ts = event.get("ts")
            return
        if subtype == "message_deleted":
            msg = self._find(channel, event.get("deleted_ts", ""))
            if msg is not None:
                msg.deleted = True
            return
        if event.get("type") not in ("message", "app_mention") or not event.get("ts"):
            return
        if self._find(channel, event["ts"]) is not None:  # app_mention and its message twin
            return
        msg = SlackMessage(ts=event["ts"], channel=channel, text=event.get("text", ""),
                           thread_ts=event.get("thread_ts"), blocks=event.get("blocks"), user=event.get("user"),
                           bot_id=event.get("bot_id"), team=event.get("team"), subtype=subtype,
                           files=event.get("files"), client_msg_id=event.get("client_msg_id"))
        msg.history.append(msg.text)
        self._store(msg)

    def load_payload(self, name: str, files: dict[str, bytes] | None = None, *, fresh: bool = True,
                     **overrides: Any) -> dict[str, Any]:
        """A recorded payload (``tests/payloads/slack/<name>.json``) made live for this fake.

        ``fresh``: placeholder event_ids and message timestamps map to fresh ones, consistently within this
        fake (so a retry payload keeps its original's event_id and a thread reply its parent's ts).
        ``files``: placeholder file id → bytes; those file objects are hosted here (new id, url_private*
        on this server, real size). ``overrides``: envelope keys, else inner-event keys.
        """
        payload = json.loads((PAYLOAD_DIR / f"{name.removesuffix('.json')}.json").read_text())
        if fresh:
            stamps = sorted({str(d[k]) for d in walk(payload) for k in _TS_KEYS
                             if isinstance(d.get(k), str) and re.fullmatch(r"\d+\.\d+", d[k])})
            for old in stamps:
                self._map.setdefault(f"ts:{old}", self.new_ts())
            for d in walk(payload):
                for k in _TS_KEYS:
                    if isinstance(d.get(k), str) and f"ts:{d[k]}" in self._map:
                        d[k] = self._map[f"ts:{d[k]}"]
            if isinstance(payload.get("event_id"), str):
                payload["event_id"] = self._map.setdefault(f"ev:{payload['event_id']}", _new_id("Ev"))
            if "event_time" in payload:
                payload["event_time"] = int(time.time())
        templates = {d["id"]: d for d in walk(payload) if "url_private" in d and isinstance(d.get("id"), str)}
        for data_key, data in (files or {}).items():
            template = templates.get(data_key)
            if template is None:
                raise KeyError(f"{name}: no file object with id {data_key!r}")
            if f"file:{data_key}" not in self._map:
                hosted = self.add_file(data, name=template.get("name", "file"),
                                       mimetype=template.get("mimetype", "application/octet-stream"),
                                       filetype=template.get("filetype", ""), user=template.get("user"),
                                       title=template.get("title"))
                self._map[f"file:{data_key}"] = hosted["id"]
        for d in walk(payload):  # every file object whose placeholder this fake hosts (now or before)
            key = f"file:{d.get('id')}"
            if "url_private" in d and key in self._map:
                keep = {k: d[k] for k in ("original_w", "original_h") if k in d}
                d.clear()
                d.update(copy.deepcopy(self._files[self._map[key]]), **keep)
        _apply_overrides(payload, overrides)
        return payload

    # ------------------------------------------------------------------------------------------ Socket Mode

    @property
    def socket_connections(self) -> int:
        """Socket Mode connections open now."""
        return sum(1 for c in self._conns if c.open)

    def acked(self, envelope_id: str) -> bool:
        """Whether the envelope (or one of its redeliveries) was acknowledged."""
        chain = self._chain_of.get(envelope_id)
        return chain.acked if chain else envelope_id in self.acks

    def deliveries(self, envelope_id: str) -> list[dict[str, Any]]:
        """The envelopes sent for ``envelope_id`` (the first and its redeliveries), in order."""
        chain = self._chain_of.get(envelope_id)
        first = chain.first_id if chain else envelope_id
        return [e for e in self.envelopes if e["first_envelope_id"] == first]

    async def send_socket_event(self, envelope_payload: dict[str, Any], *, type: str = "events_api",
                                retry_attempt: int = 0, retry_reason: str = "", to: str = "one",
                                redeliver: bool = True) -> str:
        """Send an envelope over Socket Mode; returns its envelope_id.

        ``to="one"`` picks one open connection, round-robin (Slack spreads envelopes over an app's
        connections); ``to="all"`` sends the same envelope on every connection. A bare event is wrapped
        with ``event_callback``. Unacked events_api envelopes are sent again after ``socket_ack_timeout``
        with a new envelope_id, the same payload (same event_id), ``retry_attempt`` + 1 and
        ``retry_reason`` "timeout", up to 3 times — also when no connection was open.
        """
        payload = self._wrap(envelope_payload) if type == "events_api" else envelope_payload
        envelope_id = str(uuid.uuid4())
        chain = _Chain(first_id=envelope_id, type=type, payload=payload)
        self._chains[envelope_id] = chain
        if type == "events_api":
            self._observe_event(payload)
        await self._deliver(chain, envelope_id, retry_attempt, retry_reason, to)
        if type == "events_api" and redeliver:
            chain.task = self._spawn(self._redeliver(chain, retry_attempt, to))
        return envelope_id

    async def _deliver(self, chain: _Chain, envelope_id: str, retry_attempt: int, retry_reason: str,
                       to: str) -> None:
        chain.ids.append(envelope_id)
        self._chain_of[envelope_id] = chain
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "payload": chain.payload, "type": chain.type,
                                    "accepts_response_payload": chain.type != "events_api"}
        if chain.type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        conns = [c for c in self._conns if c.open]
        targets = conns if to == "all" or not conns else [conns[next(self._rr) % len(conns)]]
        text = json.dumps(envelope)
        if not targets:
            self.envelopes.append({**envelope, "first_envelope_id": chain.first_id, "connection": None})
        for conn in targets:
            self.envelopes.append({**envelope, "first_envelope_id": chain.first_id, "connection": conn.id})
            try:
                await conn.ws.send_text(text)
            except Exception:  # the socket went away under us: Slack counts it as a failed delivery
                conn.open = False
        self._notify()

    async def _redeliver(self, chain: _Chain, base_attempt: int, to: str) -> None:
        for n in range(1, 4):
            await asyncio.sleep(self.socket_ack_timeout)
            if chain.acked:
                return
            await self._deliver(chain, str(uuid.uuid4()), base_attempt + n, "timeout", to)

    async def send_slash_command(self, command: str, text: str, channel: str, user: str, *,
                                 response_url: str | None = None, to: str = "one") -> str:
        """A ``slash_commands`` envelope (accepts_response_payload true; never redelivered)."""
        key = secrets.token_hex(8)
        info = self._channel_info(channel) if _CHANNEL_ID.match(channel) else {}
        payload = {
            "token": self.verification_token, "team_id": self.team_id, "team_domain": self.team_domain,
            "channel_id": channel, "channel_name": "directmessage" if info.get("is_im") else info.get("name", ""),
            "user_id": user, "user_name": self._users.get(user, {}).get("name", "ana"), "command": command,
            "text": text, "api_app_id": self.app_id, "is_enterprise_install": "false",
            "response_url": response_url or f"{self.url}/commands/{key}",
            "trigger_id": f"{int(time.time())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}",
        }
        return await self.send_socket_event(payload, type="slash_commands", to=to, redeliver=False)

    def feedback_press(self, channel: str, message_ts: str, user: str, *, positive: bool = True,
                       action_ts: str | None = None) -> dict[str, Any]:
        """The ``block_actions`` payload Slack sends when ``user`` presses the 👍 (``positive``) or 👎 of the
        ``feedback_buttons`` element on the message ``message_ts`` (docs.slack.dev/reference/interaction-payloads/
        block_actions-payload). Raises when the message has no such element: there is nothing to press.
        Send it with :meth:`send_block_actions`; sending the same payload again is Slack delivering the same
        press again (same ``action_ts``)."""
        msg = self._find(channel, message_ts)
        found = None
        for block in (msg.blocks or []) if msg is not None and not msg.deleted else []:
            for element in block.get("elements") or [] if block.get("type") == "context_actions" else []:
                if isinstance(element, dict) and element.get("type") == "feedback_buttons":
                    found = (block, element)
        if msg is None or found is None:
            raise AssertionError(f"no feedback_buttons on message {message_ts} in {channel}")
        block, element = found
        button = element["positive_button" if positive else "negative_button"]
        info = self._channel_info(channel) if _CHANNEL_ID.match(channel) else {}
        person = self._users.get(user, {})
        container = {"type": "message", "message_ts": msg.ts, "channel_id": channel, "is_ephemeral": False}
        if msg.thread_ts:
            container["thread_ts"] = msg.thread_ts
        return {
            "type": "block_actions",
            "user": {"id": user, "username": person.get("name", "ana"), "name": person.get("name", "ana"),
                     "team_id": self.team_id},
            "api_app_id": self.app_id, "token": self.verification_token, "container": container,
            "trigger_id": f"{int(time.time())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}",
            "team": {"id": self.team_id, "domain": self.team_domain}, "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": "directmessage" if info.get("is_im") else info.get("name", "")},
            "message": msg.to_api(), "state": {"values": {}},
            "response_url": f"{self.url}/actions/{secrets.token_hex(8)}",
            "actions": [{"type": "feedback_buttons", "action_id": element.get("action_id", ""),
                         "block_id": block.get("block_id", ""), "value": button["value"],
                         "action_ts": action_ts or self.new_ts()}],
        }

    async def send_block_actions(self, payload: dict[str, Any], *, to: str = "one") -> str:
        """An ``interactive`` envelope (accepts_response_payload true; Slack does not redeliver it on a
        missing ack)."""
        return await self.send_socket_event(payload, type="interactive", to=to, redeliver=False)

    async def disconnect(self, reason: str = "refresh_requested", *, connection: int | None = None,
                         close: bool = True, grace: float = 2.0) -> None:
        """Send Slack's ``{"type": "disconnect", "reason": ...}`` on one connection (default: the oldest
        open one). With ``close``, the socket is closed once the app has opened a new connection, or after
        ``grace`` seconds, as Slack does after a refresh."""
        conns = [c for c in self._conns if c.open and (connection is None or c.id == connection)]
        if not conns:
            raise RuntimeError("no open Socket Mode connection")
        conn = conns[0]
        await conn.ws.send_text(json.dumps({"type": "disconnect", "reason": reason,
                                            "debug_info": {"host": conn.host}}))
        if close:
            opened = self.connections_opened

            async def close_later() -> None:
                with contextlib.suppress(TimeoutError):
                    await self.wait_for(lambda: self.connections_opened > opened, grace)
                await self._close_conn(conn, 1000)

            self._spawn(close_later())

    async def drop_sockets(self, code: int = 1006) -> None:
        """Close every Socket Mode connection abruptly (a network blip); apps should reconnect."""
        for conn in list(self._conns):
            await self._close_conn(conn, 1011 if code == 1006 else code)

    async def _close_conn(self, conn: _Conn, code: int) -> None:
        conn.open = False
        if conn.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await conn.ws.close(code)
        self._notify()

    async def _socket(self, ws: WebSocket) -> None:
        ticket = ws.query_params.get("ticket", "")
        if ticket not in self._tickets:
            await ws.close(code=1008)  # before accept: the handshake fails (HTTP 403)
            return
        self._tickets.discard(ticket)  # tickets are single-use: reconnecting needs apps.connections.open
        await ws.accept()
        conn = _Conn(id=next(self._conn_ids), ws=ws, host=f"applink-fake-{secrets.token_hex(3)}",
                     opened_at=time.monotonic())
        self.connections_opened += 1
        if self.socket_connections >= self.max_socket_connections:
            await ws.send_text(json.dumps({"type": "disconnect", "reason": "too_many_websockets",
                                           "debug_info": {"host": conn.host}}))
            await ws.close(1008)
            self._notify()
            return
        self._conns.append(conn)
        hello = {"type": "hello", "num_connections": self.socket_connections,
                 "debug_info": {"host": conn.host, "build_number": 105, "approximate_connection_time": 18060},
                 "connection_info": {"app_id": self.app_id}}
        await ws.send_text(json.dumps(hello))
        self.hello_sent += 1
        self._notify()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
                self._on_socket_message(conn, raw)
        finally:
            conn.open = False
            self._conns.remove(conn)
            self._notify()

    def _on_socket_message(self, conn: _Conn, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            message = {"unparsed": raw}
        if not isinstance(message, dict):
            message = {"unparsed": raw}
        conn.received.append(message)
        self.socket_messages.append(message)
        envelope_id = message.get("envelope_id")
        if isinstance(envelope_id, str):
            self.acks[envelope_id] = message
            chain = self._chain_of.get(envelope_id)
            if chain is not None:
                chain.acked = True
        self._notify()

    # ------------------------------------------------------------------------------------------ Events API

    async def post_event(self, target_url: str, payload: dict[str, Any], *, retry_num: int | None = None,
                         retry_reason: str = "", signing_secret: str | None = None, timestamp: int | None = None,
                         sign: bool = True, timeout: float = 3.0,  # noqa: ASYNC109
                         body: bytes | None = None) -> httpx.Response:
        """POST one Events API request as Slack does: a JSON body, ``X-Slack-Request-Timestamp`` and
        ``X-Slack-Signature`` (v0, over the exact body), ``X-Slack-Retry-Num`` / ``-Reason`` on retries.
        ``signing_secret`` / ``timestamp`` / ``body`` let a test forge a bad signature, an old request or
        a body tampered after signing. A bare event is wrapped with ``event_callback``."""
        assert self._http is not None, "use `async with FakeSlack()`"
        payload = self._wrap(payload)
        self._observe_event(payload)
        raw = json.dumps(payload).encode()
        ts = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json", "User-Agent": SLACK_USER_AGENT,
                   "X-Slack-Request-Timestamp": str(ts)}
        if sign:
            headers["X-Slack-Signature"] = sign_request(signing_secret or self.signing_secret, ts, raw)
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        return await self._http.post(target_url, content=raw if body is None else body, headers=headers,
                                     timeout=timeout)

    async def deliver_event(self, target_url: str, payload: dict[str, Any], *,
                            timeout: float = 3.0,  # noqa: ASYNC109
                            retries: int = 3, retry_delays: Sequence[float] = (0.0, 0.0, 0.0)) -> EventDelivery:
        """Deliver like Slack: an attempt that does not get a 2xx within ``timeout`` (3 s) is retried up to
        ``retries`` times with ``X-Slack-Retry-Num`` 1..3 and a reason (http_timeout, http_error,
        connection_failed), unless the app answered with ``X-Slack-No-Retry: 1``. Slack waits ~0 s, 1 min,
        5 min between tries; ``retry_delays`` defaults to no wait."""
        payload = self._wrap(payload)
        attempts: list[EventDeliveryAttempt] = []
        reason = ""
        for n in range(retries + 1):
            if n:
                await asyncio.sleep(retry_delays[min(n - 1, len(retry_delays) - 1)] if retry_delays else 0)
            start = time.monotonic()
            status: int | None = None
            no_retry = False
            try:
                response = await self.post_event(target_url, payload, retry_num=n or None, retry_reason=reason,
                                                  timeout=timeout)
                status = response.status_code
                no_retry = response.headers.get("x-slack-no-retry") == "1"
                reason = "" if 200 <= status < 300 else "http_error"
            except httpx.TimeoutException:
                reason = "http_timeout"
            except httpx.TransportError:
                reason = "connection_failed"
            attempts.append(EventDeliveryAttempt(n, status, reason, time.monotonic() - start))
            self._notify()
            if not reason or no_retry:
                break
        return EventDelivery(payload.get("event_id"), attempts)

    async def url_verification(self, target_url: str) -> httpx.Response:
        """The signed ``url_verification`` challenge Slack sends when a Request URL is saved."""
        return await self.post_event(target_url, {"token": self.verification_token,
                                                  "challenge": secrets.token_urlsafe(24),
                                                  "type": "url_verification"})

    # ------------------------------------------------------------------------------------------ what users see

    def _store(self, msg: SlackMessage) -> None:
        self._messages.setdefault(msg.channel, []).append(msg)
        self._messages[msg.channel].sort(key=lambda m: float(m.ts))
        self._notify()

    def _find(self, channel: str, ts: str) -> SlackMessage | None:
        return next((m for m in self._messages.get(channel, []) if m.ts == ts), None)

    def messages(self, channel: str, thread_ts: str | None = None, *,
                 include_users: bool = False) -> list[SlackMessage]:
        """Bot messages in ``channel`` (only the thread ``thread_ts``: its parent and replies), oldest
        first, deleted ones included (``deleted`` set). ``include_users`` adds users' messages the fake
        has seen in events."""
        self._expire_due()
        out = [m for m in self._messages.get(channel, []) if include_users or m.is_bot]
        if thread_ts is not None:
            out = [m for m in out if m.thread_ts == thread_ts or m.ts == thread_ts]
        return out

    def all_messages(self) -> list[SlackMessage]:
        """Every bot message in every channel, oldest first."""
        self._expire_due()
        return sorted((m for ms in self._messages.values() for m in ms if m.is_bot), key=lambda m: float(m.ts))

    def calls_to(self, method: str) -> list[Call]:
        """The calls of one method, in order."""
        return [c for c in self.calls if c.method == method]

    def status_of(self, channel: str, thread_ts: str) -> str:
        """The assistant status a user sees in the thread now ("" when none)."""
        return self.thread_status.get((channel, thread_ts), "")

    # ------------------------------------------------------------------------------------------ faults

    def fail(self, method: str, *, status: int = 429, error: str = "ratelimited", retry_after: int = 1,
             times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` fail (before auth and limits): 429 → HTTP 429 with
        ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``; 5xx → that status with an HTML body
        (what Slack's edge answers); 200 → ``{"ok": false, "error": error}``. ``method`` may also be
        ``upload`` (the upload URL) or ``download`` (url_private)."""
        self._faults.setdefault(method, []).append(_Fault(status, error, retry_after, times))

    def delay(self, method: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` only after ``seconds``."""
        self._delays.setdefault(method, []).append([seconds, times])

    def heal(self) -> None:
        """Every fault and delay not yet served is dropped: the Web API answers normally again."""
        self._faults.clear()
        self._delays.clear()

    def expire_streams(self) -> None:
        """Every open stream stops accepting appends: appendStream / stopStream then answer
        ``message_not_in_streaming_state``; chat.update works again."""
        for ms in self._messages.values():
            for m in ms:
                if m.streaming:
                    self._end_stream(m, "expired")
        self._notify()

    def stop_stream_by_user(self, channel: str, ts: str) -> None:
        """The user pressed "stop" on a streaming message: appends then answer ``stopped_by_user``."""
        msg = self._find(channel, ts)
        if msg is None or not msg.streaming:
            raise KeyError(f"no streaming message {channel}/{ts}")
        self._end_stream(msg, "stopped_by_user")
        self._notify()

    def _end_stream(self, msg: SlackMessage, state: str) -> None:
        msg.streaming = False
        msg.stream_state = state
        handle = self._expiry_timers.pop(f"{msg.channel}/{msg.ts}", None)
        if handle is not None:
            handle.cancel()

    def _stream_deadline(self, msg: SlackMessage) -> float:
        deadline = msg.last_append_at + self.stream_idle_expiry
        if self.stream_max_age is not None:
            deadline = min(deadline, msg.started_at + self.stream_max_age)
        return deadline

    def _expire_due(self) -> None:
        now = time.monotonic()
        changed = False
        for ms in self._messages.values():
            for m in ms:
                if m.streaming and now >= self._stream_deadline(m):
                    self._end_stream(m, "expired")
                    changed = True
        if changed:
            self._notify()

    def _arm_expiry(self, msg: SlackMessage) -> None:
        key = f"{msg.channel}/{msg.ts}"
        old = self._expiry_timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, self._stream_deadline(msg) - time.monotonic())
        self._expiry_timers[key] = asyncio.get_running_loop().call_later(delay + 0.001, self._expire_due)

    # ------------------------------------------------------------------------------------------ HTTP plumbing

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.pop(0)
        return fault

    def _take_delay(self, method: str) -> float:
        queue = self._delays.get(method)
        if not queue:
            return 0.0
        seconds = queue[0][0]
        queue[0][1] -= 1
        if queue[0][1] <= 0:
            queue.pop(0)
        return seconds

    def _fault_response(self, fault: _Fault) -> Response:
        if fault.status == 429:
            self.served_429 += 1
            return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429,
                                headers={"Retry-After": str(fault.retry_after)})
        if fault.status >= 500:
            return HTMLResponse(f"<html><body><h1>{fault.status} {fault.error}</h1></body></html>",
                                status_code=fault.status)
        return JSONResponse({"ok": False, "error": fault.error}, status_code=fault.status)

    def _limit(self, method: str, p: Mapping[str, Any]) -> int:
        if not self.rate_limits:
            return 0
        if method == "chat.postMessage":
            key, rate = f"{method}/{p.get('channel')}", self.limits.post_message_per_channel
        elif method in self.limits.methods:
            key, rate = method, self.limits.methods[method]
        else:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = _Bucket(rate)
        return bucket.take()

    async def _read_params(self, request: Request) -> tuple[dict[str, Any], str, str | None]:
        params: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = "query"
        body_token = params.pop("token", None)
        if body and ctype == "application/json":
            kind = "json"
            try:
                data = json.loads(body)
            except ValueError:
                raise _ApiError("invalid_json") from None
            if not isinstance(data, dict):
                raise _ApiError("invalid_json")
            data.pop("token", None)  # Slack takes the token of a JSON request from the header only
            params.update(data)
        elif body and ctype == "application/x-www-form-urlencoded":
            kind = "form"
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            body_token = form.pop("token", body_token)
            params.update(form)
        elif ctype == "multipart/form-data":
            kind = "multipart"
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, str):
                        params[key] = value
            body_token = params.pop("token", body_token)
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else body_token
        return params, kind, token

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        arrived = time.monotonic()
        try:
            params, kind, token = await self._read_params(request)
        except _ApiError as exc:
            params, kind, token = {}, "json", None
            call = Call(method, params, kind, arrived, ok=False, error=exc.error)
            self.calls.append(call)
            self._notify()
            return JSONResponse({"ok": False, "error": exc.error})
        call = Call(method, params, kind, arrived, token=token)
        delay = self._take_delay(method)
        if delay:
            await asyncio.sleep(delay)
        response = self._handle(method, params, token, call)
        self.calls.append(call)
        self._notify()
        return response

    def _handle(self, method: str, params: dict[str, Any], token: str | None, call: Call) -> Response:
        fault = self._take_fault(method)
        if fault is not None:
            call.status, call.ok, call.error = fault.status, False, fault.error
            return self._fault_response(fault)
        handler = self._handlers().get(method)
        try:
            if handler is None:
                raise _ApiError("unknown_method", req_method=method)
            if not token:
                raise _ApiError("not_authed")
            if token not in (self.bot_token, self.app_token):
                raise _ApiError("invalid_auth")
            wants_app = method == "apps.connections.open"
            if (token == self.app_token) != wants_app:
                raise _ApiError("not_allowed_token_type")
            wait = self._limit(method, params)
            if wait:
                self.served_429 += 1
                call.status, call.ok, call.error = 429, False, "ratelimited"
                return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429,
                                    headers={"Retry-After": str(wait)})
            body = {"ok": True, **handler(params)}
        except _ApiError as exc:
            body = {"ok": False, "error": exc.error, **exc.extra}
            call.status, call.ok, call.error = exc.status, False, exc.error
        call.response = body
        return JSONResponse(body, status_code=call.status,
                            headers={"x-oauth-scopes": SCOPES, "x-accepted-oauth-scopes": "chat:write"})

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "chat.startStream": self._start_stream,
            "chat.appendStream": self._append_stream,
            "chat.stopStream": self._stop_stream,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_prompts,
            "assistant.threads.setTitle": self._set_title,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.replies": self._conversations_replies,
            "files.getUploadURLExternal": self._get_upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "files.info": self._files_info,
            "apps.connections.open": self._connections_open,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
        }

    # ------------------------------------------------------------------------------------------ argument decoding

    @staticmethod
    def _json_arg(p: Mapping[str, Any], key: str, error: str) -> Any:
        value = p.get(key)
        if isinstance(value, str):
            if value == "":
                return None
            try:
                return json.loads(value)
            except ValueError:
                raise _ApiError(error) from None
        return value

    @staticmethod
    def _required(p: Mapping[str, Any], *keys: str) -> None:
        missing = [k for k in keys if p.get(k) in (None, "")]
        if missing:
            raise _ApiError("invalid_arguments",
                            response_metadata={"messages": [f"[ERROR] missing required field: {k}" for k in missing]})

    def _blocks(self, p: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        blocks = self._json_arg(p, "blocks", "invalid_blocks_format")
        if blocks is None:
            return None
        if not isinstance(blocks, list) or not all(isinstance(b, dict) and b.get("type") for b in blocks):
            raise _ApiError("invalid_blocks_format")
        problems: list[str] = []
        if len(blocks) > MAX_BLOCKS:
            problems.append(f"[ERROR] no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
        for i, block in enumerate(blocks):
            text = block.get("text")
            text_value = text.get("text", "") if isinstance(text, dict) else ""
            if block["type"] == "section" and len(text_value) > MAX_SECTION_TEXT:
                problems.append(f"[ERROR] must be less than {MAX_SECTION_TEXT + 1} characters "
                                f"[json-pointer:/blocks/{i}/text/text]")
            if block["type"] == "header" and len(text_value) > MAX_HEADER_TEXT:
                problems.append(f"[ERROR] must be less than {MAX_HEADER_TEXT + 1} characters "
                                f"[json-pointer:/blocks/{i}/text/text]")
            if block["type"] == "markdown" and len(str(block.get("text", ""))) > MAX_MARKDOWN_TEXT:
                problems.append(f"[ERROR] must be less than {MAX_MARKDOWN_TEXT + 1} characters "
                                f"[json-pointer:/blocks/{i}/text]")
            if block["type"] == "context_actions":
                problems += _context_actions_problems(block, f"/blocks/{i}")
        if problems:
            raise _ApiError("invalid_blocks", response_metadata={"messages": problems})
        for block in blocks:  # Slack names a block that came without a block_id
            block.setdefault("block_id", _new_id("", 5).lower())
        return blocks

    def _metadata(self, p: Mapping[str, Any]) -> dict[str, Any] | None:
        metadata = self._json_arg(p, "metadata", "invalid_metadata_format")
        if metadata is None:
            return None
        if not isinstance(metadata, dict) or "event_type" not in metadata or "event_payload" not in metadata:
            raise _ApiError("invalid_metadata_format")
        return metadata

    def _chunks(self, p: Mapping[str, Any]) -> list[dict[str, Any]]:
        chunks = self._json_arg(p, "chunks", "invalid_chunks")
        out: list[dict[str, Any]] = []
        markdown_text = p.get("markdown_text")
        if markdown_text not in (None, ""):
            out.append({"type": "markdown_text", "text": str(markdown_text)})
        if chunks is not None and not isinstance(chunks, list):
            raise _ApiError("invalid_chunks")
        for chunk in chunks or []:
            valid = _CHUNK_CHECKS.get(chunk.get("type")) if isinstance(chunk, dict) else None
            if valid is None or not valid(chunk):
                raise _ApiError("invalid_chunks")
            out.append(chunk)
        for chunk in out:
            if chunk["type"] == "markdown_text" and len(chunk["text"]) > MAX_MARKDOWN_TEXT:
                raise _ApiError("msg_too_long")
        return out

    def _own_message(self, p: Mapping[str, Any], cant: str) -> tuple[str, SlackMessage]:
        channel = self._resolve_channel(p)
        self._required(p, "ts")
        msg = self._find(channel, str(p["ts"]))
        if msg is None or msg.deleted:
            raise _ApiError("message_not_found")
        if msg.bot_id != self.bot_id:
            raise _ApiError(cant)
        return channel, msg

    def _bot_message(self, channel: str, **kwargs: Any) -> SlackMessage:
        msg = SlackMessage(ts=self.new_ts(), channel=channel, user=self.bot_user_id, bot_id=self.bot_id,
                           app_id=self.app_id, team=self.team_id, **kwargs)
        msg.history.append(msg.text)
        if msg.thread_ts:  # the app replied in the thread: Slack clears the assistant status there
            self.thread_status.pop((channel, msg.thread_ts), None)
        self._store(msg)
        if self.echo_bot_messages and self.socket_connections:
            info = self._channels.get(channel, {})
            kind = "im" if info.get("is_im") else "group" if info.get("is_group") else "channel"
            echo = self.message_event(channel, self.bot_user_id, msg.text, channel_type=kind,
                                      thread_ts=msg.thread_ts, bot_id=self.bot_id, ts=msg.ts)
            self._spawn(self.send_socket_event(echo))
        return msg

    # ------------------------------------------------------------------------------------------ methods

    def _auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"https://{self.team_domain}.slack.com/", "team": self.team_name, "user": self.bot_name,
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "app_id": self.app_id, "is_enterprise_install": False}

    def _post_message(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(p)
        text = p.get("text")
        text = None if text is None else str(text)
        blocks = self._blocks(p)
        attachments = self._json_arg(p, "attachments", "invalid_attachments")
        markdown_text = p.get("markdown_text")
        if markdown_text is not None and (text or blocks):
            raise _ApiError("markdown_text_conflict")
        if not (text or blocks or attachments or markdown_text):
            raise _ApiError("no_text")
        if markdown_text is not None and len(str(markdown_text)) > MAX_MARKDOWN_TEXT:
            raise _ApiError("msg_too_long")
        body = str(markdown_text) if markdown_text is not None else (text or "")
        truncated = len(body) > MAX_TEXT
        msg = self._bot_message(
            channel, text=body[:MAX_TEXT], thread_ts=p.get("thread_ts") or None, blocks=blocks,
            markdown_text=None if markdown_text is None else str(markdown_text), metadata=self._metadata(p),
            attachments=attachments, truncated=truncated, reply_broadcast=_truthy(p.get("reply_broadcast")),
            unfurl_links=None if "unfurl_links" not in p else _truthy(p["unfurl_links"]),
            unfurl_media=None if "unfurl_media" not in p else _truthy(p["unfurl_media"]),
            mrkdwn=None if "mrkdwn" not in p else _truthy(p["mrkdwn"]), username=p.get("username"),
            icon_emoji=p.get("icon_emoji"), icon_url=p.get("icon_url"))
        return {"channel": channel, "ts": msg.ts, "message": msg.to_api()}

    def _update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, msg = self._own_message(p, "cant_update_message")
        self._expire_due()
        if msg.streaming:
            raise _ApiError("streaming_state_conflict")
        text = p.get("text")
        blocks = self._blocks(p)
        attachments = self._json_arg(p, "attachments", "invalid_attachments")
        markdown_text = p.get("markdown_text")
        if markdown_text is not None and (text or blocks):
            raise _ApiError("markdown_text_conflict")
        if not (text or blocks or attachments or markdown_text or p.get("file_ids")):
            raise _ApiError("no_text")
        new_text = str(markdown_text) if markdown_text is not None else (str(text) if text is not None else msg.text)
        if len(new_text) > MAX_TEXT or (markdown_text is not None and len(new_text) > MAX_MARKDOWN_TEXT):
            raise _ApiError("msg_too_long")
        msg.text = new_text
        if markdown_text is not None:
            msg.markdown_text = new_text
        if blocks is not None:
            msg.blocks = blocks
        if attachments is not None:
            msg.attachments = attachments
        metadata = self._metadata(p)
        if metadata is not None:
            msg.metadata = metadata
        msg.updates += 1
        msg.edited_ts = self.new_ts()
        msg.history.append(msg.text)
        self._notify()
        return {"channel": channel, "ts": msg.ts, "text": msg.text, "message": msg.to_api()}

    def _delete(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, msg = self._own_message(p, "cant_delete_message")
        msg.deleted = True
        msg.streaming = False
        self._notify()
        return {"channel": channel, "ts": msg.ts}

    def _post_ephemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(p)
        self._required(p, "user")
        if p["user"] not in self._users:
            raise _ApiError("user_not_in_channel")
        text = p.get("text") or p.get("markdown_text") or ""
        blocks = self._blocks(p)
        if not (text or blocks or p.get("attachments")):
            raise _ApiError("no_text")
        if len(str(text)) > MAX_TEXT:
            raise _ApiError("msg_too_long")
        ts = self.new_ts()
        self.ephemerals.append({"channel": channel, "user": p["user"], "text": text, "blocks": blocks,
                                "thread_ts": p.get("thread_ts"), "message_ts": ts})
        return {"message_ts": ts}

    def _start_stream(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(p)
        if self.stream_requires_thread_ts:
            self._required(p, "thread_ts")
        info = self._channels[channel]
        if not info.get("is_im") or self.strict_stream_recipients:
            if not p.get("recipient_user_id"):
                raise _ApiError("missing_recipient_user_id")
            if not p.get("recipient_team_id"):
                raise _ApiError("missing_recipient_team_id")
        if p.get("recipient_user_id") and p["recipient_user_id"] not in self._users:
            raise _ApiError("user_not_found")
        if p.get("recipient_team_id") and p["recipient_team_id"] != self.team_id:
            raise _ApiError("team_not_found")
        chunks = self._chunks(p)
        text = "".join(c["text"] for c in chunks if c["type"] == "markdown_text")
        now = time.monotonic()
        msg = self._bot_message(channel, text=text, markdown_text=text, thread_ts=p.get("thread_ts") or None,
                                streaming=True, stream_state="streaming", chunks=list(chunks),
                                recipient_user_id=p.get("recipient_user_id"),
                                recipient_team_id=p.get("recipient_team_id"), username=p.get("username"),
                                icon_emoji=p.get("icon_emoji"), icon_url=p.get("icon_url"),
                                started_at=now, last_append_at=now)
        self._arm_expiry(msg)
        return {"channel": channel, "ts": msg.ts}

    def _live_stream(self, p: dict[str, Any]) -> tuple[str, SlackMessage]:
        channel, msg = self._own_message(p, "message_not_owned_by_app")
        self._expire_due()
        if msg.stream_state == "stopped_by_user":
            raise _ApiError("stopped_by_user")
        if not msg.streaming:
            raise _ApiError("message_not_in_streaming_state")
        return channel, msg

    def _append_chunks(self, msg: SlackMessage, chunks: list[dict[str, Any]]) -> None:
        msg.chunks.extend(chunks)
        added = "".join(c["text"] for c in chunks if c["type"] == "markdown_text")
        if added:
            msg.text += added
            msg.markdown_text = msg.text
            msg.history.append(msg.text)

    def _append_stream(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, msg = self._live_stream(p)
        chunks = self._chunks(p)
        if not chunks:
            raise _ApiError("no_text")
        self._append_chunks(msg, chunks)
        msg.stream_appends += 1
        msg.last_append_at = time.monotonic()
        self._arm_expiry(msg)
        self._notify()
        return {"channel": channel, "ts": msg.ts}

    def _stop_stream(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, msg = self._live_stream(p)
        self._append_chunks(msg, self._chunks(p))
        blocks = self._blocks(p)
        if blocks is not None:
            msg.blocks = blocks
        metadata = self._metadata(p)
        if metadata is not None:
            msg.metadata = metadata
        self._end_stream(msg, "stopped")
        self._notify()
        return {"channel": channel, "ts": msg.ts, "message": msg.to_api()}

    def _set_status(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "channel_id", "thread_ts")
        if "status" not in p:
            self._required(p, "status")
        channel = self._resolve_channel(p, "channel_id")
        if not re.fullmatch(r"\d+\.\d+", str(p["thread_ts"])):
            raise _ApiError("invalid_thread_ts")
        loading = self._json_arg(p, "loading_messages", "invalid_arguments")
        if isinstance(loading, str):
            loading = [s for s in loading.split(",") if s]
        status = str(p["status"])
        self.statuses.append({"channel_id": channel, "thread_ts": p["thread_ts"], "status": status,
                              "loading_messages": loading})
        if status:
            self.thread_status[(channel, str(p["thread_ts"]))] = status
        else:
            self.thread_status.pop((channel, str(p["thread_ts"])), None)
        return {}

    def _set_prompts(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "channel_id", "prompts")
        channel = self._resolve_channel(p, "channel_id")
        prompts = self._json_arg(p, "prompts", "invalid_arguments")
        if not isinstance(prompts, list) or not all(isinstance(x, dict) and x.get("title") and x.get("message")
                                                    for x in prompts):
            raise _ApiError("invalid_arguments")
        self.suggested_prompts.append({"channel_id": channel, "thread_ts": p.get("thread_ts"),
                                       "prompts": prompts, "title": p.get("title")})
        return {}

    def _set_title(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "channel_id", "thread_ts", "title")
        channel = self._resolve_channel(p, "channel_id")
        self.titles.append({"channel_id": channel, "thread_ts": p["thread_ts"], "title": p["title"]})
        return {}

    def _users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "user")
        user = self._users.get(str(p["user"]))
        if user is None:
            raise _ApiError("user_not_found")
        out = copy.deepcopy(user)
        if not _truthy(p.get("include_locale")):
            out.pop("locale", None)
        return {"user": out}

    def _conversations_info(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        info = copy.deepcopy(self._channel_info(channel))
        if _truthy(p.get("include_locale")) and not info.get("is_im"):
            info["locale"] = "en-US"
        if _truthy(p.get("include_num_members")) and not info.get("is_im"):
            info["num_members"] = 2
        return {"channel": info}

    def _conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(p)
        self._required(p, "ts")
        ts = str(p["ts"])
        thread = [m for m in self._messages.get(channel, []) if not m.deleted and (m.ts == ts or m.thread_ts == ts)]
        if not thread:
            raise _ApiError("thread_not_found")
        return {"messages": [m.to_api() for m in thread], "has_more": False,
                "response_metadata": {"next_cursor": ""}}

    def _get_upload_url(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "filename", "length")
        try:
            length = int(p["length"])
        except (TypeError, ValueError):
            raise _ApiError("invalid_arguments") from None
        if length <= 0:
            raise _ApiError("invalid_arguments")
        fid = _new_id("F")
        key = secrets.token_urlsafe(16)
        self._uploads[fid] = _Upload(fid, str(p["filename"]), length, p.get("alt_txt"), p.get("snippet_type"))
        self._upload_keys[key] = fid
        return {"upload_url": f"{self.url}/upload/v1/{key}", "file_id": fid}

    def _complete_upload(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "files")
        files = self._json_arg(p, "files", "invalid_arguments")
        if not isinstance(files, list) or not files or not all(isinstance(f, dict) and f.get("id") for f in files):
            raise _ApiError("invalid_arguments")
        uploads = []
        for f in files:
            upload = self._uploads.get(str(f["id"]))
            if upload is None or upload.data is None:
                raise _ApiError("file_not_found")
            uploads.append((upload, f.get("title") or upload.filename))
        channels = [str(p["channel_id"])] if p.get("channel_id") else []
        channels += [c for c in str(p.get("channels") or "").split(",") if c]
        for channel in channels:
            self._resolve_channel({"channel": channel})
        objects = []
        for upload, title in uploads:
            assert upload.data is not None
            mimetype = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
            obj = self.add_file(upload.data, name=upload.filename, mimetype=mimetype, user=self.bot_user_id,
                                file_id=upload.file_id, title=title)
            if upload.alt_txt:
                obj["alt_txt"] = upload.alt_txt
            objects.append(obj)
            del self._uploads[upload.file_id]
            for channel in channels or [None]:
                self.uploads.append({"file_id": upload.file_id, "filename": upload.filename, "title": title,
                                     "bytes": upload.data, "length": upload.length, "channel_id": channel,
                                     "thread_ts": p.get("thread_ts"), "initial_comment": p.get("initial_comment"),
                                     "alt_txt": upload.alt_txt})
        for channel in channels:
            self._bot_message(channel, text=str(p.get("initial_comment") or ""), thread_ts=p.get("thread_ts") or None,
                              files=copy.deepcopy(objects), subtype="file_share")
        self._notify()
        return {"files": objects}

    def _files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        self._required(p, "file")
        obj = self._files.get(str(p["file"]))
        if obj is None:
            raise _ApiError("file_not_found")
        return {"file": copy.deepcopy(obj), "comments": [], "response_metadata": {"next_cursor": ""}}

    def _connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"{self.url.replace('http://', 'ws://')}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _reaction_target(self, p: dict[str, Any]) -> tuple[str, str, str]:
        self._required(p, "name", "timestamp")
        channel = self._resolve_channel(p)
        if self._find(channel, str(p["timestamp"])) is None:
            raise _ApiError("message_not_found")
        return channel, str(p["timestamp"]), str(p["name"]).strip(":")

    def _reactions_add(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts, name = self._reaction_target(p)
        entry = {"channel": channel, "timestamp": ts, "name": name}
        if entry in self.reactions:
            raise _ApiError("already_reacted")
        self.reactions.append(entry)
        return {}

    def _reactions_remove(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts, name = self._reaction_target(p)
        entry = {"channel": channel, "timestamp": ts, "name": name}
        if entry not in self.reactions:
            raise _ApiError("no_reaction")
        self.reactions.remove(entry)
        return {}

    # ------------------------------------------------------------------------------------------ files over HTTP

    async def _upload(self, request: Request) -> Response:
        """The upload URL of files.getUploadURLExternal: the raw bytes (what slack_sdk sends) or a
        multipart form; answers ``200 text/plain "OK - <length>"`` like files.slack.com."""
        fid = self._upload_keys.get(request.path_params["key"])
        call = Call("upload", {"file_id": fid}, "raw", time.monotonic())
        fault = self._take_fault("upload")
        if fault is not None:
            call.status, call.ok, call.error = fault.status, False, fault.error
            self.calls.append(call)
            self._notify()
            return self._fault_response(fault)
        if fid is None or fid not in self._uploads:
            call.status, call.ok = 404, False
            self.calls.append(call)
            self._notify()
            return PlainTextResponse("Not Found", status_code=404)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            call.body_kind = "multipart"
            async with request.form() as form:
                item = next((v for _, v in form.multi_items() if not isinstance(v, str)), None)
                data = await item.read() if item is not None else b""
        else:
            data = await request.body()
        self._uploads[fid].data = data
        call.params["bytes"] = len(data)
        self.calls.append(call)
        self._notify()
        return PlainTextResponse(f"OK - {len(data)}")

    async def _download(self, request: Request) -> Response:
        """url_private / url_private_download. Without a valid bot token Slack does not answer 401: it
        redirects (302) to the workspace's sign-in page, an HTML page with status 200 — clients that
        follow redirects and do not check the content type save that HTML as the "file"."""
        team_file = request.path_params["team_file"]
        rest = request.path_params["rest"]
        fid = team_file.split("-", 1)[1] if "-" in team_file else ""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        authorized = token == self.bot_token
        self.downloads.append({"file_id": fid, "authorized": authorized, "path": request.url.path})
        call = Call("download", {"file_id": fid, "path": request.url.path}, "query", time.monotonic(), token=token)
        self.calls.append(call)
        self._notify()
        fault = self._take_fault("download")
        if fault is not None:
            call.status, call.ok, call.error = fault.status, False, fault.error
            return self._fault_response(fault)
        if not authorized:
            call.status, call.ok = 302, False
            return RedirectResponse(f"{self.url}/?redir={quote(request.url.path, safe='')}", status_code=302)
        data = self._file_data.get(fid)
        obj = self._files.get(fid)
        if data is None or obj is None:
            call.status, call.ok = 404, False
            return HTMLResponse("<html><body>File not found</body></html>", status_code=404)
        headers = {"Cache-Control": "private, no-cache"}
        if rest.startswith("download/"):
            headers["Content-Disposition"] = f'attachment; filename="{obj["name"]}"'
        return Response(data, media_type=obj["mimetype"], headers=headers)

    async def _signin_page(self, request: Request) -> Response:
        return HTMLResponse("<!DOCTYPE html><html><head><title>Sign in | Slack</title></head>"
                            f"<body><h1>Sign in to {self.team_name}</h1><form action='/signin'></form></body></html>")

    async def _command_response(self, request: Request) -> Response:
        body = await request.body()
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = body.decode("utf-8", "replace")
        self.command_responses.append({"key": request.path_params["key"], "body": data})
        self._notify()
        return PlainTextResponse("ok")
