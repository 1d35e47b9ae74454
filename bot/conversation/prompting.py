"""Building the prompt of one turn: the persona, the newest whole turns of history that fit the model's
context, and the current message, with the tiles of every image chosen by the budget planner.

History is read newest first, a page at a time, and reading stops as soon as the budget is full; the
turns that fitted are kept for the conversation's next turn, which then reads only its own new rows: the
cost of a turn does not grow with the length of the conversation once it outgrows the context.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from bot.engines.base import ChatMessage, Engine, ImagePart, message_cost
from bot.errors import PromptTooLong
from bot.media.attachments import AttachmentResolver
from bot.media.budget import Item, plan
from bot.store import Conversation, Store, StoredMessage
from bot.types import ConversationKey

#: History rows read at a time (a turn is two rows: the question and its answer).
HISTORY_PAGE = 128
#: Conversations whose newest turns are kept in memory between their turns.
WINDOWS = 512


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages to send, and what the user should be told about what did not fit."""

    messages: list[ChatMessage]
    reduced: int  # images of the current turn shown in less detail
    dropped: int  # images of earlier turns left out, newer than ``reported``
    reported: int  # the newest turn whose leaving out is now accounted for (message id)
    reduced_pages: int = 0  # pages of the current turn's documents read in less detail
    tokens: int = 0  # the prompt's tokens as the budget planner counted them
    sources_dropped: int = 0  # a knowledge base's pages left out (their passages' text stays)


@dataclass(eq=False)
class _Turn:
    user: StoredMessage
    answer: StoredMessage
    message: ChatMessage | None = None  # the question as the model sees it, kept for turns without files


@dataclass(eq=False)
class _Window:
    """The newest turns of one conversation's context, kept between its turns (newest first)."""

    since: int  # the context start they were read for
    before: int  # questions older than this were read
    turns: list[_Turn] = field(default_factory=list)
    floor: int | None = None  # rows older than this were not read; None: nothing read yet
    complete: bool = False  # nothing older is left in the context
    orphans: dict[int, StoredMessage] = field(default_factory=dict)  # answers whose question is below floor


class PromptBuilder:
    """See the module docstring. The newest turns of recent conversations are kept between turns
    (:data:`WINDOWS` conversations), so a turn reads only what is new."""

    def __init__(self, store: Store, engine: Engine, resolver: AttachmentResolver) -> None:
        self.store = store
        self.engine = engine
        self.resolver = resolver
        self._windows: OrderedDict[ConversationKey, _Window] = OrderedDict()

    def forget(self, key: ConversationKey | None = None) -> None:
        """Drop what is kept of a conversation (every conversation for None): it was deleted or purged."""
        if key is None:
            self._windows.clear()
        else:
            self._windows.pop(key, None)

    def _window(self, msg: StoredMessage, conv: Conversation) -> _Window:
        window = self._windows.get(msg.key)
        if window is None or window.since != conv.context_start or window.before > msg.id:
            window = _Window(conv.context_start, msg.id)
        self._windows[msg.key] = window
        self._windows.move_to_end(msg.key)
        while len(self._windows) > WINDOWS:
            self._windows.popitem(last=False)
        return window

    @staticmethod
    def _pair(rows: list[StoredMessage], answers: dict[int, StoredMessage]) -> list[_Turn]:
        """Turns among ``rows`` (oldest first), newest first; answers whose question is not among them wait
        in ``answers`` (an answer is always newer than its question)."""
        turns = []
        for row in reversed(rows):
            if row.role == "assistant" and row.reply_to:
                answers[row.reply_to] = row
            elif row.role == "user" and row.id in answers:
                turns.append(_Turn(row, answers.pop(row.id)))
        return turns

    async def _turns(self, msg: StoredMessage, conv: Conversation, window: _Window,
                     page: int) -> AsyncIterator[_Turn]:
        """Answered turns of the context, newest first: what the window holds, then older ones read from
        the store a page at a time (and added to the window)."""
        if window.before < msg.id and window.floor is not None:
            # Only what is new since the last turn: its question and answer, typically two rows.
            fresh = await self.store.history(msg.key, since=max(conv.context_start, window.before), before=msg.id)
            window.turns[:0] = self._pair(fresh, {})
        window.before = msg.id
        for turn in list(window.turns):
            yield turn
        while not window.complete:
            rows = await self.store.history(msg.key, since=conv.context_start, before=msg.id, limit=page,
                                            upto=window.floor)
            if rows:
                window.floor = rows[0].id
            if len(rows) < page:
                window.complete = True
            older = self._pair(rows, window.orphans)
            window.turns.extend(older)
            for turn in older:
                yield turn
        if window.floor is None:
            window.floor = msg.id

    @staticmethod
    def _keep(window: _Window, used: int) -> None:
        """Keep the ``used`` newest turns (what this turn walked through); forget older ones."""
        if len(window.turns) <= used:
            return
        kept, dropped = window.turns[:used], window.turns[used:]
        floor = min(t.user.id for t in kept) if kept else window.before
        for turn in dropped:
            if turn.answer.id >= floor:
                window.orphans[turn.user.id] = turn.answer
        window.orphans = {q: a for q, a in window.orphans.items() if a.id >= floor}
        window.turns, window.floor, window.complete = kept, floor, False

    async def _question(self, turn: _Turn) -> ChatMessage:
        if turn.message is not None:
            return turn.message
        message = await self.resolver.history_message(turn.user)
        if not turn.user.attachments:
            turn.message = message
        return message

    async def fit(self, msg: StoredMessage, conv: Conversation, system: ChatMessage, current: ChatMessage,
                  budget: int, *, reported: int = 0) -> Prompt:
        """``reported``: turns up to this message id were already accounted for in an earlier turn's note
        about images left out; reading history stops there once the budget is full."""
        engine = self.engine
        text_only = message_cost(engine, replace(current, videos=()), images=False)
        frames = sum(len(v.frames) for v in current.videos)
        fixed = message_cost(engine, system) + text_only + frames * (engine.info.tokens_per_tile + 6)
        # a knowledge base's pages may be left out (bot/media/budget.py): only the user's own images must fit
        floor = sum(engine.image_tokens(*p.size, 1) + 6 for p in current.images if not _is_source(p))
        if fixed + floor > budget:
            raise PromptTooLong(tokens=fixed + floor, limit=max(budget, 0))
        kept, room, dropped, newest_out = await self._history(msg, conv, budget - fixed - floor, reported)
        history_text = budget - fixed - floor - room
        items = [Item(f"c{i}", *p.size, want=p.max_tiles, age=0, optional=_is_source(p))
                 for i, p in enumerate(current.images)]
        for age, (_, user_msg, _) in enumerate(kept, start=1):
            items += [Item(f"h{age}.{i}", *p.size, want=p.max_tiles, age=age) for i, p in enumerate(user_msg.images)]
        chosen = plan(items, budget - fixed - history_text, tokens_per_tile=engine.info.tokens_per_tile)
        if not chosen.fits:
            raise PromptTooLong(tokens=fixed + history_text + chosen.tokens, limit=max(budget, 0))

        def tiles(prefix: str, parts: tuple[ImagePart, ...]) -> tuple[ImagePart, ...]:
            return tuple(replace(p, max_tiles=chosen.tiles[f"{prefix}{i}"]) for i, p in enumerate(parts)
                         if chosen.tiles[f"{prefix}{i}"] > 0)

        messages = [system]
        for age, (mid, user_msg, reply) in reversed(list(enumerate(kept, start=1))):
            shown = tiles(f"h{age}.", user_msg.images)
            if len(shown) < len(user_msg.images) and mid > reported:
                dropped += len(user_msg.images) - len(shown)
                newest_out = max(newest_out, mid)
            messages += [replace(user_msg, images=shown) if shown != user_msg.images else user_msg, reply]
        messages.append(replace(current, images=tiles("c", current.images)))
        current_reduced = [int(key[1:]) for key in chosen.reduced if key.startswith("c")]
        pages = sum(1 for i in current_reduced if current.images[i].label.startswith("Page"))
        # a knowledge base's pages are the bot's own reading, not the user's images: no note about them
        sources = sum(1 for i in current_reduced if _is_source(current.images[i]))
        # ...but leaving one out is said, as for the user's images: the answer rests on its text alone
        sources_dropped = sum(1 for key in chosen.dropped if key.startswith("c"))
        return Prompt(messages, len(current_reduced) - pages - sources, dropped, newest_out, pages,
                      tokens=fixed + history_text + chosen.tokens, sources_dropped=sources_dropped)

    async def _history(self, msg: StoredMessage, conv: Conversation, room: int, reported: int) \
            -> tuple[list[tuple[int, ChatMessage, ChatMessage]], int, int, int]:
        """The turns before ``msg`` whose text fits ``room`` tokens, newest first (question id, question,
        answer); the room left; and the images of the turns left out that were not ``reported`` before, with the
        newest of their question ids."""
        engine = self.engine
        kept: list[tuple[int, ChatMessage, ChatMessage]] = []
        dropped = 0
        newest_out = reported
        window = self._window(msg, conv)
        fitted = 0  # turns walked while there was room: what the next turn will want again
        async for turn in self._turns(msg, conv, window, HISTORY_PAGE):
            user, answer = turn.user, turn.answer
            if room > 0:
                fitted += 1
            if room <= 0:
                if user.id <= reported:
                    break  # older turns were accounted for before: no need to read them
                # Everything older stays out; what it showed is counted, without decoding it.
                dropped += sum(1 for a in user.attachments if a.sha256 and a.mime.startswith("image/"))
                newest_out = max(newest_out, user.id)
                continue
            user_msg = await self._question(turn)
            reply = ChatMessage("assistant", answer.text)
            cost = message_cost(engine, user_msg, images=False) + message_cost(engine, reply)
            if cost > room:  # this turn's text does not fit: it and every older turn stay out
                room = 0
                if user.id > reported:
                    dropped += len(user_msg.images)
                    newest_out = max(newest_out, user.id)
                continue
            room -= cost
            kept.append((user.id, user_msg, reply))
        self._keep(window, fitted + 1)
        return kept, room, dropped, newest_out


def _is_source(part: ImagePart) -> bool:
    """A knowledge base's page or picture (bot/knowledge/reader.py labels them ``Source [k]…``)."""
    return part.label.startswith("Source [")
