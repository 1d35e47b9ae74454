"""Per-user limits: messages per minute and per day, images and video seconds per day.

Counted in the store (sliding windows), so a restart forgets nothing. A user over a limit gets a polite
answer in their language that says when they can continue.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

from bot.errors import UsageLimitReached
from bot.seams import UsageLimits
from bot.store import Store

MINUTE = 60.0
DAY = 86400.0


class UsageGuard:
    """Checks and counts one user's usage against :class:`~bot.types.UsageLimits`."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        # check-then-count is one step per user in this process (a store with real awaits in between would
        # let a burst through otherwise); weak values: a user's lock goes when nobody holds or waits for it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, user: str) -> asyncio.Lock:
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = asyncio.Lock()
        return lock

    async def _check(self, user: str, kind: str, amount: float, limit: float, window: float, key: str) -> None:
        if not limit:
            return
        now = self.clock()
        used, oldest = await self.store.usage(user, kind, now - window)
        if used + amount > limit:
            wait = (oldest + window - now) if oldest is not None else window
            raise UsageLimitReached(key, limit=int(limit) if float(limit).is_integer() else limit, wait=max(1.0, wait))

    async def admit_message(self, user: str, limits: UsageLimits) -> None:
        """Raise :class:`UsageLimitReached` when ``user`` may not send another message now; else count it."""
        if not (limits.messages_per_minute or limits.messages_per_day) or user in limits.exempt:
            return
        async with self._lock(user):
            await self._check(user, "message", 1, limits.messages_per_minute, MINUTE, "rate_limited_minute")
            await self._check(user, "message", 1, limits.messages_per_day, DAY, "rate_limited_day")
            await self.store.record_usage(user, "message", 1, self.clock())

    async def admit_media(self, user: str, limits: UsageLimits, *, images: int, video_seconds: float) -> None:
        """The same for the images and video seconds of one message, once they are known."""
        counted = (images and limits.images_per_day) or (video_seconds and limits.video_seconds_per_day)
        if not counted or user in limits.exempt:
            return  # nothing to check or count (most messages: text only)
        async with self._lock(user):
            if images and limits.images_per_day:
                await self._check(user, "image", images, limits.images_per_day, DAY, "images_limited_day")
            if video_seconds and limits.video_seconds_per_day:
                await self._check(user, "video", video_seconds, limits.video_seconds_per_day, DAY,
                                  "video_limited_day")
            now = self.clock()
            if images and limits.images_per_day:
                await self.store.record_usage(user, "image", images, now)
            if video_seconds and limits.video_seconds_per_day:
                await self.store.record_usage(user, "video", video_seconds, now)
