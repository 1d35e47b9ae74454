"""What is sent to a conversation outside any turn — an operator's reply, a handoff's update, a notice — stored
first as a notice (an operator's words are never lost), then sent on a sink of its own, or kept in the outbox:
behind earlier replies still waiting there, or when the platform is away for a while. The conversation manager
holds one (``manager.courier``); the handoff desk delivers through it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.conversation.outbox import NOT_DELIVERED, Outbox
from bot.conversation.relay import MeteredSink
from bot.ops.metrics import Metrics
from bot.seams import Channel
from bot.store import NewMessage, Store
from bot.types import ConversationKey, ReplyEvent, SinkContext, platform_ids

log = logging.getLogger(__name__)


class Courier:
    """See the module docstring. ``channel_of``: the manager's channel of a platform; ``default_language``:
    the language of a conversation that never had one."""

    def __init__(self, store: Store, outbox: Outbox, metrics: Metrics, channel_of: Callable[[str], Channel],
                 default_language: str) -> None:
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.channel_of = channel_of
        self.default_language = default_language

    async def deliver(self, key: ConversationKey, event: ReplyEvent) -> int:
        """Send an event to a conversation outside any turn and store it as a notice; its message id."""
        channel = self.channel_of(key.platform)
        route: dict[str, str] = {}
        for row in reversed(await self.store.transcript(key, limit=20)):
            if row.role == "user":
                route = dict(row.route)
                break
        conv = await self.store.conversation(key)
        lang = conv.language or conv.last_language or self.default_language
        text = getattr(event, "text", "")
        author = getattr(event, "author", "") or ""
        row = await self.store.add_message(key, NewMessage(  # stored first: an operator's words are never lost
            role="assistant", text=text, kind="notice", state="answered", sender_name=author))
        context = SinkContext(key=key, route=route, language=lang, reply_row=row)
        if self.outbox.maybe_waiting(key) and await self.outbox.waiting(key):
            await self.outbox.keep(key, event, row=row, context=context)  # in order, behind earlier replies
            return row
        sink = MeteredSink(channel.sink_for(context), self.metrics, key.platform, time.monotonic())
        try:
            await self.store.set_platform_ids(row, platform_ids(await sink.emit(event)))
        except Exception as exc:
            wait = channel.retry_after(exc)
            if wait is not None:
                await self.outbox.keep(key, event, row=row, context=context, error=exc, wait=wait)
            else:
                log.error("delivering %s to %s failed for good: %s", type(event).__name__, key, exc)
                await self.store.set_state(row, "failed", error=f"{NOT_DELIVERED}: {type(exc).__name__}: {exc}"[:500])
                self.metrics.adapter(key.platform).delivery_failed.inc()
        return row
