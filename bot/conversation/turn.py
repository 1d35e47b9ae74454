"""One turn: a stored user message being processed, the channel it came from, its answer language, and
the one relay (and so the one sink) every reply event of the turn goes through."""

from __future__ import annotations

from dataclasses import dataclass

from bot.conversation.relay import Relay
from bot.seams import Channel
from bot.store import NewMessage, Store, StoredMessage
from bot.types import Notice, ReplyEvent, SinkContext, platform_ids


@dataclass(eq=False)
class Turn:
    msg: StoredMessage
    channel: Channel
    lang: str
    relay: Relay
    store: Store
    finished: bool = False
    context: SinkContext | None = None  # how its sink was built (the outbox builds another the same way)
    answer: int | None = None  # the stored answer's id, once there is one

    async def say(self, event: ReplyEvent) -> tuple[str, ...]:
        """Send ``event`` (in order, after any text streamed so far); the platform ids it got."""
        return platform_ids(await self.relay.send(event))

    async def note(self, event: Notice) -> None:
        """A note about the turn (an image looked at in less detail, a file that could not be read): stored
        with the turn, so the conversation's history shows it where it was shown live, then sent without
        holding up the turn."""
        await self.store.add_message(self.msg.key, NewMessage(role="assistant", text=event.text, kind="notice",
                                                              state="answered", reply_to=self.msg.id,
                                                              route=self.msg.route))
        await self.relay.note(event)

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
