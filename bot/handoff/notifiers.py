"""Human handoff: the seam through which a conversation is passed to a person.

When a user asks for a human (the web chat's button, ``/human``, or a plain request such as "I want
to talk to a person"), the manager puts the conversation in the *human* mode, stops answering it and
emits a :class:`HandoffEvent` to a :class:`Notifier`. Messages the user sends while waiting are
emitted too (``kind="message"``), so whoever picks the conversation up sees them. Helpdesk adapters
plug in here later; what ships now is a log line and an HMAC-signed webhook.

Webhook protocol (``handoff.webhook_url``): ``POST`` of the event as JSON with headers
``X-InternVL-Bot-Timestamp: <unix seconds>`` and
``X-InternVL-Bot-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>``.
Receivers recompute the HMAC and reject stale timestamps. Delivery is retried with back-off on
connection errors and 5xx in the background; it never delays the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import deque
from collections.abc import Sequence

import httpx

from bot.seams import Notifier
from bot.types import HandoffEvent

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-InternVL-Bot-Signature"
TIMESTAMP_HEADER = "X-InternVL-Bot-Timestamp"


class LogNotifier:
    """Writes one log line per event (always on)."""

    reaches_people = False

    async def notify(self, event: HandoffEvent) -> None:
        log.info("handoff %s: conversation %s (%s, %s)%s", event.kind, event.conversation, event.platform,
                 event.language, f" by {event.by}" if event.by else "")

    async def close(self) -> None:
        return None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, max_age: float = 300,
           now: float | None = None) -> bool:
    """True when ``signature`` is ours for ``body`` and the timestamp is fresh. For receivers and tests."""
    try:
        age = abs((now if now is not None else time.time()) - float(timestamp))
    except ValueError:
        return False
    return age <= max_age and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier:
    """POSTs each event, HMAC-signed, to a URL, in order, one at a time, in the background (a retried event
    is never overtaken by a later one); never raises into the caller. At most ``max_queued`` events wait;
    past that the oldest is dropped with an error line."""

    reaches_people = True

    def __init__(self, url: str, secret: str, *, client: httpx.AsyncClient | None = None, timeout: float = 10.0,
                 attempts: int = 5, backoff: float = 1.0, max_queued: int = 10_000) -> None:
        self.url = url
        self._secret = secret.encode()
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None
        self.attempts = attempts
        self.backoff = backoff
        self.max_queued = max_queued
        self._queue: deque[HandoffEvent] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.delivered = 0
        self.failed = 0

    async def notify(self, event: HandoffEvent) -> None:
        if len(self._queue) >= self.max_queued:
            dropped = self._queue.popleft()
            self.failed += 1
            log.error("handoff webhook: queue full, %s event of %s dropped", dropped.kind, dropped.conversation)
        self._queue.append(event)
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="handoff webhook")

    async def _run(self) -> None:
        try:
            while self._queue:
                await self._deliver(self._queue[0])
                self._queue.popleft()
        finally:
            if not self._queue:
                self._idle.set()

    async def _deliver(self, event: HandoffEvent) -> None:
        body = event.to_json()
        for attempt in range(1, self.attempts + 1):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                       SIGNATURE_HEADER: sign(self._secret, timestamp, body)}
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
                if response.status_code < 500 and response.status_code != 429:
                    if response.is_success:
                        self.delivered += 1
                    else:
                        self.failed += 1
                        log.error("handoff webhook refused %s event of %s: HTTP %d", event.kind, event.conversation,
                                  response.status_code)
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning("handoff webhook: %s (attempt %d/%d), retrying in %.1f s", reason, attempt, self.attempts,
                            delay)
                await asyncio.sleep(delay)
        self.failed += 1
        log.error("handoff webhook: %s event of %s not delivered after %d attempts", event.kind, event.conversation,
                  self.attempts)

    async def drain(self, wait: float = 5.0) -> None:
        """Wait for deliveries in flight (shutdown, tests)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait)

    async def close(self) -> None:
        await self.drain()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._own_client:
            await self._client.aclose()


class Notifiers:
    """Fans an event out to several notifiers; one failing does not stop the others. Adapters add their
    own at run time (a helpdesk opening the conversation to its agents, a Slack support channel)."""

    def __init__(self, notifiers: Sequence[Notifier] = ()) -> None:
        self.notifiers = list(notifiers)

    def add(self, notifier: Notifier) -> None:
        self.notifiers.append(notifier)

    @property
    def reaches_people(self) -> bool:
        return any(n.reaches_people for n in self.notifiers)

    async def notify(self, event: HandoffEvent) -> None:
        for notifier in self.notifiers:
            try:
                await notifier.notify(event)
            except Exception:
                log.exception("handoff notifier %s failed", type(notifier).__name__)

    async def close(self) -> None:
        for notifier in self.notifiers:
            try:
                await notifier.close()
            except Exception:
                log.exception("closing handoff notifier %s failed", type(notifier).__name__)
