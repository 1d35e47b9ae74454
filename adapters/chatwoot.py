"""Chatwoot as an Agent Bot: the assistant answers customers first and hands conversations to agents.

Chatwoot POSTs every event of the bot's inboxes to ``POST /chatwoot/webhook``, signed (since Chatwoot 4.13:
``X-Chatwoot-Signature: sha256=HMAC(secret, "{timestamp}.{body}")``; unsigned, wrong or stale requests get
401). Without the secret the adapter does not start, unless ``insecure_unsigned`` (a lab) says otherwise.
Chatwoot waits 5 s and treats anything but a 2xx as the bot failing — the conversation then opens to humans —
so the webhook verifies, stores the customer's message and answers 200 at once, also for the events it
ignores; the answer follows in the background. A redelivery (Chatwoot retries 429/500 with the same
``X-Chatwoot-Delivery``) is the same message (the store remembers its id). A signed request, or a delivery id,
that was accepted (2xx) before is answered 200 and not run again (a captured status change replayed within
its five fresh minutes flips nothing); one that failed runs again when it comes back.

The bot answers only ``incoming``, non-private messages of conversations that are ``pending`` (while an agent
has a conversation ``open``, messages keep arriving: the bot stays silent). A status change back to
``pending`` gives the conversation back to the bot. Replies are messages of the conversation (typing shown
while the model works); a handoff (``/human``, a plain request, the persona's policy, or the model saying it
cannot help) posts the polite reply and toggles the conversation ``open``, which runs Chatwoot's own handoff to
agents; so does "Take over" in the operator inbox, and "Give back" (or the customer's ``/bot``) toggles it back to
``pending``. In agent-assist inboxes the bot answers agents instead: every draft is a private note, nothing is
public, and the conversation's status does not matter.

Feedback (issue 23): an agent's public reply in an agent-assist conversation judges the bot's newest draft
there — ``sent_as_is``, ``edited`` or ``discarded`` (:func:`bot.conversation.feedback.draft_outcome`); resolving
the conversation without a reply discards it. Where the inbox has CSAT on, the customer's rating (Chatwoot's
``message_updated`` of the ``input_csat`` survey, ``submitted_values.csat_survey_response``) is stored as
``csat`` (the rating 1-5 as the value, the customer's remark as the comment) on every answer of the bot in the
conversation since its previous rating, once per survey (redeliveries and later edits of the rating add
nothing). CSAT in agent-assist inboxes rates the agents' work, not the drafts: it is not recorded.

Attachments are fetched from their ``data_url``, which redirects to storage (often another host): redirects are
followed within Chatwoot's own host and ``attachment_hosts``, to public addresses only (unless
``allow_private_networks`` lists them), the bot's token is sent to Chatwoot's own host only, and the size is
checked from ``file_size`` before any download. The bot token cannot list messages: history comes from the framework's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import httpx
from cachetools import LRUCache
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from adapters.common.auth import SignedBody
from adapters.common.base import PlatformAdapter
from adapters.common.http import BadRequest, download, parse_json_object
from adapters.common.sink import Message, PostingSink
from adapters.common.urlguard import NetworkList, UrlGuard, host_allowed, require_https
from bot.config import AdapterSection, IdList, Settings
from bot.errors import FileTooLarge, ShuttingDown, StartupError
from bot.l10n import i18n
from bot.ops.checks import CheckResult, platform_said, unreachable
from bot.ops.logs import conversation_var
from bot.seams import Channel
from bot.types import (
    AlreadySent,
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

PLATFORM = "chatwoot"
WEBHOOK_PATH = "/chatwoot/webhook"
MAX_REDIRECTS = 5


CACHE_SIZE = 10_000  # conversations remembered per cache (accounts, greetings)

class ChatwootSettings(AdapterSection):
    """``adapters.chatwoot``: the assistant as a Chatwoot Agent Bot."""

    secrets: ClassVar[dict[str, str]] = {"bot_token_env": "the agent bot's access token"}

    enabled: bool = False
    persona: str = "support"
    base_url: str = Field("", description="the Chatwoot installation, e.g. https://chatwoot.example.com")
    bot_token_env: str = Field("CHATWOOT_BOT_TOKEN", description="environment variable with the agent bot's token")
    webhook_secret_env: str = Field(
        "CHATWOOT_WEBHOOK_SECRET", description="environment variable with the agent bot's secret (required)")
    insecure_unsigned: bool = Field(
        False, description="a lab only: without the secret, accept unsigned webhooks (anyone can post events)")
    agent_assist_inboxes: IdList = Field(default_factory=list,
                                         description="inbox ids where drafts go to agents as private notes")
    attachment_hosts: list[str] = Field(
        default_factory=list, description="hosts besides base_url's that data_url may redirect to: the storage "
                                          "(*.s3.amazonaws.com, storage.googleapis.com; *.example.com allowed)")
    allow_private_networks: NetworkList = Field(
        default_factory=list, description="networks attachments may come from although not public (a Chatwoot "
                                          "on the company network: 10.0.0.0/8); empty = public addresses only")
    account_id: int = Field(0, ge=0, description="the Chatwoot account (the number after /app/accounts/ in its "
                                                 "URLs) whose help center and resolved conversations `kb` reads; "
                                                 "0 = not set (knowledge-base sources only need it)")
    api_token_env: str = Field(
        "CHATWOOT_API_TOKEN", description="environment variable with a Chatwoot user's access token (Profile "
                                          "settings → Access token; an agent who sees the inboxes) for `kb` "
                                          "sources: the agent bot's token may read no articles or conversations")


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class ChatwootFetcher:
    """Attachment bytes from ``data_url``: only from Chatwoot's host and ``attachment_hosts`` (every redirect
    hop too), never from a non-public address outside ``allow_private_networks``; the token sent to Chatwoot
    only."""

    def __init__(self, adapter: ChatwootAdapter) -> None:
        self.adapter = adapter

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        name = attachment.filename or "file"
        if attachment.size is not None and attachment.size > limit:
            raise FileTooLarge(name=name, size=attachment.size, limit=limit)
        home = _host(self.adapter.base_url)
        storage = self.adapter.conf.attachment_hosts
        return await download(self.adapter.http, attachment.ref, name=name, limit=limit, max_redirects=MAX_REDIRECTS,
                              allowed=lambda url: _host(url) == home or host_allowed(url, storage),
                              headers_for=lambda url: {"api_access_token": self.adapter.token}
                              if _host(url) == home else {}, guard=self.adapter.guard)


ANSWER_MARK = "internvl_bot_answer_to"  # in an answer's content_attributes: the question's id in the store
POSTING = "chatwoot:posting"
POSTED = "chatwoot:posted:"  # + the id of the Chatwoot message that answers a question not yet finished  # stored before an answer is posted (see ChatwootSink._post_answer_once)


class ChatwootSink(PostingSink):
    """One turn's replies as Chatwoot messages: typing while the model works, the answer posted whole when
    done (Chatwoot shows messages, not edits), private notes in agent-assist inboxes."""

    def __init__(self, adapter: ChatwootAdapter, context: SinkContext) -> None:
        super().__init__(context)
        self.adapter = adapter
        self.conversation = context.key.thread
        self.private = context.route.get("assist") == "1"

    async def post(self, text: str, event: Message) -> tuple[str, ...]:
        if isinstance(event, AnswerDone) and self.context.message_id is not None:
            return await self._post_answer_once(text)
        return await self._post(text)

    async def file(self, reply: FileReply) -> tuple[str, ...]:
        return await self._post(reply.caption, files=[reply])

    async def handed_off(self, event: HandoffUpdate) -> None:
        # Chatwoot's agents see who has the conversation: "open" while a person has it (asked for, or taken over
        # in the operator inbox), "pending" when it is the assistant's again. The webhook that follows changes
        # nothing: the mode is already that.
        if not self.private:
            await self.adapter.toggle_status(self.context, "pending" if event.state == "returned" else "open")

    async def typing(self, on: bool) -> bool:
        if self.private and on:
            return False  # agents see notes, not a typing customer-side
        status = "on" if on else "off"
        try:
            await self.adapter.api("POST", self.context, "toggle_typing_status", json={"typing_status": status})
            return True
        except httpx.HTTPError as exc:
            log.info("typing status %s failed: %s", status, exc)
            return False

    async def _post_answer_once(self, text: str) -> tuple[str, ...]:
        """The answer, posted once even when this replica is killed between Chatwoot's reply and the store's
        commit: the answer carries the question's id in ``content_attributes``, and a mark is stored before
        posting. Chatwoot sends every message back to the bot's webhook; while the question is not stored as
        answered, the replica receiving our answer notes its id with the question (beside the mark, where a
        replica taking the question over looks). Chatwoot's bot token cannot list messages to check."""
        # Chatwoot sent our answer back to the bot as it does every message, and a replica noted it
        posted = next((p[len(POSTED):] for p in self.context.previous if p.startswith(POSTED)), None)
        if posted:
            log.info("the answer was posted before (a replica stopped, or its request hung): not posted again")
            return AlreadySent((posted,))
        await self.context.remember((POSTING,))
        return await self._post(text, attributes={ANSWER_MARK: self.context.message_id})

    async def _post(self, text: str, *, files: list[FileReply] | None = None,
                    attributes: dict[str, Any] | None = None) -> tuple[str, ...]:
        if files:
            form = {"content": text, "message_type": "outgoing", "private": "true" if self.private else "false"}
            response = await self.adapter.api(
                "POST", self.context, "messages", data=form,
                files=[("attachments[]", (f.filename, f.data, f.mime)) for f in files])
        else:
            body: dict[str, Any] = {"content": text, "message_type": "outgoing", "private": self.private}
            if attributes:
                body["content_attributes"] = attributes
            response = await self.adapter.api("POST", self.context, "messages", json=body)
        message_id = response.json().get("id") if response.content else None
        return (str(message_id),) if message_id is not None else ()


class ChatwootAdapter(PlatformAdapter[ChatwootSettings]):
    """See the module docstring. Built by ``serve`` when ``adapters.chatwoot.enabled``."""

    name = PLATFORM

    def __init__(self, manager: ConversationManager, settings: Settings, conf: ChatwootSettings, *,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(manager, settings, conf)
        self.base_url = self.setting(conf.base_url, "base_url", "your Chatwoot (https://chatwoot.example.com)")
        self.base_url = self.base_url.rstrip("/")
        require_https(self.base_url, "adapters.chatwoot.base_url", "the agent bot's access token (api_access_token)")
        self.token = self.secret(conf.bot_token_env, "the agent bot's access token")
        self.verify = self._verifier(conf)
        self.guard = UrlGuard(conf.allow_private_networks, setting="adapters.chatwoot.allow_private_networks")
        # a reply that hangs past 10 s counts as failed (the outbox sends it again); uploads may write longer
        self.http = self.http_client(http, timeout=httpx.Timeout(10.0, connect=5.0, write=30.0),
                                     follow_redirects=False)
        self.assist = {str(i) for i in conf.agent_assist_inboxes}
        self.channel = Channel(PLATFORM, ChatwootFetcher(self), lambda context: ChatwootSink(self, context),
                               conf.persona or None, policy=conf.policy(settings.limits), reaches_people=True,
                               endpoint=self.base_url, endpoint_setting="adapters.chatwoot.base_url",
                               # while an agent has it (open), Chatwoot's messages are not the bot's: only
                               # an agent's "pending" gives it back, so /bot is not offered
                               user_returns=False)
        manager.register(self.channel)
        self.endpoint, self.endpoint_key = self.base_url, "base_url"
        self.credential_fix = "copy the agent bot's access token from Chatwoot (Settings → Bots → your bot)"
        # conversation id -> account id, for events that do not say; conversations greeted
        self._accounts: LRUCache[str, str] = LRUCache(maxsize=CACHE_SIZE)
        self._greeted: LRUCache[str, None] = LRUCache(maxsize=CACHE_SIZE)
        self._tasks: set[asyncio.Task[None]] = set()

    def _verifier(self, conf: ChatwootSettings) -> SignedBody:
        """Fail closed: webhooks are signed with the agent bot's secret, or start-up stops — unless a lab says
        ``insecure_unsigned: true``, and then every start says so loudly."""
        secret = self.secret(conf.webhook_secret_env, "the agent bot's secret", required=False)
        if not secret and not conf.insecure_unsigned:
            raise StartupError(
                f"adapters.chatwoot: set the environment variable {conf.webhook_secret_env} to the agent bot's secret "
                "(Chatwoot ≥ 4.13 shows it with the bot's token) so webhooks are verified; for a lab with an older, "
                "unsigning Chatwoot only, set adapters.chatwoot.insecure_unsigned: true")
        if not secret:
            log.warning("adapters.chatwoot.insecure_unsigned is true and %s is not set: UNSIGNED WEBHOOKS ARE "
                        "ACCEPTED, anyone who reaches %s can post events as Chatwoot (a lab only; set the secret)",
                        conf.webhook_secret_env, WEBHOOK_PATH)
        return SignedBody(conf.webhook_secret_env, signature_header="X-Chatwoot-Signature",
                          timestamp_header="X-Chatwoot-Timestamp", delivery_header="X-Chatwoot-Delivery",
                          optional=conf.insecure_unsigned)

    # -- life cycle -------------------------------------------------------------------------

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await super().close()

    # -- serve --check -----------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """Does Chatwoot know the token? An agent bot's token may read nothing (Chatwoot lets it only act in
        conversations, and the account is not in the settings), so ``GET /api/v1/profile`` is asked: Chatwoot
        checks the token before the endpoint, and answers a known agent bot's token "not authorized for bots"
        (401), an unknown one "Invalid Access Token" (401), a user's token with the user's profile (200). Then the
        URL Chatwoot must call."""
        url = f"{self.base_url}/api/v1/profile"
        hook = CheckResult(True, PLATFORM, f"Chatwoot must POST the agent bot's events to {self.served_at(WEBHOOK_PATH)}"
                                           " (the bot's Webhook URL in Chatwoot)")
        try:
            response = await self.http.get(url, headers={"api_access_token": self.token})
        except httpx.HTTPError as exc:
            return [CheckResult(False, PLATFORM, "GET /api/v1/profile: " + unreachable(
                url, exc, "check adapters.chatwoot.base_url and the network")), hook]
        said = platform_said(response, "error", "errors")
        env = self.conf.bot_token_env
        if response.status_code == 200:
            user = response.json() if "json" in response.headers.get("content-type", "") else {}
            name = user.get("name", "?") if isinstance(user, dict) else "?"
            return [CheckResult(True, PLATFORM, f"GET {url}: {env} is the user {name!r}'s access token, not an agent "
                                                "bot's: answers will show as that user, and a handoff is not the "
                                                "bot's (use the agent bot's token for an Agent Bot)"), hook]
        if response.status_code == 401 and "not authorized for bots" in said:
            return [CheckResult(True, PLATFORM, f"GET {url}: Chatwoot knows the agent bot token in {env} ({said}, as "
                                                "for every agent bot: it may only act in conversations)"), hook]
        if response.status_code == 401:
            return [CheckResult(False, PLATFORM, f"GET {url}: Chatwoot said {said} — set {env} to the agent bot's "
                                                 "access token (Settings → Bots, or the Platform API that made it)"),
                    hook]
        return [CheckResult(False, PLATFORM, f"GET {url}: {said}, not Chatwoot's API — check adapters.chatwoot.base_url "
                                             "(the installation's root, e.g. https://chatwoot.example.com)"), hook]

    def router(self) -> APIRouter:
        async def webhook(request: Request) -> Response:
            """Verified, run once per signed request and delivery id (a repeat of an accepted one: 200, nothing
            done); stored, then 200 at once (the answer follows)."""
            return await self.verify.once(request, self._webhook)

        r = APIRouter()
        r.add_api_route(WEBHOOK_PATH, webhook, methods=["POST"], include_in_schema=False)
        return r

    async def _webhook(self, body: bytes) -> Response:
        if not self.accepting:
            return self.restarting(500)  # Chatwoot's job retries a 500 (and a 429), never a 503
        try:
            data = parse_json_object(body, what="the event")
        except BadRequest:
            return Response(status_code=200)  # nothing usable; an error would open the conversation
        try:
            outcome = await self.handle(data)
        except ShuttingDown:
            return JSONResponse({"error": "restarting"}, status_code=500)  # Chatwoot retries a 500
        log.debug("chatwoot %s: %s", data.get("event"), outcome)
        return Response(status_code=200)

    # -- REST -------------------------------------------------------------------------------

    async def api(self, method: str, context: SinkContext, action: str, **kwargs: Any) -> httpx.Response:
        account = context.route.get("account") or context.key.chat
        url = f"{self.base_url}/api/v1/accounts/{account}/conversations/{context.key.thread}/{action}"
        response = await self.http.request(method, url, headers={"api_access_token": self.token}, **kwargs)
        response.raise_for_status()
        return response

    async def toggle_status(self, context: SinkContext, status: str) -> None:
        """``open`` hands the conversation to agents (Chatwoot then runs its own bot handoff)."""
        try:
            await self.api("POST", context, "toggle_status", json={"status": status})
        except httpx.HTTPError as exc:
            log.error("toggling conversation %s to %s failed: %s", context.key, status, exc)

    # -- webhook ----------------------------------------------------------------------------

    def _key(self, account: Any, conversation: Any) -> ConversationKey:
        return ConversationKey(PLATFORM, str(account), str(conversation))

    async def handle(self, data: dict[str, Any]) -> str:
        """One event; returns what was done (for the log and tests)."""
        event = str(data.get("event") or "")
        if event == "message_created":
            return await self._message(data)
        if event == "message_updated" and data.get("content_type") == "input_csat":
            return await self._csat(data)
        if event in ("conversation_status_changed", "conversation_opened", "conversation_resolved"):
            return await self._status(event, data)
        if event == "webwidget_triggered":
            return await self._greet(data)
        return "ignored"

    async def _greet(self, data: dict[str, Any]) -> str:
        """The customer opened the web widget: the persona's greeting, in the widget's language, once — only in
        a pending conversation that has no messages yet (the widget fires this on every page load)."""
        conversation = data.get("current_conversation")
        account = (data.get("account") or {}).get("id") if isinstance(data.get("account"), dict) else None
        if not isinstance(conversation, dict) or account is None or conversation.get("id") is None:
            return "ignored: no conversation yet"
        inbox = str(conversation.get("inbox_id") or (data.get("inbox") or {}).get("id") or "")
        key = self._key(account, conversation["id"])
        contact = data.get("contact") if isinstance(data.get("contact"), dict) else {}
        if not self.channel.policy.allows(str(contact.get("id", "")), {str(account)}):
            return "ignored: not allowed"
        if inbox in self.assist or conversation.get("status") != "pending" or conversation.get("messages") \
                or str(key) in self._greeted:
            return "ignored: nothing to greet"
        self._greeted[str(key)] = None
        info = data.get("event_info") if isinstance(data.get("event_info"), dict) else {}
        lang = i18n.normalize_code(str(info.get("widget_language") or info.get("browser_language") or ""))
        lang = lang if lang in i18n.UI_LANGUAGES else self.settings.conversation.default_language
        persona = self.manager.persona_for(await self.manager.store.conversation(key), self.channel)
        context = SinkContext(key=key, route={"account": str(account), "inbox": inbox})
        self._background(ChatwootSink(self, context).emit(Notice(persona.greeting_for(lang))), "greeting")
        return "greeting"

    def _background(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Work the webhook must not wait for (Chatwoot gives 5 s), kept until done, errors logged."""
        async def run() -> None:
            try:
                await work
            except Exception as exc:
                log.warning("chatwoot %s failed: %s", what, exc)

        task = asyncio.create_task(run(), name=f"chatwoot {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _message(self, data: dict[str, Any]) -> str:
        conversation = data.get("conversation") if isinstance(data.get("conversation"), dict) else {}
        inbox = data.get("inbox") if isinstance(data.get("inbox"), dict) else {}
        account = (data.get("account") or {}).get("id") if isinstance(data.get("account"), dict) else None
        conv_id, message_id = conversation.get("id"), data.get("id")
        if account is None or conv_id is None or message_id is None:
            return "ignored: incomplete"
        self._accounts[str(conv_id)] = str(account)
        if data.get("message_type") == "outgoing" and await self._posted_answer(data, self._key(account, conv_id)):
            return "noted: an answer posted"
        inbox_id = str(inbox.get("id") or conversation.get("inbox_id") or "")
        assist = inbox_id in self.assist
        sender = data.get("sender") if isinstance(data.get("sender"), dict) else {}
        if assist and data.get("message_type") == "outgoing" and not data.get("private") \
                and sender.get("type") == "user":
            # an agent answered the customer: what became of the bot's draft
            await self.manager.feedback.draft_used(self._key(account, conv_id), str(data.get("content") or ""),
                                                   user=str(sender.get("id", "")))
            return "noted: an agent's reply"
        if data.get("message_type") != "incoming" or data.get("private"):
            return "ignored: not the customer's"  # agents' messages, private notes, our own replies
        if not assist and conversation.get("status") != "pending":
            return "ignored: a person has it"
        key = self._key(account, conv_id)
        if not assist:
            conv = await self.manager.store.conversation(key)
            if conv.mode == "human":  # handed off by us and not yet given back: Chatwoot says pending again
                await self.manager.set_mode(key, "bot", by="chatwoot")
        attributes = conversation.get("additional_attributes") or {}
        locale = attributes.get("browser_language") if isinstance(attributes, dict) else None
        attachments = tuple(
            Attachment(str(a.get("data_url") or ""), f"{a.get('file_type', 'file')}-{a.get('id', '')}"
                       + (f".{a['extension']}" if a.get("extension") else ""),
                       {"image": "image/*", "video": "video/*", "audio": "audio/*"}.get(str(a.get("file_type")), ""),
                       a.get("file_size") if isinstance(a.get("file_size"), int) else None)
            for a in data.get("attachments") or [] if isinstance(a, dict) and a.get("data_url"))
        route = {"account": str(account), "inbox": inbox_id}
        if assist:
            route["assist"] = "1"
        conversation_var.set(str(key))
        await self.manager.submit(IncomingMessage(
            key=key, sender=Sender(str(sender.get("id", "")), str(sender.get("name", ""))),
            text=str(data.get("content") or ""), attachments=attachments, locale=locale,
            event_id=f"message:{message_id}", message_id=str(message_id), is_direct=True, route=route, raw=data))
        return "stored"

    async def _posted_answer(self, data: dict[str, Any], key: ConversationKey) -> bool:
        """Our own answer, back from Chatwoot: note with the question which Chatwoot message answers it, so
        the answer is not posted twice — by a replica taking over from one that died before the store's
        commit, or by the outbox sending again an answer whose first send timed out after Chatwoot took it."""
        attributes = data.get("content_attributes")
        mark = attributes.get(ANSWER_MARK) if isinstance(attributes, dict) else None
        if not isinstance(mark, int) or isinstance(mark, bool) or mark <= 0:
            return False
        store = self.manager.store
        try:
            question = await store.message(mark)
        except KeyError:
            return False
        # "answered": stored before Chatwoot took it (the outbox sends it again, and must see it arrived)
        if question.key != key or question.state not in ("received", "answering", "answered"):
            return False
        await store.set_drafts(mark, (POSTING, f"{POSTED}{data.get('id')}"))
        return True

    async def _status(self, event: str, data: dict[str, Any]) -> str:
        conv_id = data.get("id")
        status = data.get("status") or {"conversation_opened": "open", "conversation_resolved": "resolved"}.get(event)
        messages = data.get("messages") if isinstance(data.get("messages"), list) else []
        account = next((m.get("account_id") for m in messages if isinstance(m, dict) and m.get("account_id")), None)
        account = account or self._accounts.get(str(conv_id))
        if conv_id is None or account is None:
            return "ignored: which conversation?"
        key = self._key(account, conv_id)
        if status == "resolved" and str(data.get("inbox_id") or "") in self.assist:
            await self.manager.feedback.draft_used(key, None)  # closed without the draft (if not judged yet)
        if status == "pending":
            await self.manager.set_mode(key, "bot", by="chatwoot")
        elif status in ("open", "snoozed"):
            await self.manager.set_mode(key, "human", by="chatwoot")
        return f"mode for {status}"

    async def _csat(self, data: dict[str, Any]) -> str:
        """The customer answered the CSAT survey (see the module docstring)."""
        attributes = data.get("content_attributes") if isinstance(data.get("content_attributes"), dict) else {}
        submitted = attributes.get("submitted_values") if isinstance(attributes.get("submitted_values"), dict) else {}
        response = submitted.get("csat_survey_response")
        conversation = data.get("conversation") if isinstance(data.get("conversation"), dict) else {}
        account = (data.get("account") or {}).get("id") if isinstance(data.get("account"), dict) else None
        conv_id, survey = conversation.get("id"), data.get("id")
        if not isinstance(response, dict) or account is None or conv_id is None or survey is None:
            return "ignored: no rating"
        rating = response.get("rating")
        if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
            return "ignored: no rating"
        inbox = data.get("inbox") if isinstance(data.get("inbox"), dict) else {}
        if str(inbox.get("id") or conversation.get("inbox_id") or "") in self.assist:
            return "ignored: the agents' rating"
        asked_at = None
        with contextlib.suppress(TypeError, ValueError):
            asked_at = datetime.fromisoformat(str(data.get("created_at"))).timestamp()
        meta = conversation.get("meta") if isinstance(conversation.get("meta"), dict) else {}
        contact = meta.get("sender") if isinstance(meta.get("sender"), dict) else {}
        stored = await self.manager.feedback.rate_conversation(
            self._key(account, conv_id), "csat", str(rating), event_id=f"csat:{survey}", asked_at=asked_at,
            user=str(contact.get("id", "")), comment=str(response.get("feedback_message") or "").strip())
        return f"csat on {len(stored)} answer(s)"


build = ChatwootAdapter.build


__all__ = ["ChatwootAdapter", "ChatwootSettings", "build"]
