"""What the platform fakes share: an ASGI app served by uvicorn inside the test's loop, and a JSON walk."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp


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
