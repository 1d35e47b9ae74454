"""Telegram albums: an album's parts arrive as separate updates, seconds apart, and become ONE message.

Each part is stashed in the store as it comes (so a restart loses none); once no part came for
``adapters.telegram.album_debounce`` seconds the album is handed over, and after a restart what the stash
holds is finished. A part that comes after its album was handed over becomes a follow-up turn saying so.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from telegram import Message, Update

from bot.errors import ShuttingDown
from bot.l10n import i18n

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter


ALBUM_BUCKET = "telegram:album:"
ALBUM_DONE = "done:"  # the pieces of an album bucket that record what was handed over
ALBUM_KEPT_S = 86_400.0  # an album bucket untouched this long is dropped (its late parts can no longer come)


class Albums:
    """The albums of one adapter being collected: a timer per album, and the hand-overs running."""

    def __init__(self, adapter: TelegramAdapter) -> None:
        self.adapter = adapter
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, message: Message, update: Update) -> None:
        """Stash one part (stored before Telegram hears it was received) and wait for the rest."""
        bucket = f"{ALBUM_BUCKET}{message.chat.id}:{message.media_group_id}"
        await self.adapter.manager.store.stash(bucket, f"{message.message_id:012d}", json.dumps(update.to_dict()))
        self.schedule(bucket)

    async def close(self) -> None:
        """Stop waiting and cancel the hand-overs running: the stash keeps their parts for the next start."""
        for handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def schedule(self, bucket: str) -> None:
        handle = self._timers.pop(bucket, None)
        if handle is not None:
            handle.cancel()
        loop = asyncio.get_running_loop()
        self._timers[bucket] = loop.call_later(self.adapter.conf.album_debounce, self._start, bucket)

    def _start(self, bucket: str) -> None:
        self._timers.pop(bucket, None)
        task = asyncio.create_task(self._flush(bucket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Albums a previous run stashed but did not finish: finished now (after the usual wait)."""
        for bucket in await self.adapter.manager.store.stashed(ALBUM_BUCKET):
            self.schedule(bucket)

    async def _flush(self, bucket: str) -> None:
        """The parts of one album: one message, its caption (from whichever part had it) and every file.

        A part that arrives after the album was handed over (Telegram spreads an album's updates over
        seconds; a redelivery comes later still) becomes a follow-up turn that says so. What was handed over
        is remembered in the bucket (``done:`` pieces, purged with the bucket after a day), so a redelivered
        part is not answered twice; only the pieces read here are dropped, never one stashed meanwhile.
        """
        store = self.adapter.manager.store
        parts = (await store.stashed(bucket)).get(bucket, [])
        done = [json.loads(payload) for item, payload in parts if item.startswith(ALBUM_DONE)]
        handled = {i for marker in done for i in marker["items"]}
        pending = sorted((item, payload) for item, payload in parts
                         if not item.startswith(ALBUM_DONE) and item not in handled)
        stale = [item for item, _ in parts if not item.startswith(ALBUM_DONE) and item in handled]
        if not pending:
            if stale:
                await store.drop_stash(bucket, stale)
            return
        updates = [Update.de_json(json.loads(payload), self.adapter.app.bot) for _, payload in pending]
        messages = [u.message for u in updates if u is not None and u.message is not None]
        marker: dict[str, Any] = {"items": [item for item, _ in pending]}
        if messages:
            marker["addressed"] = await self._submit(messages, updates[0], done)
            if marker["addressed"] is None:
                return  # shutting down: the stash stays, the next start finishes the album
        await store.stash(bucket, f"{ALBUM_DONE}{pending[0][0]}", json.dumps(marker))
        await store.drop_stash(bucket, [item for item, _ in pending] + stale)

    async def _submit(self, messages: list[Message], update: Update | None,
                            done: list[dict[str, Any]]) -> bool | None:
        """Store the album's parts as one message; whether it was for the bot (None: shutting down)."""
        captioned = next((m for m in messages if m.caption), messages[0])
        addressed, text = self.adapter.addressed(captioned)
        first = messages[0]
        event_id = f"album:{first.chat.id}:{first.media_group_id}"
        if done:  # late parts of an album already handed over: addressed as the album was
            addressed = addressed or any(marker.get("addressed") for marker in done)
            conv = await self.adapter.manager.store.conversation(self.adapter.key(first))  # the language the user writes in
            lang = conv.language or conv.last_language or i18n.normalize_code(
                first.from_user.language_code if first.from_user else None) or "en"
            text = " ".join(p for p in (i18n.text("album_late_part", lang), text) if p)
            event_id = f"{event_id}:{first.message_id}"
        if not addressed:
            return False
        attachments = [a for m in messages for a in self.adapter.attachments(m)]
        try:
            await self.adapter.manager.submit(self.adapter.incoming(captioned, text, attachments, event_id, update))
        except ShuttingDown:
            return None
        return True

