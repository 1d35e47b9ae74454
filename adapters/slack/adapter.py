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
from dataclasses import replace
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
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.common.auth import rejected
from adapters.common.base import PlatformAdapter
from adapters.common.http import download
from adapters.common.markdown import SlackFormat, escape_slack
from adapters.common.ratelimit import Rate, RateLimiter
from adapters.common.renderer import MessageGone, StreamingRenderer
from adapters.slack import SlackSettings
from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.errors import FileHostRefused, FileTooLarge, ShuttingDown
from bot.l10n import i18n
from bot.ops.checks import CheckResult, reason, shown, unreachable
from bot.ops.logs import conversation_var
from bot.seams import Channel
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffEvent,
    IncomingMessage,
    PlatformIds,
    ReplyEvent,
    Sender,
    SinkContext,
    Status,
    TextChunk,
)

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

PLATFORM = "slack"
CACHE_SIZE = 10_000  # users' locales, titled threads, users' latest threads: each bounded
LOCALE_TTL = 86_400.0  # seconds a user's Slack locale is kept
_UNKNOWN = object()
RESTARTING = BoltResponse(status=503, body={"error": "restarting"}, headers={"Retry-After": "1"})
SEND_TIMEOUT = 10.0  # seconds one Web API call may take (uploads included)
ANSWER_EVENT = "internvl_bot_answer"  # message metadata on answers: which question (store id) they answer
#: a message's link (``…/archives/C…/p1712345678123456``, or the ts itself) names the thread of a slash command
THREAD_LINK = re.compile(r"<?(?:https?://\S+/archives/[A-Z0-9]+/)?p?(?P<sec>\d{10})\.?(?P<usec>\d{6})(?:\?\S*)?>?")
EVENTS_PATH = "/slack/events"
#: A streamed or posted message's Markdown stays under Slack's 12,000 characters for markdown text.
MESSAGE_LIMIT = 11_500
#: Slack's published minimum rates (calls a minute, per workspace) of the methods this adapter calls.
TIERS: dict[str, Rate] = {
    "chat.update": (50, 60), "chat.delete": (50, 60), "chat.startStream": (20, 60), "chat.stopStream": (20, 60),
    "chat.appendStream": (100, 60), "assistant.threads.setStatus": (100, 60),
    "assistant.threads.setSuggestedPrompts": (100, 60), "assistant.threads.setTitle": (100, 60),
    "users.info": (100, 60), "files.upload": (20, 60), "conversations.replies": (50, 60),
}
PREVIEW_RESERVE = 15  # chat.update calls kept for finished texts (see SlackTransport.previews_affordable)
#: Methods whose call can be repeated after a network error without showing anything twice.
REPEATABLE = {"chat.update", "chat.delete", "assistant.threads.setStatus", "assistant.threads.setSuggestedPrompts",
              "assistant.threads.setTitle", "users.info", "conversations.replies"}
#: The action_id of the feedback buttons under an answer, and their values (what a press sends back).
FEEDBACK_ACTION = "internvl_bot_feedback"
FEEDBACK_VALUES = {"up": "up", "down": "down"}
_STREAM_GONE = {"message_not_in_streaming_state", "message_not_found", "streaming_state_conflict",
                "invalid_stream", "stream_expired"}


def may_have_arrived(exc: BaseException) -> bool:
    """Whether a Web API call that failed with ``exc`` may have been carried out all the same: not when Slack
    answered 429 or 503 (it did not take it), nor when no connection was made."""
    if isinstance(exc, SlackApiError):
        return exc.response.status_code not in (429, 503)
    return not isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)


def slack_error(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str((exc.response.data or {}).get("error", "")) if isinstance(exc.response.data, dict) else ""
    return ""


def retry_after(exc: BaseException) -> float | None:
    """Seconds Slack asked us to wait (a 429's Retry-After), or None."""
    if isinstance(exc, SlackApiError) and exc.response.status_code == 429:
        try:
            return max(1.0, float(exc.response.headers.get("Retry-After", "1")))
        except (TypeError, ValueError):
            return 1.0
    return None


#: Slack's errors for a token it does not accept (api.slack.com/methods/auth.test, apps.connections.open)
REFUSED_TOKEN = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                           "not_allowed_token_type", "invalid_token"})


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


def retry_after_or_network(exc: BaseException) -> float | None:
    if (wait := retry_after(exc)) is not None:
        return wait
    if isinstance(exc, SlackApiError) and exc.response.status_code >= 500:
        return 1.0
    if isinstance(exc, (OSError, asyncio.TimeoutError)) or type(exc).__module__.startswith("aiohttp"):
        return 1.0
    return None


class SlackFetcher:
    """Downloads ``url_private_download`` with the bot token, only from Slack's own file hosts."""

    def __init__(self, adapter: SlackAdapter) -> None:
        self.adapter = adapter

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        name = attachment.filename or "file"
        url = attachment.ref
        host = (urlsplit(url).hostname or "").lower()
        if urlsplit(url).scheme not in ("https", "http") or host not in self.adapter.file_hosts:
            log.warning("file %r offered at %s: not a Slack file host, not fetched", name, host or url[:40])
            raise FileHostRefused(f"host {host!r} is not in adapters.slack.file_hosts", name=name)
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(name=name, size=attachment.size, limit=limit)
        return await download(
            self.adapter.http, url, name=name, limit=limit, max_redirects=0,
            headers_for=lambda url: {"Authorization": f"Bearer {self.adapter.bot_token}"},
            refuse=lambda response: "a page instead of the file (is the files:read scope granted?)"
            if "text/html" in response.headers.get("content-type", "") else None)


class SlackTransport:
    """Posted and updated messages in one thread (:class:`~adapters.common.renderer.MessageTransport`)."""

    limit = MESSAGE_LIMIT
    supports_preview = False

    def __init__(self, adapter: SlackAdapter, context: SinkContext) -> None:
        self.adapter = adapter
        self.context = context
        self.channel = context.key.chat
        self.party = context.route.get("user")  # whose reply: turns between users on a busy channel
        self.thread_ts = context.key.thread or None
        self._format = SlackFormat()
        self._looked = False
        #: whether the answer now being finished may be rated (its outcome is "done"): :class:`SlackRenderer`
        self.rated = True

    def measure(self, text: str) -> int:
        return len(escape_slack(text))  # what Slack counts: the text as sent

    def previews_affordable(self) -> bool:
        # chat.update's budget is per workspace (about 50 a minute): previews may use it while a good part is
        # left, so that a burst's finished texts (one update each) never wait behind other answers' previews
        return self.adapter.limiter.has_capacity("m:chat.update", PREVIEW_RESERVE)

    def _body(self, text: str, final: bool, closing: bool = False) -> dict[str, Any]:
        # Finished text as Markdown, which Slack renders itself; a streaming preview as mrkdwn text. Both
        # escaped: a "<!channel>" the user or the model wrote is shown, not sent as a mention.
        if not final:
            return {"text": self._format.render(text).text}
        if closing and self.rated:
            # the answer's last message gets the 👍/👎: Slack refuses markdown_text beside blocks, so the same
            # Markdown goes in a markdown block (MESSAGE_LIMIT keeps it under the block's 12,000 characters);
            # ``text`` is what notifications show. No block ids: Slack makes fresh ones for every version
            return {"text": self._format.render(text).text,
                    "blocks": [{"type": "markdown", "text": escape_slack(text)},
                               *feedback_blocks(self.context.language, None)]}
        return {"markdown_text": escape_slack(text)}

    async def send(self, text: str, *, final: bool, closing: bool = False) -> str:
        if self.context.resend and not self._looked:
            self._looked = True
            earlier = await self._earlier_copy()
            if earlier is not None:  # the failed send had arrived: finish that message, post no second one
                await self.edit(earlier, text, final=final, closing=closing)
                return earlier
        response = await self.adapter.call(self.adapter.client.chat_postMessage, party=self.party, key=f"chan:{self.channel}",
                                           channel=self.channel, thread_ts=self.thread_ts, unfurl_links=False,
                                           metadata=self._mark(), **self._body(text, final, closing))
        return str(response["ts"])

    def _mark(self) -> dict[str, Any] | None:
        """Message metadata naming the question an answer belongs to, so a resend can find it."""
        if self.context.message_id is None:
            return None
        return {"event_type": ANSWER_EVENT, "event_payload": {"question": str(self.context.message_id)}}

    async def _earlier_copy(self) -> str | None:
        """Our message for this question in the thread, if an earlier send reached Slack (top-level DMs have
        no thread to look in: there a send whose answer was lost can still arrive twice)."""
        mark = self._mark()
        if mark is None or not self.thread_ts:
            return None
        try:
            found = await self.adapter.call(self.adapter.client.conversations_replies, party=self.party, channel=self.channel,
                                            ts=self.thread_ts, include_all_metadata=True, limit=200)
        except SlackApiError as exc:
            log.info("looking for an earlier copy of the answer failed (%s): posting it", slack_error(exc))
            return None
        for message in reversed(found.get("messages") or []):
            if message.get("bot_id") and (message.get("metadata") or {}) == mark:
                return str(message["ts"])
        return None

    async def edit(self, message_id: str, text: str, *, final: bool, closing: bool = False) -> None:
        try:
            await self.adapter.call(self.adapter.client.chat_update, party=self.party, channel=self.channel, ts=message_id,
                                    **self._body(text, final, closing))
        except SlackApiError as exc:
            error = slack_error(exc)
            if error == "message_not_found":
                raise MessageGone(message_id) from None
            if error != "streaming_state_conflict":
                raise
            # A stream a killed process left open: close it, then the text can be set.
            with contextlib.suppress(SlackApiError):
                await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, channel=self.channel, ts=message_id)
            await self.adapter.call(self.adapter.client.chat_update, party=self.party, channel=self.channel, ts=message_id,
                                    **self._body(text, final, closing))

    async def delete(self, message_id: str) -> None:
        with contextlib.suppress(SlackApiError):
            await self.adapter.call(self.adapter.client.chat_delete, party=self.party, channel=self.channel, ts=message_id)

    async def preview(self, text: str) -> None:
        raise NotImplementedError("Slack has no drafts")

    async def status(self, status: Status) -> None:
        if not self.thread_ts:
            return
        text = status.text or i18n.text("status_looking" if self.context.route.get("files") else "status_thinking",
                                        self.context.language)
        await self.adapter.call(self.adapter.client.assistant_threads_setStatus, party=self.party, channel_id=self.channel,
                                thread_ts=self.thread_ts, status=text[:100])

    async def file(self, reply: FileReply) -> str:
        response = await self.adapter.call(self.adapter.client.files_upload_v2, key="m:files.upload", channel=self.channel,
                                           thread_ts=self.thread_ts, filename=reply.filename, content=reply.data,
                                           title=reply.filename,
                                           initial_comment=escape_slack(reply.caption) if reply.caption else None)
        files = response.get("files") or [response.get("file") or {}]
        return str(files[0].get("id", "")) if files else ""


class SlackStreamSink:
    """Slack's native AI streaming for one answer; statuses, notices and files (and, should the stream be
    refused or expire, the rest of the answer) go through a :class:`StreamingRenderer` on
    :class:`SlackTransport`."""

    def __init__(self, adapter: SlackAdapter, context: SinkContext) -> None:
        self.adapter = adapter
        self.context = context
        self.channel = context.key.chat
        self.thread_ts = context.key.thread
        self.team = context.route.get("team", "")
        self.user = context.route.get("user", "")
        self.party = self.user or None
        self.renderer = adapter.renderer(context)
        self.native = True
        self.ts: str | None = None
        self.ids: list[str] = []
        self.sent = ""  # text appended to the current streamed message, as sent (escaped)
        self.total = ""  # all text streamed natively

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, TextChunk):
            if self.native and self.ts is None and not (self.adapter.limiter.has_capacity("m:chat.startStream", 2)
                                                        and self.adapter.limiter.has_capacity("m:chat.stopStream", 2)):
                # Starting and stopping a stream come from a small per-workspace budget: when it is spent,
                # posting now shows the answer sooner than waiting for a stream.
                await self._fall_back()
            if self.native:
                try:
                    await self._append(event.text)
                    return None
                except SlackApiError as exc:
                    log.info("native streaming refused (%s): posting and updating instead", slack_error(exc) or exc)
                    await self._fall_back()
            return await self.renderer.emit(event)
        if isinstance(event, AnswerDone) and self.native and self.ts is not None:
            try:
                return await self._finish(event)
            except SlackApiError as exc:
                log.info("stopping the stream failed (%s): the final text is set with chat.update", slack_error(exc))
                await self._fall_back()
        return await self.renderer.emit(event)

    async def _append(self, raw: str) -> None:
        text = escape_slack(raw, line_start=not self.total or self.total.endswith("\n"))
        if self.ts is not None and len(self.sent) + len(text) > MESSAGE_LIMIT:
            await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, channel=self.channel, ts=self.ts)
            self.ts, self.sent = None, ""
        chunks = [{"type": "markdown_text", "text": text}]
        if self.ts is None:
            response = await self.adapter.call(
                self.adapter.client.chat_startStream, party=self.party, channel=self.channel, thread_ts=self.thread_ts,
                recipient_team_id=self.team, recipient_user_id=self.user, chunks=chunks)
            self.ts = str(response["ts"])
            self.ids.append(self.ts)
            await self.context.remember(self.ids)
        else:
            await self.adapter.call(self.adapter.client.chat_appendStream, party=self.party, channel=self.channel, ts=self.ts,
                                    chunks=chunks)
        self.sent += text
        self.total += raw

    async def _finish(self, event: AnswerDone) -> PlatformIds:
        assert self.ts is not None
        final = event.text
        streamed = self.total.strip()
        # a whole answer gets the 👍/👎 under it; an interrupted or failed one is nothing to rate
        blocks = feedback_blocks(self.context.language, self.ts) if event.outcome == "done" else None
        if final == streamed:
            await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, channel=self.channel, ts=self.ts,
                                    blocks=blocks)
        elif final.startswith(streamed) and \
                len(self.sent) + len(rest := escape_slack(final[len(streamed):], line_start=not streamed)) \
                <= MESSAGE_LIMIT:
            await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, channel=self.channel, ts=self.ts,
                                    chunks=[{"type": "markdown_text", "text": rest}], blocks=blocks)
        else:  # the final text differs from what streamed (a failure notice, a cut): set it
            await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, channel=self.channel, ts=self.ts)
            await self._fall_back()
            return await self.renderer.emit(event)
        return tuple(self.ids)

    async def _fall_back(self) -> None:
        """Continue in posted and updated messages, from the streamed ones (Slack lets their text be set
        once the stream is over or expired)."""
        if not self.native:
            return
        self.native = False
        context = replace(self.context, previous=tuple(self.ids))
        self.renderer = self.adapter.renderer(context)
        if self.total:
            self.renderer.answer = self.total


def feedback_blocks(language: str, ts: str | None) -> list[dict[str, Any]]:
    """Slack's feedback buttons for AI answers: a ``context_actions`` block with one ``feedback_buttons``
    element (docs.slack.dev/reference/block-kit/block-elements/feedback-buttons-element). The block_id
    names the message ``ts`` (Slack wants it unique per message); None: Slack names it (a message posted or
    updated, whose ts is not known yet or which gets a new version)."""
    def button(rating: str, face: str) -> dict[str, Any]:
        label = i18n.text(f"ui_feedback_{rating}", language)
        return {"text": {"type": "plain_text", "text": face}, "accessibility_label": label[:75],
                "value": FEEDBACK_VALUES[rating]}

    block: dict[str, Any] = {"type": "context_actions", "elements": [
        {"type": "feedback_buttons", "action_id": FEEDBACK_ACTION, "positive_button": button("up", "👍"),
         "negative_button": button("down", "👎")}]}
    if ts is not None:
        block["block_id"] = f"fb-{ts}"
    return [block]


class SlackRenderer(StreamingRenderer):
    """The posted-and-updated answer: a :class:`StreamingRenderer` on :class:`SlackTransport` that tells the
    transport whether the answer being finished is whole (outcome ``done``): only a whole one is rated, as
    with native streaming (an interrupted or failed answer is nothing to rate)."""

    def __init__(self, transport: SlackTransport, context: SinkContext, **options: Any) -> None:
        super().__init__(transport, context, **options)
        self.slack = transport

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, AnswerDone):
            self.slack.rated = event.outcome == "done"
        return await super().emit(event)


class _SupportChannel:
    """A handoff notifier: each request for a person is posted to a Slack channel with a link to the thread;
    what follows (the user writing while they wait, a person taking it, the assistant back) goes into the
    thread of that post, so the support team reads one conversation per thread."""

    reaches_people = True

    def __init__(self, adapter: SlackAdapter, channel: str) -> None:
        self.adapter = adapter
        self.channel = channel

    def _bucket(self, conversation: str) -> str:
        return f"slack:support:{conversation}"

    async def notify(self, event: HandoffEvent) -> None:
        try:
            text = self._text(event)
            store = self.adapter.manager.store
            posts = (await store.stashed(self._bucket(event.conversation))).get(self._bucket(event.conversation), [])
            thread = posts[-1][1] if posts and event.kind != "requested" else None
            if thread is None and event.kind != "requested":
                text = f"{self._link(event)}\n{text}"  # its request was never posted here (or the post is gone)
            response = await self.adapter.call(self.adapter.client.chat_postMessage, key=f"chan:{self.channel}", channel=self.channel,
                                               text=text, thread_ts=thread)
            if event.kind == "requested" and response.get("ts"):
                await store.drop_stash(self._bucket(event.conversation))
                await store.stash(self._bucket(event.conversation), "post", str(response["ts"]))
            elif event.kind == "returned":
                await store.drop_stash(self._bucket(event.conversation))
        except Exception as exc:
            log.error("telling the Slack support channel %s about %s failed: %s (check the bot is a member of it "
                      "and has chat:write)", self.channel, event.conversation, slack_error(exc) or type(exc).__name__)

    def _link(self, event: HandoffEvent) -> str:
        key = ConversationKey.parse(event.conversation)
        return self.adapter.permalink(key) if key.platform == PLATFORM else f"`{escape_slack(event.conversation)}`"

    def _text(self, event: HandoffEvent) -> str:
        language = self.adapter.settings.conversation.default_language
        user = escape_slack(event.user or "?", quotes=False)
        if event.kind == "requested":
            # the framework's own link stays Slack syntax; what the user wrote is escaped
            return i18n.text("handoff_support_notice", language, user=user, link=self._link(event),
                             text=escape_slack(event.text[:500], quotes=False))
        if event.kind == "message":
            return f"*{user}*\n> {escape_slack(event.text[:500], quotes=False)}"
        where = i18n.text("op_with_person" if event.kind == "taken" else "op_with_bot", language)
        return f"{escape_slack(event.by or '?', quotes=False)} → {where}"

    async def close(self) -> None:
        return None


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
        for event in ("message", "app_mention", "assistant_thread_context_changed", "file_shared", "reaction_added"):
            self.app.event(event)(self._acknowledge)
        self.app.event("assistant_thread_started")(self._assistant_thread_started)
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
            manager.add_notifier(_SupportChannel(self, conf.support_channel))
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

    # -- serve --check -----------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """``auth.test`` with the bot token; in socket mode ``apps.connections.open`` with the app token (the
        connection it offers is not opened); in http mode, the Request URL Slack must call."""
        url = f"{shown(self.conf.api_url).rstrip('/')}/auth.test"
        bot_fix = f"set {self.conf.bot_token_env} to the app's Bot User OAuth Token (xoxb-…, OAuth & Permissions)"
        try:
            auth = await self.client.auth_test()
        except Exception as exc:
            return [self._refused(url, exc, bot_fix)]
        results = [CheckResult(True, PLATFORM, f"auth.test at {url}: the bot {auth.get('user')} ({auth.get('user_id')})"
                                               f" in {auth.get('team')} ({auth.get('url')})")]
        if self.conf.mode == "socket":
            url = f"{shown(self.conf.api_url).rstrip('/')}/apps.connections.open"
            try:
                await self.client.apps_connections_open(app_token=self.app_token)
            except Exception as exc:
                results.append(self._refused(url, exc, f"set {self.conf.app_token_env} to an app-level token "
                                                       "(xapp-…, Basic Information → App-Level Tokens) with the "
                                                       "connections:write scope, and turn Socket Mode on"))
            else:
                results.append(CheckResult(True, PLATFORM, f"apps.connections.open at {url}: Slack offers a Socket "
                                                           f"Mode connection to the app token ({self.conf.app_token_env})"))
        else:
            results.append(CheckResult(True, PLATFORM, f"Slack must POST events to {self.served_at(EVENTS_PATH)} "
                                                       "(Event Subscriptions and Interactivity → Request URL)"))
        return results

    def _refused(self, url: str, exc: BaseException, fix: str) -> CheckResult:
        """The ✗ line of a Web API call that failed: what Slack said, or why it could not be asked."""
        method = url.rsplit("/", 1)[1]
        if isinstance(exc, SlackApiError):
            error = slack_error(exc) or f"HTTP {exc.response.status_code}"
            if error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                         "not_allowed_token_type"):
                return CheckResult(False, PLATFORM, f"{method} at {url}: Slack said {error!r} — {fix}")
            return CheckResult(False, PLATFORM, f"{method} at {url}: Slack said {error!r} — check "
                                                "adapters.slack.api_url (https://slack.com/api/)")
        if isinstance(exc, (OSError, asyncio.TimeoutError, aiohttp.ClientError)):
            return CheckResult(False, PLATFORM, f"{method}: " + unreachable(
                self.conf.api_url, exc, "check adapters.slack.api_url and the network"))
        return CheckResult(False, PLATFORM, f"{method} at {url}: {type(exc).__name__}: {reason(exc)} — check "
                                            "adapters.slack.api_url")

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
        """👍/👎 under an answer: recorded once through the core (Slack's ``action_ts`` and the presser are
        the event id: a redelivered press is the same row), thanked with an ephemeral message; a 👎 asks once
        what was wrong (the presser's next message in the thread is its comment)."""
        await ack()
        action = next((a for a in body.get("actions") or [] if a.get("action_id") == FEEDBACK_ACTION), None)
        container = body.get("container") or {}
        channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id") or "")
        ts, user = str(container.get("message_ts") or ""), str((body.get("user") or {}).get("id") or "")
        if action is None or not channel or not ts or not user:
            return
        rating = {v: k for k, v in FEEDBACK_VALUES.items()}.get(str(action.get("value")))
        if rating is None:
            return
        thread = str(container.get("thread_ts") or "")
        key = ConversationKey(PLATFORM, channel, thread)
        conv = await self.manager.store.conversation(key)
        lang = conv.language or conv.last_language or i18n.normalize_code(await self.locale(user)) \
            or self.settings.conversation.default_language
        feedback = self.manager.feedback
        answer = await feedback.answer_for(key, ts)
        if answer is None:
            says = "feedback_gone"
        else:
            fid = await feedback.record(answer, "up" if rating == "up" else "down", user=user,
                                        event_id=f"slack-fb:{user}:{action.get('action_ts') or ts}")
            says = "feedback_thanks"
            if fid is not None and rating == "down":
                await feedback.ask_comment(answer.key, user, fid)
                says = "feedback_ask_comment"
        try:
            await self.call(self.client.chat_postEphemeral, channel=channel, user=user,
                            thread_ts=thread or None, text=i18n.text(says, lang))
        except SlackApiError as exc:
            log.info("thanking %s for feedback failed: %s", user, slack_error(exc) or exc)

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
