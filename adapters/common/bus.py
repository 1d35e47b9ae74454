"""Events for pages open on any replica: the web chat's answers, the operator inbox's news.

A browser's event stream (SSE) is held by one process, and with several replicas behind a load balancer
that is rarely the process producing the answer. When the store can pass messages between replicas
(PostgreSQL's LISTEN/NOTIFY: the store has ``notify`` and ``listen``), :class:`Bus` sends every event
through it and each replica hands what it receives to its own pages — the sending replica included, so
there is one path and events keep their order. Otherwise (SQLite: one process) events are handed over
directly.

A notification's payload is limited to 8,000 bytes; larger events go as numbered parts in one
transaction (delivered together and in order) and are put together again on arrival.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from bot.errors import StartupError
from bot.seams import EventPassing

log = logging.getLogger(__name__)

PART_CHARS = 1800  # ≤ 4 bytes per character in UTF-8: a part stays under 8,000 bytes with its header
MAX_PENDING = 256  # events whose parts are still arriving, at most (older ones are dropped)


class Bus:
    """Publish JSON events to ``deliver`` on every replica listening on ``channel``."""

    def __init__(self, store: Any, channel: str, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.channel = channel
        self.deliver = deliver
        self.shared = isinstance(store, EventPassing)
        self._store = store
        self._parts: OrderedDict[str, list[str | None]] = OrderedDict()
        self._started = False

    async def start(self) -> None:
        """Start listening (shared bus only); returns once notifications are being received."""
        if not self.shared or self._started:
            return
        self._started = True
        ready = asyncio.Event()
        self._store.listen(self.channel, self._received, ready=ready)
        try:
            await asyncio.wait_for(ready.wait(), timeout=30)
        except TimeoutError:
            raise StartupError(f"cannot listen for the other replicas' events ({self.channel}): is the database "
                               "reachable?") from None

    async def publish(self, event: dict[str, Any]) -> None:
        if not self.shared:
            self.deliver(event)
            return
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        pieces = [text[i:i + PART_CHARS] for i in range(0, len(text), PART_CHARS)] or [""]
        mid = uuid.uuid4().hex[:12]
        await self._store.notify(self.channel, [f"{mid}:{i}:{len(pieces)}:{piece}" for i, piece in enumerate(pieces)])

    def _received(self, payload: str) -> None:
        try:
            mid, index, count, piece = payload.split(":", 3)
            i, n = int(index), int(count)
            if not 0 <= i < n <= 100_000:
                raise ValueError(f"part {i} of {n}")
        except ValueError as exc:
            log.warning("bus %s: a notification not in the bus's format (%s) is ignored", self.channel, exc)
            return
        if n == 1:
            self._deliver(piece)
            return
        parts = self._parts.get(mid)
        if parts is None:
            parts = self._parts[mid] = [None] * n
            while len(self._parts) > MAX_PENDING:
                self._parts.popitem(last=False)
        parts[i] = piece
        if all(p is not None for p in parts):
            del self._parts[mid]
            self._deliver("".join(p for p in parts if p is not None))

    def _deliver(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            log.warning("bus %s: an event that is not JSON is ignored", self.channel)
            return
        if isinstance(event, dict):
            try:
                self.deliver(event)
            except Exception:
                log.exception("bus %s: delivering an event failed", self.channel)
