"""Honouring a platform's rate limits instead of hitting them.

:class:`RateLimiter` puts every call of a chat (or channel) through that chat's leaky buckets and the
overall one (``aiolimiter``), and when the platform still answers "too many requests" it pauses that
chat for the time the platform asked and tries again — the call is not dropped and not made twice.

Calls waiting on one key may name their ``party`` (the user a reply is for): they then take turns between
parties, round-robin, instead of first come first served, so one user's ten threads in a channel do not
put another user's single answer behind all of theirs (the engine already served that user fairly).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiolimiter import AsyncLimiter

from bot.scheduling.scheduler import FairGate

log = logging.getLogger(__name__)
T = TypeVar("T")

#: (calls, seconds): at most ``calls`` in any ``seconds`` (a leaky bucket that allows that burst).
Rate = tuple[float, float]


class RateLimiter:
    """Per-key and overall leaky buckets, plus pauses after a platform's 429 (see the module docstring).

    ``per_key(key)`` gives the rates of one key (several apply together, e.g. 1/s and 20/min for a Telegram
    group); ``overall`` applies to every call. Keys are kept for the ``max_keys`` most recently used.
    """

    def __init__(self, per_key: Callable[[str], Sequence[Rate]], overall: Sequence[Rate] = (), *,
                 max_keys: int = 10_000, max_wait: float = 600.0) -> None:
        self._per_key = per_key
        self._overall = [AsyncLimiter(calls, period) for calls, period in overall]
        self._keys: OrderedDict[str, list[AsyncLimiter]] = OrderedDict()
        self._paused: dict[str, float] = {}
        self._paused_all = 0.0
        self._turns: dict[str, FairGate] = {}  # busy keys: one call at a time, round-robin between parties
        self.max_keys = max_keys
        self.max_wait = max_wait
        self.honoured = 0  # 429s answered by waiting and trying again

    def _limiters(self, key: str) -> list[AsyncLimiter]:
        found = self._keys.get(key)
        if found is None:
            found = self._keys[key] = [AsyncLimiter(calls, period) for calls, period in self._per_key(key)]
            while len(self._keys) > self.max_keys:
                old, _ = self._keys.popitem(last=False)
                self._paused.pop(old, None)
        else:
            self._keys.move_to_end(key)
        return found

    async def acquire(self, key: str, party: str | None = None) -> None:
        """Wait until a call for ``key`` is allowed (taking turns with other parties' calls, given ``party``)."""
        if party is None:
            await self._acquire(key)
            return
        turns = self._turns.get(key)
        if turns is None:
            turns = self._turns[key] = FairGate(1)
        await turns.acquire(party)
        try:
            await self._acquire(key)
        finally:
            turns.release(party)
            if not turns.busy and not turns.waiting:
                self._turns.pop(key, None)

    async def _acquire(self, key: str) -> None:
        while True:
            until = max(self._paused.get(key, 0.0), self._paused_all)
            delay = until - time.monotonic()
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        for limiter in self._limiters(key):
            await limiter.acquire()
        for limiter in self._overall:
            await limiter.acquire()

    def has_capacity(self, key: str, amount: float = 1) -> bool:
        """Whether ``amount`` calls for ``key`` could go now without waiting (to pick a cheaper way when not)."""
        if max(self._paused.get(key, 0.0), self._paused_all) > time.monotonic():
            return False
        return all(limiter.has_capacity(amount) for limiter in self._limiters(key)) and all(
            limiter.has_capacity(amount) for limiter in self._overall)

    def pause(self, key: str | None, seconds: float) -> None:
        """The platform asked us to wait: calls for ``key`` (every key, for None) wait ``seconds``."""
        until = time.monotonic() + max(0.0, min(seconds, self.max_wait))
        if key is None:
            self._paused_all = max(self._paused_all, until)
        else:
            self._paused[key] = max(self._paused.get(key, 0.0), until)

    async def call(self, key: str, fn: Callable[[], Awaitable[T]], *,
                   retry_after: Callable[[BaseException], float | None], attempts: int = 8,
                   limited: Callable[[BaseException], float | None] | None = None, network_attempts: int = 2,
                   party: str | None = None) -> T:
        """``await fn()`` within the limits of ``key``. When it raises and ``retry_after(exc)`` gives a
        number of seconds (a 429), wait that long and call again, up to ``attempts`` times in all.

        With ``limited`` (which says which errors are the platform's rate limits), other errors that
        ``retry_after`` retries (a network error, a 5xx) are tried ``network_attempts`` times at most: a
        platform that is down is left to the outbox (bot/conversation/outbox.py) rather than waited for here, where
        the turn's reply (and the previews ahead of it) would wait too. ``party``: whose call it is, for
        turns between parties on a busy key (the module docstring)."""
        network = 0
        for attempt in range(1, attempts + 1):
            await self.acquire(key, party)
            try:
                return await fn()
            except Exception as exc:
                wait = retry_after(exc)
                if wait is None or attempt == attempts:
                    raise
                if limited is not None and limited(exc) is None:
                    network += 1
                    if network >= network_attempts:
                        raise
                self.honoured += 1
                log.info("rate limited on %s: waiting %.1f s as the platform asked (attempt %d)", key, wait,
                         attempt)
                self.pause(key, wait)
        raise AssertionError("unreachable")
