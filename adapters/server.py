"""``internvl-bot serve``: every enabled adapter, one HTTP server and the engine on one event loop.

The ASGI app (FastAPI, served by uvicorn) hosts the web chat, the webhook routes of adapters that
need them, the operator API and the operations endpoints:

- ``GET /healthz`` — liveness: the process answers.
- ``GET /readyz`` — readiness: started, not shutting down, engine reachable, store writable, and every
  adapter's platform taking replies (503 otherwise, the JSON naming the part and the URL).
- ``GET /metrics`` — Prometheus text format.
- ``POST /api/operator/conversations/{key}/reply`` and ``.../return`` — a person answers a handed-off
  conversation, or gives it back to the bot (``Authorization: Bearer $INTERNVL_BOT_OPERATOR_TOKEN``).

Shutdown on SIGTERM or SIGINT: new messages are refused politely, answers in progress get
``server.grace_seconds`` to finish and are then cancelled (they stay pending in the store and the
next start answers them), SSE streams close, the server stops, the engine and store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters import registry
from adapters.common.auth import Rejections
from adapters.common.http import install_error_handlers
from adapters.operator import OperatorInbox
from adapters.registry import ServedAdapter
from adapters.sources import SourceFiles
from adapters.web import WebSettings, session_secret
from adapters.web.adapter import WebAdapter
from bot.config import Settings
from bot.engines import build_engine
from bot.errors import StartupError
from bot.ops.checks import CheckResult, check_engine, check_store, reason, run_part, shown
from bot.runtime import DEMO_BANNER, Runtime, open_store

log = logging.getLogger(__name__)


class Service:
    """The running service: what ``/readyz`` and the operator API look at."""

    def __init__(self, settings: Settings, runtime: Runtime, adapters: list[ServedAdapter]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.adapters = adapters
        self.ready = False
        self.stopping = False
        #: (what, path) of every route people or platforms call, for the start-up banner (build_app fills it)
        self.announced: list[tuple[str, str]] = []
        # signed links to the knowledge bases' stored PDFs, cited in Sources footers
        self.sources: SourceFiles | None = None
        manager = runtime.manager
        # (bases named by a persona, or bound to an adapter: adapters.<name>.knowledge)
        if manager is not None and manager.knowledge is not None and runtime.store is not None and (
                any(persona.knowledge for persona in manager.personas.values())
                or any(section.knowledge for section in settings.enabled_adapters().values())):
            web_conf = getattr(settings.adapters, "web", None) or WebSettings()
            try:
                key = session_secret(settings, web_conf)  # the same on every replica, or start-up says so
            except StartupError as exc:
                raise StartupError(f"knowledge bases: Sources links are signed with the web chat's key — {exc}") from None
            self.sources = SourceFiles(runtime.store, key, settings.server.public_url, days=settings.knowledge.link_days)
            assert manager.reader is not None
            manager.reader.links = self.sources.link
        # the operator inbox (and API) when the operator token is set; it is also the handoff notifier that
        # reaches the people answering there
        self.inbox: OperatorInbox | None = None
        if self.operator_token and runtime.manager is not None:
            self.inbox = OperatorInbox(runtime.manager, settings)
            runtime.manager.add_notifier(self.inbox)

    @property
    def web(self) -> WebAdapter | None:
        return next((a for a in self.adapters if isinstance(a, WebAdapter)), None)

    @property
    def operator_token(self) -> str:
        return os.environ.get(self.settings.server.operator_token_env, "")


class NoSniff:
    """``X-Content-Type-Options: nosniff`` on every response (JSON, files, errors): a browser never guesses a
    type that would run what was served as data. Pure ASGI, so event streams stay streamed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_app(service: Service) -> FastAPI:
    app = FastAPI(title="internvl-bot", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.rejections = Rejections(service.runtime.metrics.webhook_rejected)
    install_error_handlers(app)
    app.add_middleware(NoSniff)
    runtime = service.runtime

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        problems: dict[str, str] = {}
        if service.stopping:
            problems["service"] = "shutting down"
        elif not service.ready:
            problems["service"] = "starting"
        try:
            assert runtime.engine is not None
            await asyncio.wait_for(runtime.engine.check(), 5)
        except Exception as exc:
            problems["engine"] = f"{type(exc).__name__}: {exc}"[:300]
        try:
            assert runtime.store is not None
            await runtime.store.check()
        except Exception as exc:
            problems["store"] = f"{type(exc).__name__}: {exc}"[:300]
        if runtime.manager is not None:
            # a platform replies cannot reach (kept in the outbox meanwhile): this adapter is not ready
            for platform, why in runtime.manager.outbox.troubles().items():
                problems[f"adapters.{platform}"] = why[:300]
        if problems:
            return JSONResponse({"ready": False, "problems": problems}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=runtime.metrics.content_type)

    if service.inbox is not None:
        app.include_router(service.inbox.router())
        service.announced.append(("operator inbox", "/operator"))
    if service.sources is not None:
        app.include_router(service.sources.router())

    for adapter in service.adapters:
        router = adapter.router()
        if router is not None:
            app.include_router(router)
            service.announced += [(f"adapters.{adapter.name}", path) for path in adapter.announced(router)]
    service.announced.append(("health, readiness, metrics", "/healthz /readyz /metrics"))
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service shuts down in its own order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _run(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind; the service reports it instead
        raise OSError(f"the server failed to start (uvicorn exit status {exc.code})") from None


async def _started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """Wait until uvicorn listens (it offers a flag, not an event) or has failed to."""
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _public_url(settings: Settings, host: str, port: int) -> str:
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/") + "/"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}/"


async def _start_all(adapters: list[ServedAdapter], service: Service, server: uvicorn.Server,
                     serving: asyncio.Task[None]) -> None:
    """Start every adapter (then the inbox); when one fails, those already started and the HTTP server are
    closed before the error goes on, so no half-started process is left polling or listening."""
    started: list[ServedAdapter] = []
    try:
        for adapter in adapters:
            started.append(adapter)  # a failed start may have begun (a socket, a poller): closed too
            try:
                await adapter.start()
            except (StartupError, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.debug("starting adapters.%s failed", adapter.name, exc_info=True)
                raise StartupError(adapter.failure(exc, "start")) from exc
            detail = adapter.ready_detail()
            log.info("adapters.%s ready%s", adapter.name, f": {detail}" if detail else "")
        if service.inbox is not None:
            await service.inbox.start()  # with replicas: news from the others reach this one's inbox pages
    except BaseException:
        service.stopping = True
        for adapter in started:
            adapter.stop_intake()
        for adapter in reversed(started):
            with contextlib.suppress(Exception):
                await adapter.close()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
        raise


async def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    conf = settings.server
    host = host if host is not None else conf.host
    port = port if port is not None else conf.port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Runtime(settings, exclusive=True) as runtime:
            assert runtime.manager is not None
            assert runtime.engine is not None
            settings = runtime.settings
            adapters = registry.served(runtime)
            service = Service(settings, runtime, adapters)
            app = build_app(service)
            server = _Server(uvicorn.Config(
                app, host=host, port=port, log_config=None, access_log=False, lifespan="off",
                proxy_headers=conf.proxy_headers, forwarded_allow_ips=conf.forwarded_allow_ips,
                timeout_graceful_shutdown=5, server_header=False,
            ))
            # Old messages first: a message left pending by the last run is answered before newer ones, and an
            # adapter that redelivers it during start-up finds it stored (and queued at most once).
            resumed = await runtime.manager.start()
            serving = asyncio.create_task(_run(server))
            await _started(server, serving)
            if serving.done():
                error = serving.exception()
                raise StartupError(f"server.port: cannot listen on {host}:{port} — is another process using it? ({error})")
            await _start_all(adapters, service, server, serving)
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            service.ready = True
            _announce(service, _public_url(settings, host, bound), resumed)
            log.info("serving on %s:%d", host, bound)
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
            await _stop(service, conf.grace_seconds)
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            stopper.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def _announce(service: Service, url: str, resumed: int) -> None:
    """The lines a person starting ``serve`` reads: where the web chat is, the engine, and each adapter's URLs."""
    runtime = service.runtime
    assert runtime.engine is not None
    if runtime.engine.info.demo:
        print(DEMO_BANNER, file=sys.stderr, flush=True)
    what = "web chat" if service.web is not None else "server (web chat disabled)"
    print(f"internvl-bot: {what} at {url} — engine {runtime.engine.info.name}; "
          f"{resumed} message(s) resumed; Ctrl+C stops", file=sys.stderr, flush=True)
    base = url.rstrip("/")
    width = max((len(what) for what, _ in service.announced), default=0)
    for served, paths in service.announced:
        if served == f"adapters.{WebAdapter.name}":
            continue  # the web chat is the line above
        shown = " ".join(base + path for path in paths.split())
        print(f"  {served:<{width}}  {shown}", file=sys.stderr, flush=True)


async def _stop(service: Service, grace: float) -> None:
    """Stop taking messages, finish the answers in progress (up to ``grace`` seconds), close the adapters."""
    log.info("shutting down: finishing answers in progress (up to %.0f s)", grace)
    service.stopping = True
    for adapter in service.adapters:
        adapter.stop_intake()
    assert service.runtime.manager is not None
    await service.runtime.manager.stop(grace)
    for adapter in service.adapters:
        await adapter.close()
    if service.inbox is not None:
        await service.inbox.close()  # ends the operators' event streams, so the server can stop


def describe_store(settings: Settings) -> str:
    """The store, for a log line: the SQLite file, or PostgreSQL's host, port and database (no password)."""
    if settings.store.backend == "postgres":
        from urllib.parse import urlsplit

        url = urlsplit(settings.store.url)
        return f"PostgreSQL {url.hostname}:{url.port or 5432}{url.path}"
    return str(settings.store_path)


async def check(settings: Settings, *, offline: bool = False) -> int:
    """``serve --check``: each part asked where it lives, one line each (✓ or ✗, what was checked, what answered,
    the fix for a ✗): the store, the engine, every enabled adapter's platform (``PlatformAdapter.check``). The
    adapters are built but never started (no polling, no socket, no message taken), each part has
    ``PART_TIMEOUT`` seconds, and everything is closed after. Returns 1 when any part failed, else 0.
    ``offline``: :func:`check_offline`."""
    if offline:
        return await check_offline(settings)
    outcomes: list[bool] = []

    def show(results: list[CheckResult]) -> None:
        for result in results:
            print(result.line(), flush=True)
            outcomes.append(result.ok)

    show(await run_part("store", check_store(settings)))
    show(await run_part("engine", check_engine(settings)))
    runtime = Runtime.for_checks(settings)
    built: list[ServedAdapter] = []
    try:
        for spec, conf in registry.servable(settings):
            try:
                adapter = spec.builder()(runtime, conf)
            except Exception as exc:  # a setting or secret refused, or its SDK missing: that part's line
                show([CheckResult(False, spec.name, _not_built(spec.name, exc))])
                continue
            built.append(adapter)
            show(await run_part(spec.name, adapter.check()))
    finally:
        for adapter in built:
            with contextlib.suppress(Exception):
                await adapter.close()
    if os.environ.get(settings.server.operator_token_env):
        show([CheckResult(True, "operator", f"the inbox at /operator and the operator API are on "
                                            f"(${settings.server.operator_token_env} set)")])
    if settings.handoff.webhook_url:
        show([CheckResult(True, "handoff", f"events go to {shown(settings.handoff.webhook_url)}, signed with "
                                           f"${settings.handoff.webhook_secret_env} (not contacted: a test event "
                                           "would reach people)")])
    failed = outcomes.count(False)
    print(f"internvl-bot: {failed} of {len(outcomes)} checks failed" if failed
          else f"internvl-bot: all {len(outcomes)} checks passed", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _not_built(name: str, exc: Exception) -> str:
    if isinstance(exc, StartupError):
        return str(exc).removeprefix(f"adapters.{name}: ")
    if isinstance(exc, ImportError):
        return f"its SDK is missing ({exc}) — pip install -e '.[{name}]'"
    return f"cannot be built: {type(exc).__name__}: {reason(exc)}"


async def check_offline(settings: Settings) -> int:
    """``serve --check --offline`` (CI): config, secrets, the store writable, an in-process model loaded; no
    platform and no model server is contacted. Lines start with ``ok:``; the first problem raises."""
    store = open_store(settings)
    await store.open()
    try:
        await store.check()
    finally:
        await store.close()
    print(f"ok: store {describe_store(settings)} is writable")
    if settings.engine.kind == "openai_http":
        print(f"ok: engine openai_http at {shown(settings.engine.openai_http.base_url)} (not contacted: --offline)")
    else:
        engine = build_engine(settings)
        await engine.start()
        try:
            await engine.check()
            info = engine.info
        finally:
            await engine.close()
        print(f"ok: engine {info.name} ready (context {info.context_length} tokens){' — DEMO MODEL' if info.demo else ''}")
    web = getattr(settings.adapters, "web", None)
    if web is not None and web.enabled:
        from adapters.web import session_secret

        session_secret(settings, web)  # with replicas, the shared one must be set
    enabled = ", ".join(name for name in settings.enabled_adapters() if name != "console") or "none"
    print(f"ok: adapters enabled: {enabled}")
    if os.environ.get(settings.server.operator_token_env):
        print("ok: operator inbox at /operator and operator API enabled (token set)")
    if settings.handoff.webhook_url:
        print("ok: handoff webhook configured (signing secret set)")
    return 0
