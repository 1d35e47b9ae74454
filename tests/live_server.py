"""A real ``serve`` app on 127.0.0.1 inside the test's event loop: uvicorn, the web adapter, a real store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from adapters.server import Service, build_app
from adapters.web import CSRF_HEADER
from adapters.web.adapter import WebAdapter
from bot.config import Settings
from bot.engines import Engine
from bot.runtime import Runtime
from tests.fakes.serving import serve_asgi


@dataclass
class Live:
    url: str
    runtime: Runtime
    web: WebAdapter
    service: Service

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


@contextlib.asynccontextmanager
async def live_server(settings: Settings, engine: Engine | None = None) -> AsyncIterator[Live]:
    async with Runtime(settings, engine=engine) as runtime:
        assert runtime.manager is not None and runtime.engine is not None
        web = WebAdapter(runtime.manager, runtime.settings)
        web.demo = runtime.engine.info.demo
        service = Service(runtime.settings, runtime, [web])
        await runtime.manager.start()
        async with serve_asgi(build_app(service)) as url:
            await web.start()  # as serve does (with replicas, its events come through the database)
            if service.inbox is not None:
                await service.inbox.start()
            service.ready = True
            try:
                yield Live(url, runtime, web, service)
            finally:
                service.stopping = True
                web.stop_intake()
                await runtime.manager.stop(1)
                web.close_streams()
                if service.inbox is not None:
                    await service.inbox.close()


async def open_session(client: httpx.AsyncClient) -> None:
    """What a browser does first: load the page, which sets the session cookie."""
    response = await client.get("/")
    assert response.status_code == 200


async def post(client: httpx.AsyncClient, text: str, files: list[tuple[str, bytes, str]] | None = None,
               **headers: str) -> httpx.Response:
    return await client.post(
        "/api/messages", data={"text": text},
        files=[("files", (name, data, mime)) for name, data, mime in files or []] or None,
        headers={CSRF_HEADER: "1", **headers},
    )


async def sse_events(client: httpx.AsyncClient, until: str = "done", limit: int = 200) -> list[dict[str, Any]]:
    """Read the session's event stream until an event of type ``until``."""
    events: list[dict[str, Any]] = []
    async with client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                events.append(event)
                if event["type"] == until or len(events) >= limit:
                    break
    return events


def streams(live: Live) -> set[int]:
    return {id(q) for s in live.web.sessions.live.values() for q in s.streams}


async def subscribed(live: Live, before: set[int]) -> None:
    """Wait until an event stream not in ``before`` is open."""
    for _ in range(500):
        if streams(live) - before:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the event stream did not open")


async def exchange(live: Live, client: httpx.AsyncClient, message: str, files: Any = None,
                   until: str = "done") -> tuple[httpx.Response, list[dict[str, Any]]]:
    before = streams(live)
    reader = asyncio.create_task(sse_events(client, until=until))
    await subscribed(live, before)
    response = await post(client, message, files)
    if response.status_code >= 400:
        reader.cancel()
        return response, []
    return response, await asyncio.wait_for(reader, 10)


class StaticSite:
    """A second origin serving one HTML page (another company's site embedding the widget)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.values: dict[str, str] = {}
        self.origin = ""

    def fill(self, **values: str) -> None:
        self.values = values

    def page(self) -> str:
        return self.template.format(**self.values)


@contextlib.asynccontextmanager
async def static_site(template: str) -> AsyncIterator[StaticSite]:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    site = StaticSite(template)

    async def index(request: Any) -> HTMLResponse:
        return HTMLResponse(site.page())

    async with serve_asgi(Starlette(routes=[Route("/", index)]), host="localhost") as site.origin:
        yield site
