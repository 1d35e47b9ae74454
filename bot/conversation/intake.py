"""A message on its way in: a chain of small steps, in the spirit of bolt's middleware.

:data:`STEPS` is the order, one function each; a step returns False when it has settled the message (not
for the bot, a duplicate, held for a person, refused) and the chain stops there:

1. :func:`access` — a bot's own messages and senders the adapter's policy excludes are not for the bot;
2. :func:`store` — stored before anything else happens (adapters acknowledge the platform after this),
   its event id in the same transaction: a platform's redelivery stops here;
3. :func:`comment` — the comment a 👎 asked for: stored with the rating, thanked for, not answered;
4. :func:`held` — a conversation a person has: the message waits for them (commands go on);
5. :func:`limits` — the user's usage limits and the conversation's pending limit. Refusals come before any
   change of mode, so a refused ``/human`` changes nothing (the bot would otherwise go silent);
6. :func:`handoff` — ``/human``, a request for a person in words, the persona's policy, or ``/bot``;
7. :func:`reset` — ``/reset`` drops what waited before it;
8. :func:`enqueue` — handed to the scheduler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bot.conversation.commands import parse_command
from bot.errors import BotError, InputError, TooManyPending
from bot.l10n import i18n
from bot.seams import Channel
from bot.store import Conversation, NewMessage, StoredAttachment, StoredMessage
from bot.types import IncomingMessage, Notice, cut_text

if TYPE_CHECKING:
    from bot.conversation.manager import ConversationManager

log = logging.getLogger(__name__)


@dataclass
class Arrival:
    """What the steps know of one message so far."""

    message: IncomingMessage
    channel: Channel
    command: tuple[str, str] | None = None
    conv: Conversation | None = None
    stored: StoredMessage | None = None

    @property
    def verb(self) -> str:
        return self.command[0] if self.command else ""


Step = Callable[["ConversationManager", Arrival], Awaitable[bool]]


async def access(m: ConversationManager, a: Arrival) -> bool:
    message = a.message
    if message.sender.is_bot:
        log.debug("message from the bot %s ignored", message.sender.id)
        return False
    if not a.channel.policy.admits(message):
        log.info("message from %s in %s ignored: not allowed by adapters.%s", message.sender.id, message.key.chat,
                 message.key.platform)
        return False
    return True


async def store(m: ConversationManager, a: Arrival) -> bool:
    message = a.message
    if len(message.text) > m.conf.max_message_chars:
        # refused when its turn comes; the store keeps at most the limit (a 19 MB paste is not history)
        a.message = message = replace(message, text=cut_text(message.text, m.conf.max_message_chars))
    a.command = parse_command(message.text, a.channel.command_prefixes)
    a.conv = await m.store.conversation(message.key)
    held = a.conv.mode == "human" and not a.command
    new = NewMessage(
        role="user", text=message.text, kind="command" if a.command else "chat",
        state="held" if held else "received", attachments=message.attachments, sender_id=message.sender.id,
        sender_name=message.sender.name, locale=message.locale, platform_message_id=message.message_id,
        event_id=message.event_id, route=message.route,
    )
    mid = await m.store.add_incoming(message.key, new)
    if mid is None:
        log.debug("duplicate event %s from %s ignored", message.event_id, message.key.platform)
        return False
    m.metrics.adapter(message.key.platform).messages_in.inc()
    if message.sender.name and message.sender.name != a.conv.name:
        # the operator inbox names the person as their platform does now (a write only when the name changes)
        a.conv = await m.store.update_conversation(message.key, name=message.sender.name)
    a.stored = StoredMessage(
        id=mid, key=message.key, role="user", kind=new.kind, text=message.text, state=new.state,
        attachments=tuple(StoredAttachment(i, att.ref, att.filename, att.mime, att.size)
                          for i, att in enumerate(message.attachments)),
        sender_id=message.sender.id, sender_name=message.sender.name, locale=message.locale,
        platform_message_id=message.message_id, route=message.route,
    )
    m.track(mid, time.monotonic())
    return True


async def comment(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    key, user = a.message.key, a.message.sender.id
    if not m.feedback.awaits_comment(key, user):
        return True
    if a.command or a.message.attachments:  # the user went on with something else: it is handled as usual
        await m.feedback.forget_comment(key, user)
        return True
    if not await m.feedback.take_comment(key, user, a.message.text):
        return True
    mid = a.stored.id
    await m.store.set_state(mid, "comment")
    m.untrack_arrival(mid)
    lang = await m.languages.language_for(a.stored)

    async def thank() -> None:
        # settled once thanked, not here: ``submit`` still has to hand out the receipt of this message
        try:
            await m.deliver_notice(key, Notice(i18n.text("feedback_comment_thanks", lang)))
        finally:
            m.settle(mid, "comment")

    m.desk.spawn(thank())
    return False


async def held(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    if a.stored.state != "held":
        return True
    mid = a.stored.id
    m.untrack_arrival(mid)
    m.desk.hold(a.stored, a.channel, await m.languages.language_for(a.stored), lambda: m.settle(mid, "held"))
    return False


async def limits(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    refusal: BotError | None = None
    try:
        await m.usage.admit_message(f"{a.message.key.platform}:{a.message.sender.id}", a.channel.policy.limits)
    except InputError as exc:
        refusal = exc
    if refusal is None and a.verb != "reset" and (
            depth := await m.depth(a.message.key, a.stored.id)) >= m.conf.max_pending_per_conversation:
        refusal = TooManyPending(count=depth)
    if refusal is not None:
        m.refuse(a.stored, a.channel, refusal)
        return False
    return True


async def handoff(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    assert a.conv is not None
    wants_human = a.verb == "human" or (
        not a.command and m.wants_person(a.message.text, a.conv, a.channel) is not None)
    if (wants_human and m.desk.available(a.channel)) or a.verb == "bot":
        await m.desk.switch_at_intake(a.stored.id, a.conv, "human" if wants_human else "bot")
    return True


async def reset(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    if a.verb == "reset":
        for queued in await m.scheduler.cancel(a.message.key):
            if queued.id >= a.stored.id:
                continue  # the /reset itself, and what came after it (another replica's intake)
            await m.store.finish(queued.id, "cancelled", error="cancelled by /reset")
            m.settle(queued.id, "cancelled")
    return True


async def enqueue(m: ConversationManager, a: Arrival) -> bool:
    assert a.stored is not None
    m.scheduler.submit(a.stored)
    return True


STEPS: tuple[Step, ...] = (access, store, comment, held, limits, handoff, reset, enqueue)


__all__ = ["STEPS", "Arrival", "Step"]
