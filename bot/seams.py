"""The seams: what adapters, stores and schedulers implement, and the optional capabilities some have.

Each seam is a small :class:`typing.Protocol` with a contract test class that every implementation
subclasses (``tests/contracts.py``, ``tests/test_store.py``, ``tests/test_scheduler.py``,
``tests/test_engines.py``); in-memory implementations that double as test doubles are in
:mod:`bot.testing`. An optional capability (a store that can elect a leader among replicas or pass
events between them, a scheduler that knows about other replicas' work) is a Protocol of its own,
checked once when the part that uses it starts (``isinstance``), never probed with ``getattr``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.errors import AttachmentUnavailable, default_may_have_arrived, default_retry_after
from bot.types import (
    Attachment,
    ConversationKey,
    HandoffEvent,
    IncomingMessage,
    PlatformIds,
    ReplyEvent,
    SinkContext,
)

# ---------------------------------------------------------------------------------------------
# Replies and media: what an adapter gives the core for its platform.


@runtime_checkable
class ReplySink(Protocol):
    """Receives the reply events of one turn, in order, and renders them on the platform.

    ``emit`` returns the platform id(s) of the message(s) it created for :class:`AnswerDone`,
    :class:`Notice`, :class:`HandoffUpdate` and :class:`FileReply` (an answer may span several platform
    messages), so the store can find them again (edits, reactions, a restart).

    A sink whose ``emit`` never waits for I/O (it only hands events to in-process queues) may set a
    class attribute ``immediate = True``: the core then calls it inline instead of through a buffer.
    """

    async def emit(self, event: ReplyEvent) -> PlatformIds: ...


@runtime_checkable
class MediaFetcher(Protocol):
    """Downloads an attachment's bytes from the platform. ``limit`` is the byte cap to enforce: a file
    over it raises :class:`bot.errors.FileTooLarge` (before downloading, where the size is known); a file
    the platform cannot deliver raises :class:`bot.errors.AttachmentUnavailable`."""

    async def fetch(self, attachment: Attachment, limit: int) -> bytes: ...


class NoAttachments:
    """The :class:`MediaFetcher` of a platform that carries no files: every attachment is unavailable."""

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        raise AttachmentUnavailable("this platform carries no files", name=attachment.filename)


# ---------------------------------------------------------------------------------------------
# Access: who may use an adapter, and how much.


@dataclass(frozen=True, slots=True)
class UsageLimits:
    """Per-user limits; 0 means unlimited. ``exempt``: user ids the limits never apply to."""

    messages_per_minute: int = 0
    messages_per_day: int = 0
    images_per_day: int = 0
    video_seconds_per_day: float = 0
    exempt: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.messages_per_minute or self.messages_per_day or self.images_per_day
                    or self.video_seconds_per_day)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who an adapter serves: allowlists (empty = everyone) and denylists of users and chats, and limits.

    Ids are the platform's own (Telegram user/chat ids, Slack user/channel/team ids, helpdesk inboxes),
    compared as strings with :attr:`Sender.id` and :attr:`ConversationKey.chat` (and, for a team or
    workspace, the ``team`` entry of the message's ``route``).
    """

    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    allow_chats: frozenset[str] = frozenset()
    deny_chats: frozenset[str] = frozenset()
    limits: UsageLimits = UsageLimits()

    def admits(self, message: IncomingMessage) -> bool:
        chats = {message.key.chat}
        if team := message.route.get("team"):
            chats.add(team)
        return self.allows(message.sender.id, chats)

    def allows(self, user: str, chats: set[str]) -> bool:
        """Is ``user``, in any of ``chats`` (a chat, its team or workspace), served? Also for what the bot
        says unasked (a greeting when a panel or widget opens)."""
        if user in self.deny_users or chats & self.deny_chats:
            return False
        if self.allow_users and user not in self.allow_users:
            return False
        return not (self.allow_chats and not chats & self.allow_chats)


@dataclass(frozen=True)
class Channel:
    """What an adapter registers with the conversation manager for its platform.

    ``sink_for(context)`` builds the sink that renders one turn's replies. Registering a channel is what
    lets the manager answer messages left pending by a restart. ``command_prefixes``: what starts a
    command on this platform (Slack intercepts ``/…`` in its composer, so its adapter adds ``!``); the
    first is the one shown in help texts. ``reaches_people``: a handoff on this platform reaches people even
    without a notifier that does (a helpdesk: its agents see the conversation).
    """

    platform: str
    fetcher: MediaFetcher
    sink_for: Callable[[SinkContext], ReplySink]
    persona: str | None = None
    command_prefixes: tuple[str, ...] = ("/",)
    policy: AccessPolicy = AccessPolicy()
    #: the platform itself puts people in front of a handed-off conversation (a helpdesk's agents)
    reaches_people: bool = False
    #: the sender's locale, asked when the turn starts if the event did not carry it: a platform where it
    #: costs a network call (Slack's users.info) stores the message first and looks it up after the ack
    locale_of: Callable[[str], Awaitable[str | None]] | None = None
    #: seconds to wait before sending again after a send failed with this error (a 429, a 5xx, a timeout),
    #: or None when it would fail again: what the outbox retries (bot/conversation/outbox.py)
    retry_after: Callable[[BaseException], float | None] = default_retry_after
    #: whether a send that failed with this error may have reached the platform all the same (the outbox then
    #: sends again with ``SinkContext.resend``, for adapters that look for an earlier copy first)
    may_have_arrived: Callable[[BaseException], bool] = default_may_have_arrived
    #: where replies go (a URL without credentials) and the setting that names it: what the one line says
    #: when the platform cannot be reached (``https://chatwoot.example.com``, ``adapters.chatwoot.base_url``)
    endpoint: str = ""
    endpoint_setting: str = ""
    #: the user can take a handed-off conversation back from people (``/bot``); not where the platform keeps
    #: the user's messages from the bot while a person has it (Chatwoot), so the texts do not offer it there
    user_returns: bool = True
    #: a harmless call that shows whether the platform answers (Telegram: a "typing…" in the chat), for a
    #: platform where a kept reply cannot be its own probe: one that hangs may have arrived, and the platform
    #: cannot tell the next try (it would show twice). None: the outbox probes with the oldest kept reply.
    probe: Callable[[ConversationKey], Awaitable[object]] | None = None


# ---------------------------------------------------------------------------------------------
# Handoff: who tells people.


@runtime_checkable
class Notifier(Protocol):
    """Tells people about handoff events. ``notify`` never blocks the conversation for long (deliveries
    that can be slow run in the background) and never raises for a delivery failure.

    ``reaches_people``: True when the events reach a person who can answer (a helpdesk, a webhook, an
    operator inbox); a log line does not.
    """

    reaches_people: bool

    async def notify(self, event: HandoffEvent) -> None: ...
    async def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Optional capabilities (checked once, where they are used).


@runtime_checkable
class Elector(Protocol):
    """A store that elects one replica to run a job (PostgreSQL's advisory locks): ``elect`` runs ``lead``
    on the replica that holds ``name`` and takes over when that replica dies."""

    def elect(self, name: str, lead: Callable[[], Awaitable[None]]) -> asyncio.Task[None]: ...


@runtime_checkable
class EventPassing(Protocol):
    """A store that passes events between replicas (PostgreSQL's LISTEN/NOTIFY), in order per channel."""

    async def notify(self, channel: str, payloads: Sequence[str]) -> None: ...
    def listen(self, channel: str, callback: Callable[[str], None], *, ready: asyncio.Event | None = None) -> None: ...


@runtime_checkable
class SharedScheduling(Protocol):
    """A scheduler shared by replicas (claims in PostgreSQL): a message taken in here may be answered
    elsewhere, so the manager is told when one settles (``on_settled``), says which platforms this replica
    serves (``serves``), and asks how many messages of a conversation wait on all replicas."""

    on_settled: Callable[[int, str], None] | None
    serves: Callable[[], set[str]] | None

    async def waiting(self, key: ConversationKey, besides: int) -> int: ...


@runtime_checkable
class ImmediateSink(Protocol):
    """A sink whose ``emit`` never waits for I/O (it only hands events to in-process queues): the core
    calls it inline instead of through a buffer."""

    immediate: bool


__all__ = [
    "AccessPolicy", "Channel", "Elector", "EventPassing", "ImmediateSink", "MediaFetcher", "NoAttachments",
    "Notifier", "ReplySink", "SharedScheduling", "UsageLimits",
]
