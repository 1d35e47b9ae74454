"""One turn: a stored user message being processed, the channel it came from, its answer language, and
the one relay (and so the one sink) every reply event of the turn goes through."""

from __future__ import annotations

from dataclasses import dataclass

from bot.relay import Relay
from bot.store import Store, StoredMessage
from bot.types import Channel, Notice, ReplyEvent, platform_ids


@dataclass(eq=False)
class Turn:
    msg: StoredMessage
    channel: Channel
    lang: str
    relay: Relay
    store: Store
    finished: bool = False

    async def say(self, event: ReplyEvent) -> tuple[str, ...]:
        """Send ``event`` (in order, after any text streamed so far); the platform ids it got."""
        return platform_ids(await self.relay.send(event))

    async def reply(self, event: Notice | ReplyEvent, *, kind: str = "command", state: str = "answered",
                    error: str | None = None) -> None:
        """Send a complete reply (a command's answer, a refusal) and store it as the message's reply."""
        text = getattr(event, "text", "")
        try:
            ids = await self.say(event)
        except Exception:
            ids = ()
            if state == "answered":
                raise
        await self.store.finish(self.msg.id, state, reply=text, kind=kind,  # type: ignore[arg-type]
                                reply_platform_ids=ids, error=error)
        self.finished = True
