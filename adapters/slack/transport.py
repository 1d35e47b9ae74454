"""What a Slack turn sends and fetches: native streams (``chat.startStream`` / ``appendStream`` /
``stopStream``) or posted and updated messages, files, the feedback buttons, downloads of shared files, and the
support channel's notices; with the Web API's limits, tiers and error words they need."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from slack_bolt import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream

from adapters.common.http import download
from adapters.common.markdown import SlackFormat, escape_slack
from adapters.common.ratelimit import Rate
from adapters.common.renderer import MessageGone, StreamingRenderer
from bot.errors import FileHostRefused, FileTooLarge
from bot.l10n import i18n
from bot.types import (
    AnswerDone,
    Attachment,
    ConversationKey,
    FileReply,
    HandoffEvent,
    PlatformIds,
    ReplyEvent,
    SinkContext,
    Status,
    TextChunk,
)

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter

log = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORM = "slack"
CACHE_SIZE = 10_000  # users' locales, titled threads, users' latest threads: each bounded
LOCALE_TTL = 86_400.0  # seconds a user's Slack locale is kept
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
        self.stream: AsyncChatStream | None = None  # slack-sdk's helper, for the message streaming now
        self.ids: list[str] = []
        self.sent = ""  # text appended to the current streamed message, as sent (escaped)
        self.total = ""  # all text streamed natively

    async def emit(self, event: ReplyEvent) -> PlatformIds:
        if isinstance(event, TextChunk):
            if self.native and self.stream is None and not (self.adapter.limiter.has_capacity("m:chat.startStream", 2)
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
        if isinstance(event, AnswerDone) and self.native and self.stream is not None:
            try:
                return await self._finish(event)
            except SlackApiError as exc:
                log.info("stopping the stream failed (%s): the final text is set with chat.update", slack_error(exc))
                await self._fall_back()
        return await self.renderer.emit(event)

    async def _append(self, raw: str) -> None:
        text = escape_slack(raw, line_start=not self.total or self.total.endswith("\n"))
        if self.stream is not None and len(self.sent) + len(text) > MESSAGE_LIMIT:
            await self.stream.stop()
            self.stream, self.sent = None, ""
        if self.stream is None:
            # buffer_size 1: every append goes at once (the core already paces the text it hands over)
            self.stream = AsyncChatStream(_Limited(self.adapter, self.party), logger=log, channel=self.channel,
                                          thread_ts=self.thread_ts, recipient_team_id=self.team,
                                          recipient_user_id=self.user, buffer_size=1)
            await self.stream.append(markdown_text=text)
            assert self.stream.ts is not None
            self.ids.append(self.stream.ts)
            await self.context.remember(self.ids)
        else:
            await self.stream.append(markdown_text=text)
        self.sent += text
        self.total += raw

    async def _finish(self, event: AnswerDone) -> PlatformIds:
        assert self.stream is not None
        final = event.text
        streamed = self.total.strip()
        # a whole answer gets the 👍/👎 under it; an interrupted or failed one is nothing to rate
        blocks = feedback_blocks(self.context.language, self.stream.ts) if event.outcome == "done" else None
        if final == streamed:
            await self.stream.stop(blocks=blocks)
        elif final.startswith(streamed) and \
                len(self.sent) + len(rest := escape_slack(final[len(streamed):], line_start=not streamed)) \
                <= MESSAGE_LIMIT:
            await self.stream.stop(markdown_text=rest, blocks=blocks)
        else:  # the final text differs from what streamed (a failure notice, a cut): set it
            await self.stream.stop()
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


class SupportChannel:
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


class _Limited:
    """The client slack-sdk's :class:`AsyncChatStream` calls, through the adapter's rate limiter: the helper calls
    the Web API itself, and ``chat.startStream`` / ``stopStream`` come from a small per-workspace budget (and a
    user's calls take turns with other users' in a busy channel)."""

    def __init__(self, adapter: SlackAdapter, party: str | None) -> None:
        self.adapter = adapter
        self.party = party

    async def chat_startStream(self, **kwargs: Any) -> Any:  # the client's method names
        return await self.adapter.call(self.adapter.client.chat_startStream, party=self.party, **kwargs)

    async def chat_appendStream(self, **kwargs: Any) -> Any:
        return await self.adapter.call(self.adapter.client.chat_appendStream, party=self.party, **kwargs)

    async def chat_stopStream(self, **kwargs: Any) -> Any:
        return await self.adapter.call(self.adapter.client.chat_stopStream, party=self.party, **kwargs)
