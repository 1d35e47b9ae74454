"""Wiring: settings -> store + engine + conversation manager, with an orderly start and stop."""

from __future__ import annotations

import logging
import os
from types import TracebackType

from bot.config import ConfigError, Settings
from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine, Engine, build_engine
from bot.handoff.notifiers import LogNotifier, Notifiers, WebhookNotifier
from bot.knowledge import KnowledgeIndex, open_index
from bot.ops.metrics import Metrics
from bot.scheduling.scheduler import Scheduler
from bot.seams import Notifier
from bot.store import MemoryStore, SQLiteStore, Store
from bot.store.lock import DataDirLock

log = logging.getLogger(__name__)

#: Answers of the random demo model are noise; keep them short.
DEMO_MAX_NEW_TOKENS = 48

DEMO_BANNER = (
    "*** DEMO MODEL: a tiny, randomly initialised InternVL. Its answers are RANDOM NOISE. ***\n"
    "*** Set engine.transformers.model in config.yaml to a real InternVL -hf checkpoint,    ***\n"
    "*** e.g. a download of OpenGVLab/InternVL3-1B-hf, for real answers.                    ***"
)


class Runtime:
    """``async with Runtime(settings) as rt:`` opens the store, loads the engine, builds the manager.

    ``exclusive``: this process serves the store (``serve``, ``chat``): with SQLite it holds the data
    directory's lock (bot/store/lock.py) first, so a second one stops with one line instead of answering
    the same messages twice."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None, store: Store | None = None,
                 exclusive: bool = False) -> None:
        self.settings = settings
        self._lock = DataDirLock(settings.data_path) if exclusive and settings.store.backend != "postgres" else None
        self.engine = engine
        self.store = store
        self.manager: ConversationManager | None = None
        self.metrics = Metrics()
        self.notifier: Notifiers | None = None

    @classmethod
    def for_checks(cls, settings: Settings) -> Runtime:
        """A runtime that starts nothing, for ``serve --check``: the adapters are built on it to check their
        platforms, and never started. Its store is in memory and its engine the echo engine (an adapter's check
        uses neither), so every platform is checked also when the database or the model is what fails, and no
        model is loaded for it; the store and the engine have checks of their own (bot/ops/checks.py)."""
        store, engine = MemoryStore(), EchoEngine()
        runtime = cls(settings, engine=engine, store=store)
        runtime.manager = ConversationManager(settings, store, engine, metrics=runtime.metrics)
        return runtime

    async def __aenter__(self) -> Runtime:
        settings = self.settings
        if self._lock is not None:
            self._lock.acquire()
        try:
            self.store = self.store or open_store(settings)
            await self.store.open()
        except BaseException:
            self._release()
            raise
        try:
            self.engine = self.engine or build_engine(settings)
            await self.engine.start()
            if self.engine.info.demo:
                log.warning("demo model in use: answers are random noise")
                gen = settings.engine.generation
                if gen.max_new_tokens > DEMO_MAX_NEW_TOKENS:
                    engine = settings.engine.model_copy(
                        update={"generation": gen.model_copy(update={"max_new_tokens": DEMO_MAX_NEW_TOKENS})}
                    )
                    settings = settings.model_copy(update={"engine": engine})
                    self.settings = settings
            self.notifier = build_notifier(settings)
            self.manager = ConversationManager(settings, self.store, self.engine, notifier=self.notifier,
                                               metrics=self.metrics, scheduler=build_scheduler(settings, self.store),
                                               knowledge=knowledge_for(settings, self.store))
        except BaseException:
            await self.store.close()
            self._release()
            raise
        return self

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.manager is not None:
                await self.manager.stop()
            if self.engine is not None:
                await self.engine.close()
            if self.notifier is not None:
                await self.notifier.close()
        finally:
            try:
                if self.store is not None:
                    await self.store.close()
            finally:
                self._release()


def open_store(settings: Settings) -> Store:
    """``store.backend``: the SQLite file (one process), or PostgreSQL (several replicas share it)."""
    if settings.store.backend == "postgres":
        from bot.store.postgres.store import PostgresStore

        if not settings.store.url:
            raise ConfigError(f"store.backend is postgres: set the environment variable {settings.store.url_env} "
                              "to postgresql://user:password@host:5432/db")
        return PostgresStore(settings.store.url)
    return SQLiteStore(settings.store_path, settings.data_path / "attachments")


def build_scheduler(settings: Settings, store: Store) -> Scheduler | None:
    """Claims in PostgreSQL when the store is shared by replicas; else the manager's in-process lanes."""
    if settings.store.backend != "postgres":
        return None
    from bot.store.postgres.claims import ClaimScheduler, replica_name
    from bot.store.postgres.store import PostgresStore

    if not isinstance(store, PostgresStore):
        # replicas sharing work through anything else would each answer everyone's messages
        raise ConfigError("store.backend is postgres but the store given is not PostgreSQL")
    return ClaimScheduler(store, replica=replica_name(), parallel=settings.conversation.max_parallel_conversations,
                          lease=settings.store.lease_seconds)


def knowledge_for(settings: Settings, store: Store) -> KnowledgeIndex | None:
    """The knowledge bases' search in ``store``'s database (None for a store that keeps none: a test's)."""
    try:
        return open_index(settings, store)
    except TypeError:
        return None


def build_notifier(settings: Settings) -> Notifiers:
    """A log line for every handoff event, and the signed webhook when ``handoff.webhook_url`` is set;
    adapters add their own at run time."""
    notifiers: list[Notifier] = [LogNotifier()]
    conf = settings.handoff
    if conf.webhook_url:
        secret = os.environ.get(conf.webhook_secret_env, "")
        notifiers.append(WebhookNotifier(conf.webhook_url, secret, attempts=conf.webhook_attempts))
    return Notifiers(notifiers)
