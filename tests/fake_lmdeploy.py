"""A protocol-faithful stand-in for ``lmdeploy serve api_server`` that injects faults, over real HTTP.

It answers ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed) the way LMDeploy's
api_server does — ``chat.completion.chunk`` objects in ``data:`` lines, a final chunk with
``finish_reason`` and ``data: [DONE]``; errors as ``{"object": "error", "message", "code"}`` — and
plays a script of behaviours, one per request: ``ok``, ``500``, ``429`` (with ``Retry-After``),
``reset`` (the TCP connection is aborted before any byte), ``reset_mid`` (aborted after the first
text), ``slow_first`` (headers and text only after ``slow`` seconds), ``stall`` (two pieces, then
silence), ``malformed`` (a broken ``data:`` line among good ones), ``error_chunk`` (an error object
after the first text), ``error_first`` (an error object with code 503 before any text), ``400``.
It is a small HTTP/1.1 server on asyncio streams, so that it can reset connections for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

MODEL = "OpenGVLab/InternVL3-8B"


@dataclass
class FakeLMDeploy:
    script: deque[str] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    chunk_delay: float = 0.0
    slow: float = 5.0
    retry_after: str = "7"
    answer_words: int = 6
    port: int = 0
    closed_early: int = 0  # streams the client closed before the end (cancellation)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- HTTP ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode().split(" ", 2)
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if method == "GET" and path == "/v1/models":
                await self._json(writer, 200, {"object": "list", "data": [
                    {"id": MODEL, "object": "model", "created": int(time.time()), "owned_by": "lmdeploy",
                     "root": MODEL, "parent": None, "permission": []}]})
            elif method == "POST" and path == "/v1/chat/completions":
                self.headers.append(headers)
                self.requests.append(json.loads(body))
                await self._chat(writer, self.script.popleft() if self.script else "ok", self.requests[-1])
            else:
                await self._json(writer, 404, {"object": "error", "message": "not found", "code": 404})
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _json(self, writer: asyncio.StreamWriter, status: int, payload: Any,
                    extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(data)}",
                "Connection: close", *(f"{k}: {v}" for k, v in (extra or {}).items())]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # SO_LINGER 0: close() sends RST, a real connection reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def _words(self, body: dict[str, Any]) -> list[str]:
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if p["type"] == "text")
        words = [f"w{i}" for i in range(self.answer_words - 2)]
        return ["fake:", *words, f"[{len(text)} chars]"]

    def _chunk(self, content: str | None, finish: str | None = None) -> bytes:
        delta: dict[str, Any] = {"role": "assistant"}
        if content is not None:
            delta["content"] = content
        payload = {"id": "1", "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                   "usage": None}
        return f"data: {json.dumps(payload)}\n\n".encode()

    async def _chat(self, writer: asyncio.StreamWriter, behaviour: str, body: dict[str, Any]) -> None:
        if behaviour == "500":
            return await self._json(writer, 500, {"object": "error", "message": "internal error", "code": 500})
        if behaviour == "429":
            return await self._json(writer, 429, {"object": "error", "message": "too many requests", "code": 429},
                                    {"Retry-After": self.retry_after})
        if behaviour == "400":
            return await self._json(writer, 400, {"object": "error", "code": 400,
                                                  "message": "The input length exceeds the session length"})
        if behaviour == "reset":
            return self._reset(writer)
        if behaviour == "slow_first":
            await asyncio.sleep(self.slow)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"Connection: close\r\n\r\n")
        await writer.drain()
        if behaviour == "error_first":
            writer.write(b'data: {"error": {"message": "engine overloaded", "code": 503}}\n\n')
            await writer.drain()
            return
        words = self._words(body)
        try:
            for i, word in enumerate(words):
                writer.write(self._chunk(word if i == 0 else " " + word))
                await writer.drain()
                if i == 0 and behaviour == "reset_mid":
                    await asyncio.sleep(0.05)
                    return self._reset(writer)
                if i == 0 and behaviour == "error_chunk":
                    writer.write(b'data: {"object": "error", "message": "CUDA out of memory", "code": 500}\n\n')
                    await writer.drain()
                    return
                if i == 1 and behaviour == "malformed":
                    writer.write(b"data: {this is not json\n\n")
                if i == 1 and behaviour == "stall":
                    await asyncio.sleep(self.slow)
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            writer.write(self._chunk(None, "stop"))
            writer.write(b"data: [DONE]\n\n")
            await writer.drain()
        except ConnectionError:
            self.closed_early += 1


@contextlib.asynccontextmanager
async def fake_lmdeploy(**kwargs: Any) -> AsyncIterator[FakeLMDeploy]:
    server = FakeLMDeploy(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
