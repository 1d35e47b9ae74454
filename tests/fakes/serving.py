"""What the platform fakes share: an ASGI app served by uvicorn inside the test's loop, a fault proxy in front
of a real peer, and a JSON walk."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the test's loop owns the process) and without its 0.1 s
    polling main loop: ``stop()`` starts the shutdown at once, which keeps many short tests fast."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)  # sets the default headers (Date) once
        await self._stopping.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()


@contextlib.asynccontextmanager
async def serve_asgi(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, advertise: str | None = None
                     ) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on ``port`` (0: a free one) of ``host`` inside the running loop; yields its
    base URL, naming the host ``advertise`` (e.g. ``localhost``) when given."""
    server = QuietServer(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                        lifespan="off", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers a flag, not an event
        if task.done():
            with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind
                task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{advertise or host}:{port}"
    finally:
        server.stop()
        await task


# headers that belong to one hop, not to the request or answer (RFC 9110 7.6.1), and the ones httpx sets itself
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-length", "content-encoding"})


class FaultProxy:
    """A reverse proxy in front of ``target`` (a real peer: the django-helpdesk site), for outages: every request
    is forwarded as it came (method, path, query, headers, the ``Host`` too, so links the peer builds name the
    proxy; body), and the peer's answer returned, unless ``down``: then ``status`` (503) at once, the peer
    untouched. ``forwarded`` and ``refused`` count requests. Serve it with :func:`fault_proxy`."""

    def __init__(self, target: str, *, status: int = 503) -> None:
        self.target = target.rstrip("/")
        self.status = status
        self.down = False
        self.forwarded = 0
        self.refused = 0
        self.url = ""
        self._http: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", scope["type"]  # lifespan is off in serve_asgi
        request = Request(scope, receive)
        if self.down:
            self.refused += 1
            response: Response = JSONResponse({"error": "down (FaultProxy)"}, status_code=self.status)
        else:
            self.forwarded += 1
            response = await self._forward(request)
        await response(scope, receive, send)

    async def _forward(self, request: Request) -> Response:
        assert self._http is not None, "serve the proxy with fault_proxy()"
        path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path  # as sent (%2F stays)
        target = f"{self.target}{path}" + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        answer = await self._http.request(request.method, target, headers=headers, content=await request.body())
        response = Response(answer.content, status_code=answer.status_code)
        response.raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.multi_items()
                                 if k.lower() not in _HOP]  # repeated ones (Set-Cookie) kept apart
        return response


@contextlib.asynccontextmanager
async def fault_proxy(target: str, *, status: int = 503) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` for ``target``, served on 127.0.0.1 (its ``url``) until the block ends."""
    proxy = FaultProxy(target, status=status)
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as proxy._http, serve_asgi(proxy) as proxy.url:
        yield proxy


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for a server whose URL must be known before it starts)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def walk(obj: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``obj``, depth first."""
    if isinstance(obj, dict):
        yield obj
        for value in obj.values():
            yield from walk(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from walk(value)
