"""Building the prompt of one turn: the persona, the newest whole turns of history that fit the model's
context, and the current message, with the tiles of every image chosen by the budget planner.

History is read newest first, a page at a time, and reading stops as soon as the budget is full: the
cost of a turn does not grow with the length of the conversation once it outgrows the context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from bot.attachments import AttachmentResolver
from bot.budget import Item, plan
from bot.engines.base import ChatMessage, Engine, ImagePart, message_cost
from bot.errors import PromptTooLong
from bot.store import Conversation, Store, StoredMessage

#: History rows read at a time (a turn is two rows: the question and its answer).
HISTORY_PAGE = 64


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages to send, and what the user should be told about what did not fit."""

    messages: list[ChatMessage]
    reduced: int  # images of the current turn shown in less detail
    dropped: int  # images of earlier turns left out, newer than ``reported``
    reported: int  # the newest turn whose leaving out is now accounted for (message id)


class PromptBuilder:
    """See the module docstring."""

    def __init__(self, store: Store, engine: Engine, resolver: AttachmentResolver) -> None:
        self.store = store
        self.engine = engine
        self.resolver = resolver

    async def _turns(self, msg: StoredMessage, conv: Conversation,
                     page: int) -> AsyncIterator[tuple[StoredMessage, StoredMessage]]:
        """Answered turns (question, answer) of the context, newest first, read a page at a time.

        An answer is always newer than its question, so it was read on the same page or an earlier one.
        """
        before = msg.id
        answers: dict[int, StoredMessage] = {}
        while True:
            rows = await self.store.history(msg.key, since=conv.context_start, before=before, limit=page)
            for row in reversed(rows):
                if row.role == "assistant" and row.reply_to:
                    answers[row.reply_to] = row
                elif row.role == "user" and row.id in answers:
                    yield row, answers.pop(row.id)
            if len(rows) < page:
                return
            before = rows[0].id

    async def fit(self, msg: StoredMessage, conv: Conversation, system: ChatMessage, current: ChatMessage,
                  budget: int, *, reported: int = 0) -> Prompt:
        """``reported``: turns up to this message id were already accounted for in an earlier turn's note
        about images left out; reading history stops there once the budget is full."""
        engine = self.engine
        text_only = message_cost(engine, replace(current, images=(), videos=()))
        frames = sum(len(v.frames) for v in current.videos)
        fixed = message_cost(engine, system) + text_only + frames * (engine.info.tokens_per_tile + 6)
        floor = sum(engine.image_tokens(*p.size, 1) + 6 for p in current.images)
        if fixed + floor > budget:
            raise PromptTooLong(tokens=fixed + floor, limit=max(budget, 0))
        room = budget - fixed - floor
        kept: list[tuple[int, ChatMessage, ChatMessage]] = []
        dropped = 0
        newest_out = reported
        async for user, answer in self._turns(msg, conv, HISTORY_PAGE):
            if room <= 0:
                if user.id <= reported:
                    break  # older turns were accounted for before: no need to read them
                # Everything older stays out; what it showed is counted, without decoding it.
                dropped += sum(1 for a in user.attachments if a.sha256 and a.mime.startswith("image/"))
                newest_out = max(newest_out, user.id)
                continue
            user_msg = await self.resolver.history_message(user)
            reply = ChatMessage("assistant", answer.text)
            cost = message_cost(engine, replace(user_msg, images=())) + message_cost(engine, reply)
            if cost > room:  # this turn's text does not fit: it and every older turn stay out
                room = 0
                if user.id > reported:
                    dropped += len(user_msg.images)
                    newest_out = max(newest_out, user.id)
                continue
            room -= cost
            kept.append((user.id, user_msg, reply))
        history_text = budget - fixed - floor - room
        items = [Item(f"c{i}", *p.size, want=p.max_tiles, age=0) for i, p in enumerate(current.images)]
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
            messages += [replace(user_msg, images=shown), reply]
        messages.append(replace(current, images=tiles("c", current.images)))
        reduced = sum(1 for key in chosen.reduced if key.startswith("c"))
        return Prompt(messages, reduced, dropped, newest_out)
