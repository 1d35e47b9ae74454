"""The store's retention (``store.retention_days``): what is older is deleted at start-up, then every hour. The
conversation manager holds one (``manager.retention``), started and stopped with it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bot.config import StoreSettings
from bot.store.base import Store

log = logging.getLogger(__name__)

#: seconds between two purges after the one at start-up
PURGE_EVERY = 3600


class Retention:
    """See the module docstring. ``purged``: told after each purge (the prompts kept in memory are forgotten, as
    their messages may be gone)."""

    def __init__(self, store: Store, conf: StoreSettings, purged: Callable[[], None]) -> None:
        self.store = store
        self.conf = conf
        self.purged = purged
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Purge now, then every hour; nothing when retention is off or it already runs."""
        if self.conf.retention_days and self._task is None:
            await self.purge()
            self._task = asyncio.create_task(self._forever())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None

    async def purge(self) -> None:
        """Delete what is older than the retention; a failure is logged (the next hour tries again)."""
        cutoff = time.time() - self.conf.retention_days * 86400
        try:
            report = await self.store.purge(cutoff)
            self.purged()
            if report.messages:
                log.info("retention: deleted %d message(s), %d file(s)", report.messages, report.attachment_files)
        except Exception:
            log.exception("retention purge failed")

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY)
            await self.purge()
