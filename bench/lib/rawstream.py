"""A raw OpenAI-compatible streaming request, read the way any client must (every chunk parsed, its text
collected): the reference side of the engine benchmarks."""

from __future__ import annotations

import json
import time

import httpx


async def stream_chat(client: httpx.AsyncClient, url: str, body: bytes) -> tuple[float, float, float, str]:
    """POST ``body`` to ``{url}/chat/completions``; return (started, first text or None, end, text) times
    from ``time.perf_counter``."""
    started = time.perf_counter()
    first = None
    pieces: list[str] = []
    async with client.stream("POST", f"{url}/chat/completions", content=body,
                             headers={"Content-Type": "application/json", "Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if not data:
                continue
            if data == "[DONE]":
                break
            for choice in json.loads(data).get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
    end = time.perf_counter()
    return started, first or end, end, "".join(pieces)
