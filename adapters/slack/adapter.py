"""The Slack adapter, on slack-bolt's ``AsyncApp`` with an injected ``AsyncWebClient``.

Events come over Socket Mode (the default: no public URL) or to ``POST /slack/events`` (the Events API,
verified by the SDK's request verification). Bolt acknowledges before it runs a listener; this adapter
stores each message in a bolt middleware, which runs before that acknowledgement, so a message Slack
was told about is always stored, and a retry (``X-Slack-Retry-Num``, a Socket Mode redelivery, the
``message`` twin of an ``app_mention``) is the same message (the store remembers ``<channel>:<ts>``),
answered once. Catch-all listeners acknowledge everything else (edits, deletions, other bots).

A conversation is a thread (a message starts one); in a channel, replies in it without a mention are for
the bot as ``thread_followups`` says (by default only those of whoever asked it first there). Answers go to
the thread, streamed with Slack's native AI streaming (``chat.startStream`` / ``appendStream`` /
``stopStream``), or with ``chat.postMessage`` and ``chat.update`` every ``update_interval`` seconds where
that is off, unavailable, or the stream expired.
While working, ``assistant.threads.setStatus`` says so ("is looking at your files…"). In the AI-assistant
panel, new threads get the persona's greeting and suggested prompts, and a title. Files shared in a
message are downloaded from ``url_private_download`` with the bot token, only from ``file_hosts`` or the
API's host, after their size is checked from the event. A finished streamed answer ends with Slack's
``feedback_buttons`` (a ``context_actions`` block given to ``chat.stopStream``); a press is recorded through
the core once (its ``action_ts`` and presser are the event id) and thanked ephemerally. Answers posted and
updated instead (native streaming off or refused, or a final text that differs from what streamed) carry the
same buttons: their last message is a ``markdown`` block followed by the ``context_actions`` block (Slack takes
``markdown_text`` only without blocks; the other messages of a long answer stay ``markdown_text``). Every call goes through one rate limiter (per
channel for ``chat.postMessage``, per method tier for the others); a 429 is waited out as Slack asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
from cachetools import LRUCache, TTLCache
from fastapi import APIRouter, Request
from fastapi.responses import Response
from slack_bolt import BoltResponse
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.common.auth import rejected
from adapters.common.base import PlatformAdapter
from adapters.common.ratelimit import Rate, RateLimiter
from adapters.common.renderer import StreamingRenderer
from adapters.slack import SlackSettings
from adapters.slack.check import check as check_app
from adapters.slack.feedback import on_feedback
from adapters.slack.transport import (
    CACHE_SIZE,
    EVENTS_PATH,
    FEEDBACK_ACTION,
    LOCALE_TTL,
    PLATFORM,
    REFUSED_TOKEN,
    REPEATABLE,
    RESTARTING,
    SEND_TIMEOUT,
    THREAD_LINK,
    TIERS,
    SlackFetcher,
    SlackRenderer,
    SlackStreamSink,
    SlackTransport,
    SupportChannel,
    may_have_arrived,
    retry_after,
    retry_after_or_network,
    slack_error,
)
from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.errors import ShuttingDown
from bot.l10n import i18n
from bot.ops.checks import CheckResult
from bot.ops.logs import conversation_var
from bot.seams import Channel
from bot.types import Attachment, ConversationKey, IncomingMessage, Sender, SinkContext

log = logging.getLogger(__name__)
T = TypeVar("T")


class _SameToken(logging.Filter):
    """bolt reads $SLACK_BOT_TOKEN by itself and warns that it goes unused beside the client we give it (the
    same token, in the client). On this app's own logger only, that one message; every other bolt warning
    shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


BOLT_LOG = logging.getLogger("adapters.slack.bolt")
BOLT_LOG.addFilter(_SameToken())

_UNKNOWN = object()


def _signature_problem(request: Request) -> str:
    """Why bolt refused a request's signature, in the words of adapters.common.auth's rejections."""
    signature = request.headers.get("x-slack-signature", "")
    timestamp = request.headers.get("x-slack-request-timestamp", "")
    if not signature or not timestamp:
        return "missing signature" if not signature else "missing timestamp"
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return "malformed timestamp"
    return "stale timestamp" if age > 60 * 5 else "wrong signature"



class SlackAdapter(PlatformAdapter[SlackSettings]):
    """See the module docstring. Built by ``serve`` when ``adapters.slack.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: SlackSettings, *,
                 client: AsyncWebClient | None = None, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(manager, settings, conf)
        self.bot_token = self.secret(conf.bot_token_env, "the Bot User OAuth Token (xoxb-…)")
        self.app_token = self.secret(conf.app_token_env, "the app-level token (xapp-…, connections:write)") \
            if conf.mode == "socket" else ""
        signing = self.secret(conf.signing_secret_env, "the app's Signing Secret") if conf.mode == "http" else None
        # one aiohttp session for every Web API call (slack-sdk opens a new one per call without it). A send that
        # hangs past SEND_TIMEOUT counts as failed and the outbox sends it again. slack-sdk applies its own
        # `timeout` only to sessions it opens itself, so the shared session carries it.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT)) \
            if client is None else None
        self.client = client or AsyncWebClient(token=self.bot_token, base_url=conf.api_url, session=self._session,
                                               timeout=int(SEND_TIMEOUT))
        self.http = self.http_client(http, timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=False)
        self.app = AsyncApp(client=self.client, signing_secret=signing, process_before_response=False,
                            request_verification_enabled=conf.mode == "http", logger=BOLT_LOG)
        self.app.middleware(self._store_first)
        # bolt's Assistant middleware routes the AI-assistant panel's events: a new thread is greeted; a user's
        # message there was stored by _store_first, before it; a context change needs nothing here (bolt's default
        # listener would keep it in message metadata, with calls outside this adapter's rate limiter)
        assistant = AsyncAssistant(logger=BOLT_LOG)
        assistant.thread_started(self._assistant_thread_started)
        assistant.user_message(self._acknowledge)
        assistant.thread_context_changed(self._acknowledge)
        self.app.assistant(assistant)
        for event in ("message", "app_mention", "file_shared", "reaction_added"):
            self.app.event(event)(self._acknowledge)
        self.app.action(FEEDBACK_ACTION)(self._feedback)
        if conf.slash_command:
            self.app.command(conf.slash_command)(self._slash_command)
        self.limiter = RateLimiter(self._rates)
        self.file_hosts = {h.lower() for h in conf.file_hosts} | {(urlsplit(conf.api_url).hostname or "").lower()}
        self.channel = Channel(PLATFORM, SlackFetcher(self), self._sink_for, conf.persona or None,
                               command_prefixes=(conf.command_prefix, "/"), policy=conf.policy(settings.limits),
                               locale_of=self.locale, retry_after=retry_after_or_network,
                               may_have_arrived=may_have_arrived, endpoint=conf.api_url,
                               endpoint_setting="adapters.slack.api_url")
        self.endpoint, self.endpoint_key = conf.api_url, "api_url"
        self.credential_fix = ("copy it from your app's settings at api.slack.com/apps (OAuth & Permissions: the Bot "
                               "User OAuth Token; Basic Information: the app-level token), and reinstall the app "
                               "if it was revoked")
        manager.register(self.channel)
        if conf.support_channel:
            manager.add_notifier(SupportChannel(self, conf.support_channel))
        self.bot_user_id = ""
        self.team_id = ""
        self.workspace_url = ""
        self._socket: AsyncSocketModeHandler | None = None
        self._locales: TTLCache[str, str | None] = TTLCache(maxsize=CACHE_SIZE, ttl=LOCALE_TTL)  # a day
        # users' real names (the operator inbox names people), from the same users.info call as the locale
        self._names: TTLCache[str, str] = TTLCache(maxsize=CACHE_SIZE, ttl=LOCALE_TTL)
        self._titled: LRUCache[str, None] = LRUCache(maxsize=CACHE_SIZE)
        self._extras: set[asyncio.Task[None]] = set()
        self._latest_thread: LRUCache[tuple[str, str], str] = LRUCache(maxsize=CACHE_SIZE)  # (channel, user) → thread

    @staticmethod
    def _rates(key: str) -> Sequence[Rate]:
        if key.startswith("chan:"):
            return [(3, 3)]  # chat.postMessage: about one a second per channel, short bursts allowed
        return [TIERS.get(key.removeprefix("m:"), (100, 60))]

    async def call(self, fn: Callable[..., Awaitable[Any]], *, key: str | None = None, party: str | None = None,
                   **kwargs: Any) -> Any:
        """One Web API call (a method of ``self.client``) through the rate limiter; a 429 is waited out and the
        call made again. ``party``: the user the call is for (calls waiting on a busy key take turns).

        Not slack-sdk's RetryHandlers: a 429 pauses only its method's (or channel's) bucket here, for every
        caller at once, and a network error or a 5xx is never retried inside the call for a post (it may have
        arrived: the outbox decides, looking for the earlier copy first) — a retry handler would repeat it."""
        method = "files.upload" if fn.__name__ == "files_upload_v2" else fn.__name__.replace("_", ".")
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return await self.limiter.call(key or f"m:{method}", lambda: fn(**kwargs), limited=retry_after,
                                       retry_after=retry_after_or_network if method in REPEATABLE else retry_after,
                                       party=party)

    def renderer(self, context: SinkContext) -> StreamingRenderer:
        return SlackRenderer(SlackTransport(self, context), context, min_interval=self.conf.update_interval,
                             typing_interval=10.0, progress_as_status=True)

    def _sink_for(self, context: SinkContext) -> StreamingRenderer | SlackStreamSink:
        native = (self.conf.native_streaming and context.key.thread and context.route.get("team")
                  and context.route.get("user") and not context.previous and not context.resend)
        return SlackStreamSink(self, context) if native else self.renderer(context)

    def permalink(self, key: ConversationKey) -> str:
        root = key.thread or ""
        base = self.workspace_url.rstrip("/") or "https://slack.com"
        return f"{base}/archives/{key.chat}/p{root.replace('.', '')}" if root else f"{base}/archives/{key.chat}"

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        auth = await self.client.auth_test()
        self.bot_user_id, self.team_id = str(auth.get("user_id", "")), str(auth.get("team_id", ""))
        self.workspace_url = str(auth.get("url", ""))
        await super().start()
        if self.conf.mode == "socket":
            # the SDK retries a refused app-level token for ever, quietly: asked once here, it is one line
            await self.client.apps_connections_open(app_token=self.app_token)
            self._socket = AsyncSocketModeHandler(self.app, self.app_token, web_client=self.client)
            await self._socket.connect_async()

    def ready_detail(self) -> str:
        return f"as {self.bot_user_id} in {self.workspace_url or self.team_id}, {self.conf.mode} mode"

    def refused_credentials(self, exc: BaseException) -> tuple[str, str] | None:
        if not isinstance(exc, SlackApiError) or not isinstance(exc.response.data, dict):
            return None
        error = str(exc.response.data.get("error") or "")
        if error not in REFUSED_TOKEN:
            return None
        # apps.connections.open is the one call made with the app-level token
        app_token = "apps.connections.open" in str(exc.response.api_url)
        return (self.conf.app_token_env if app_token else self.conf.bot_token_env), error

    async def close(self) -> None:
        for task in list(self._extras):
            task.cancel()
        await asyncio.gather(*self._extras, return_exceptions=True)
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
        if self._session is not None:
            await self._session.close()
        await super().close()

    async def check(self) -> list[CheckResult]:
        """``auth.test`` with the bot token, and more by mode (adapters/slack/check.py)."""
        return await check_app(self)

    def router(self) -> APIRouter | None:
        if self.conf.mode != "http":
            return None
        handler = AsyncSlackRequestHandler(self.app)

        async def events(request: Request) -> Response:
            """The Events API (and slash commands): signature verified by the SDK, stored, then acknowledged."""
            response = await handler.handle(request)
            if response.status_code == 401:  # bolt's verification refused it: say why, once a minute
                rejected(request, _signature_problem(request))
            return response

        r = APIRouter()
        r.add_api_route(EVENTS_PATH, events, methods=["POST"], include_in_schema=False)
        return r

    # -- intake -------------------------------------------------------------------------------

    async def _acknowledge(self, **_: Any) -> None:
        """Listeners exist so bolt acknowledges every event; messages were stored by the middleware."""

    async def _store_first(self, body: dict[str, Any], next: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        """bolt middleware: a message is stored before bolt acknowledges it. While intake is off, a 503
        (Events API: Slack retries; Socket Mode: no ack, Slack delivers it again) — not bolt's "unhandled"."""
        event = body.get("event") if body.get("type") == "event_callback" else None
        if isinstance(event, dict) and event.get("type") in ("message", "app_mention"):
            if not self.accepting:
                return RESTARTING
            incoming = await self._incoming(body, event)
            if incoming is not None:
                conversation_var.set(str(incoming.key))
                try:
                    await self.manager.submit(incoming)
                except ShuttingDown:
                    return RESTARTING
                self._after_ack(self._enrich(incoming))
        await next()
        return None

    def _after_ack(self, work: Coroutine[Any, Any, None]) -> None:
        """Network-bound extras run beside the acknowledgement, never in front of it (Slack's 3 s budget)."""
        task = asyncio.create_task(work)
        self._extras.add(task)
        task.add_done_callback(self._extras.discard)

    async def _enrich(self, incoming: IncomingMessage) -> None:
        """After the ack: the sender's locale for their next messages, and the assistant thread's title."""
        try:
            await self.locale(incoming.sender.id)
            real = self._names.get(incoming.sender.id)
            if real and real != incoming.sender.name:
                # stored with the bare user id (the first message, before anyone asked Slack): named now
                await self.manager.store.update_conversation(incoming.key, name=real)
            await self._title(incoming)
        except Exception as exc:  # extras only: the message is stored and answered regardless
            log.info("enriching a Slack message failed: %s", slack_error(exc) or exc)

    async def _incoming(self, body: dict[str, Any], event: dict[str, Any]) -> IncomingMessage | None:
        subtype = event.get("subtype")
        user = event.get("user")
        if subtype not in (None, "file_share", "thread_broadcast") or event.get("bot_id") or not user \
                or user == self.bot_user_id:
            return None  # edits, deletions, joins, other bots, ourselves
        channel, ts = str(event.get("channel", "")), str(event.get("ts", ""))
        if not channel or not ts:
            return None
        direct = event.get("channel_type") == "im"
        # A top-level direct message continues the DM's one conversation (like a Telegram private chat); in a
        # channel a message starts a thread. A thread (an assistant thread too) is its own conversation.
        thread = str(event.get("thread_ts") or ("" if direct else ts))
        key = ConversationKey(PLATFORM, channel, thread)
        mention = f"<@{self.bot_user_id}>"
        text = str(event.get("text") or "")
        # A channel message without a mention: only a follow-up in a thread the bot is part of, as
        # adapters.slack.thread_followups says.
        if not direct and event["type"] != "app_mention" and mention not in text and (
                not event.get("thread_ts") or not await self._follows_up(key, str(user))):
            return None
        if mention in text:
            text = re.sub(r"[ \t]{2,}", " ", text.replace(mention, " "))
        text = text.strip()
        files = [f for f in event.get("files") or [] if isinstance(f, dict)]
        attachments = tuple(Attachment(str(f.get("url_private_download") or f.get("url_private") or ""),
                                       str(f.get("name") or f.get("title") or "file"), str(f.get("mimetype") or ""),
                                       f.get("size") if isinstance(f.get("size"), int) else None) for f in files)
        team = str(body.get("team_id") or event.get("team") or self.team_id)
        route = {"team": team, "user": str(user), "channel_type": str(event.get("channel_type") or "channel")}
        if attachments:
            route["files"] = "1"
        self._latest_thread[(channel, str(user))] = thread
        sender = Sender(str(user), self._names.get(str(user)) or str(user))
        return IncomingMessage(key=key, sender=sender, text=text, attachments=attachments,
                               locale=self.cached_locale(str(user)), event_id=f"{channel}:{ts}", message_id=ts,
                               is_direct=direct, route=route, raw=body)

    async def _follows_up(self, key: ConversationKey, user: str) -> bool:
        """Whether ``user``'s reply without a mention in the channel thread ``key`` is for the bot."""
        policy = self.conf.thread_followups
        if policy == "mention":
            return False
        store = self.manager.store
        if policy == "everyone":
            return bool(await store.transcript(key, limit=1))
        # "asker": the first person who asked the bot in this thread, read from the store (not a process
        # cache: another replica, or this one before a restart, may have stored it). The thread's root is
        # that question when the bot was mentioned in it, found by its ts; else (mentioned in a reply) the
        # oldest stored question of the thread is (of its newest 200 messages: past that, of those).
        root = await store.find_by_platform_id(PLATFORM, key.chat, key.thread)
        if root is not None and root.key == key and root.role == "user":
            return root.sender_id == user
        asked = [m for m in await store.transcript(key) if m.role == "user" and m.sender_id]
        return bool(asked) and asked[0].sender_id == user

    def cached_locale(self, user: str) -> str | None:
        """The user's Slack locale if known, without a network call (intake stores before it asks Slack)."""
        return self._locales.get(user)

    async def locale(self, user: str) -> str | None:
        """The user's Slack locale (``users.info`` with ``include_locale``), cached for a day; the user's real name
        comes with it (:attr:`_names`)."""
        cached = self._locales.get(user, _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached  # type: ignore[return-value]
        locale: str | None = None
        try:
            info = await self.call(self.client.users_info, user=user, include_locale=True)
            person = info.get("user") or {}
            locale = person.get("locale")
            profile = person.get("profile") or {}
            name = profile.get("real_name") or person.get("real_name") or profile.get("display_name") or ""
            if name:
                self._names[user] = str(name)
        except Exception as exc:
            log.info("users.info for %s failed: %s", user, exc)
        self._locales[user] = locale
        return locale

    async def _title(self, incoming: IncomingMessage) -> None:
        """An assistant thread (a DM thread) is titled after its first question."""
        key = incoming.key
        if not incoming.is_direct or key.thread == (incoming.message_id or "") or str(key) in self._titled:
            return
        self._titled[str(key)] = None
        title = " ".join(incoming.text.split())[:60] or "…"
        with contextlib.suppress(Exception):
            await self.call(self.client.assistant_threads_setTitle, channel_id=key.chat, thread_ts=key.thread, title=title)

    async def _assistant_thread_started(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """A user opened the assistant panel: the persona's greeting and suggested prompts."""
        thread = event.get("assistant_thread") or {}
        channel, ts, user = thread.get("channel_id"), thread.get("thread_ts"), thread.get("user_id")
        if not channel or not ts:
            return
        team = str(body.get("team_id") or self.team_id)
        if not self.channel.policy.allows(str(user or ""), {str(channel), team}):
            log.info("assistant thread of %s in %s not greeted: not allowed by adapters.slack", user, channel)
            return
        lang = i18n.normalize_code(await self.locale(str(user))) if user else None
        lang = lang if lang in i18n.UI_LANGUAGES else self.settings.conversation.default_language
        conv = await self.manager.store.conversation(ConversationKey(PLATFORM, str(channel), str(ts)))
        persona = self.manager.persona_for(conv, self.channel)
        try:
            await self.call(self.client.chat_postMessage, key=f"chan:{channel}", channel=channel, thread_ts=ts,
                            markdown_text=persona.greeting_for(lang))
            suggestions = persona.suggestions_for(lang)
            if self.conf.suggested_prompts and suggestions:
                await self.call(self.client.assistant_threads_setSuggestedPrompts, channel_id=channel, thread_ts=ts,
                                prompts=[{"title": s[:75], "message": s} for s in suggestions[:4]])
        except SlackApiError as exc:
            log.warning("greeting a new assistant thread failed: %s", slack_error(exc) or exc)

    async def _feedback(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any]) -> None:
        """👍/👎 under an answer (adapters/slack/feedback.py); bolt passes what the parameters name."""
        await on_feedback(self, ack, body)

    async def _slash_command(self, ack: Callable[..., Awaitable[None]], body: dict[str, Any]) -> None:
        """``/internvl human`` and friends: the framework's commands, from Slack's own command menu."""
        await ack()
        words = str(body.get("text") or "help").strip() or "help"
        channel, user = str(body.get("channel_id", "")), str(body.get("user_id", ""))
        if not channel or not user:
            return
        # Slack sends no thread with a slash command: a thread's link (Copy link) in the text names it,
        # else the command is about the user's latest conversation in this channel (a DM's is the DM's).
        named = THREAD_LINK.search(words)
        if named is not None:
            words = (words[:named.start()] + words[named.end():]).strip() or "help"
        thread = f"{named['sec']}.{named['usec']}" if named else self._latest_thread.get((channel, user), "")
        key = ConversationKey(PLATFORM, channel, thread)
        route = {"team": str(body.get("team_id") or self.team_id), "user": user,
                 "channel_type": "im" if channel.startswith("D") else "channel"}
        with contextlib.suppress(ShuttingDown):
            await self.manager.submit(IncomingMessage(
                key, Sender(user, self._names.get(user) or str(body.get("user_name") or user)), "/" + words,
                locale=await self.locale(user),
                event_id=f"slash:{body.get('trigger_id') or time.time_ns()}", is_direct=channel.startswith("D"),
                route=route, raw=body))
