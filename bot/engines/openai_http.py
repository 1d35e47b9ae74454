"""The OpenAI-compatible HTTP engine: ``lmdeploy serve api_server``, vLLM, ``transformers serve``, or a
load balancer in front of several of them.

Request: ``POST {base_url}/chat/completions`` with ``stream: true``. Images travel as ``image_url``
parts holding the **original** file as a base64 ``data:`` URL (a JPEG stays a JPEG), re-encoded only
when the server could not read it as sent (HEIC, EXIF-rotated, rendered PDF pages, video frames) or
when it has more pixels than the tile grid the budget planner chose needs — then it is scaled down
to that grid's size, keeping the aspect ratio so the server picks the same grid. Each image carries
its ``max_dynamic_patch`` (LMDeploy passes extra ``image_url`` keys to InternVL's preprocessing).
Where images go in the text: with ``image_placeholder`` set (LMDeploy: ``<IMAGE_TOKEN>``, vLLM:
``<image>``) the text carries InternVL's ``Image-1: <IMAGE_TOKEN>`` layout and the image parts follow
in order; with it empty, text and image parts are interleaved (servers that apply the model's own
chat template, such as ``transformers serve``).

Response: Server-Sent Events, ``data: {json}`` lines with ``choices[0].delta.content``, with or
without a final ``data: [DONE]``. Faults and what users see:

- connection refused/reset, 429 (``Retry-After`` honoured, capped by ``max_backoff``) and 5xx
  **before any text**: re-sent up to ``retries`` times with exponential back-off; then "the model
  is busy or unavailable". Nothing is re-sent once text has streamed: the answer stops with an error.
- an error object in the stream (``{"error": ...}`` or ``{"object": "error", ...}``): before any text
  and with a 429/5xx code, treated like that status; otherwise the answer fails politely.
- no first text within ``first_token_timeout``, or a pause longer than ``token_timeout``: the request
  is abandoned (the connection closed, which stops the server's generation) and the user told.
- a malformed SSE line: logged and skipped; the rest of the stream is used.
- ``breaker_failures`` failed requests in a row open a circuit breaker: for ``breaker_reset``
  seconds requests fail at once with "busy or unavailable" instead of hanging; then one request
  is let through to probe.

Cancelling the consuming task closes the HTTP stream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bot.config import GenerationSettings, OpenAIHTTPSettings
from bot.engines.base import (
    ChatMessage,
    EngineInfo,
    ImagePart,
    LimitedEngine,
    interleaved,
    layout,
    neutralize,
)
from bot.errors import EngineError, EngineUnavailable, StartupError, retry_after_seconds
from bot.media.images import IMAGE_SIZE, grid_for, tile_count

log = logging.getLogger(__name__)

#: Formats every OpenAI-compatible InternVL server decodes (Pillow on the server side).
PASSTHROUGH = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG": "image/png"}


class _Retryable(Exception):
    """A failure before any text that may be re-sent (connection, 429, 5xx)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class CircuitBreaker:
    """Opens after ``failures`` consecutive failed requests; after ``reset`` seconds lets one request probe."""

    def __init__(self, failures: int, reset: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset = reset
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.consecutive += 1
        self._probing = False
        if self.opened_at is not None or self.consecutive >= self.failures:
            if self.opened_at is None:
                log.error("engine circuit opened after %d failed requests in a row", self.consecutive)
            self.opened_at = self.clock()


def _error_text(payload: Any) -> tuple[str, int | None]:
    """(message, code) of an error object in a response body or stream chunk."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            return str(err.get("message") or err), code if isinstance(code, int) else None
        if payload.get("object") == "error" or err:
            code = payload.get("code")
            message = payload.get("message") or payload.get("text") or err
            return str(message), code if isinstance(code, int) else None
    return str(payload)[:300], None


class OpenAIHTTPEngine(LimitedEngine):
    """See the module docstring. ``client`` may be injected (tests, custom transports, proxies)."""

    def __init__(
        self,
        settings: OpenAIHTTPSettings,
        *,
        max_concurrency: int = 64,
        context_length: int = 0,
        client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_concurrency)
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.image_placeholder = settings.image_placeholder
        self._client = client
        self._own_client = client is None
        self._sleep = sleep
        self._clock = clock
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset, clock)
        self.model = settings.model
        self._tokenizer: Any = None
        self.info = EngineInfo(name="openai_http", context_length=context_length or 8192, wants_source=True)
        self.requests = 0  # requests sent, retries included (tests, bench)
        self.reencoded = 0  # images sent re-encoded rather than as the original file

    # -- life cycle -------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.settings.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def start(self) -> None:
        s = self.settings
        if self._client is None:
            timeout = httpx.Timeout(connect=s.connect_timeout, read=None, write=60.0, pool=None)
            limits = httpx.Limits(max_connections=max(self.max_concurrency * 2, 10), max_keepalive_connections=32)
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        if s.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(s.tokenizer)
        if not self.model:
            try:
                models = await self.served_models()
            except (httpx.HTTPError, EngineError) as exc:
                raise StartupError(
                    f"engine.openai_http.base_url: cannot list models at {self.base_url}/models ({exc}) — "
                    "is the server running? Or set engine.openai_http.model"
                ) from None
            if not models:
                raise StartupError(f"engine.openai_http: {self.base_url}/models lists no model — set engine.openai_http.model")
            self.model = models[0]
        log.info("openai_http engine: %s, model %s", self.base_url, self.model)

    async def served_models(self) -> list[str]:
        """The ids ``GET {base_url}/models`` lists (raises on a refused key, an HTTP error or no answer)."""
        assert self._client is not None
        response = await self._client.get(f"{self.base_url}/models", headers=self._headers(),
                                          timeout=self.settings.connect_timeout + 5)
        if response.status_code in (401, 403):
            raise EngineError(f"the server refused the API key (HTTP {response.status_code}); set "
                              f"{self.settings.api_key_env}")
        response.raise_for_status()
        return [str(m["id"]) for m in response.json().get("data", []) if "id" in m]

    async def check(self) -> None:
        """Readiness: the server lists models (and our model among them when it names one)."""
        models = await self.served_models()
        if self.model and models and self.model not in models:
            raise EngineError(f"model {self.model!r} is not served (served: {', '.join(models[:5])})")

    async def close(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
        self._client = None

    # -- accounting ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        # No tokenizer: a deliberate over-estimate (about 3 UTF-8 bytes a token), so prompts fit.
        return math.ceil(len(text.encode("utf-8")) / 3)

    def image_tokens(self, width: int, height: int, max_tiles: int) -> int:
        return self.info.tokens_per_tile * tile_count(width, height, max_num=max_tiles)

    # -- requests -----------------------------------------------------------------------------

    def encode_image(self, part: ImagePart, *, document: bool = False) -> tuple[str, int]:
        """The ``data:`` URL for one image and its ``max_dynamic_patch``."""
        width, height = part.size
        cols, rows = grid_for(width, height, max_num=part.max_tiles)
        need_w, need_h = cols * IMAGE_SIZE, rows * IMAGE_SIZE
        scale = max(need_w / width, need_h / height)
        source = part.source
        mime = next((m for magic, m in PASSTHROUGH.items() if source and source.startswith(magic)), None)
        if source is not None and mime is not None and scale >= 1 and _upright(source, width, height):
            return f"data:{mime};base64,{base64.b64encode(source).decode()}", part.max_tiles
        # Re-encode: scaled to the chosen grid's size when larger (same aspect ratio, so the same grid).
        image = part.image if isinstance(part.image, Image.Image) else Image.fromarray(np.asarray(part.image))
        image = image.convert("RGB")
        if scale < 1:
            size = (max(need_w, math.ceil(width * scale)), max(need_h, math.ceil(height * scale)))
            if grid_for(*size, max_num=part.max_tiles) == (cols, rows):
                image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        buffer = io.BytesIO()
        if document:
            image.save(buffer, "PNG", optimize=False, compress_level=3)
            mime = "image/png"
        else:
            image.save(buffer, "JPEG", quality=92)
            mime = "image/jpeg"
        self.reencoded += 1
        return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}", part.max_tiles

    def _image_part(self, part: ImagePart) -> dict[str, Any]:
        url, tiles = self.encode_image(part, document=part.label.startswith("Page-"))
        image_url: dict[str, Any] = {"url": url}
        if self.settings.max_dynamic_patch:
            image_url["max_dynamic_patch"] = tiles
        return {"type": "image_url", "image_url": image_url}

    def build_messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        """OpenAI chat messages with InternVL's image layout (see the module docstring)."""
        out: list[dict[str, Any]] = []
        placeholder = self.image_placeholder
        for message in messages:
            pieces = layout(message)
            if not message.images and not message.videos:
                out.append({"role": message.role, "content": neutralize(message.prompt_text)})
                continue
            content: list[dict[str, Any]] = []
            if placeholder:
                text = "".join(placeholder if isinstance(p, ImagePart) else neutralize(p) if p is pieces[-1] else p
                               for p in pieces)
                content.append({"type": "text", "text": text})
                content += [self._image_part(p) for p in pieces if isinstance(p, ImagePart)]
            else:
                content += [self._image_part(p) if isinstance(p, ImagePart) else {"type": "text", "text": p}
                            for p in interleaved(message)]
            out.append({"role": message.role, "content": content})
        return out

    def request_body(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": self.build_messages(messages),
            "stream": True,
            "max_tokens": generation.max_new_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
        }
        if self.settings.send_repetition_penalty and generation.repetition_penalty != 1.0:
            body["repetition_penalty"] = generation.repetition_penalty
        return body

    async def _generate(self, messages: Sequence[ChatMessage], generation: GenerationSettings) -> AsyncIterator[str]:
        if self._client is None:
            raise EngineError("the openai_http engine was used before start()")
        if not self.breaker.allow():
            raise EngineUnavailable("circuit open: the model server failed repeatedly")
        body = await asyncio.to_thread(self.request_body, messages, generation)
        payload = json.dumps(body).encode()
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            streamed = False
            try:
                async for chunk in self._stream_once(payload):
                    streamed = True
                    yield chunk
                self.breaker.success()
                return
            except _Retryable as exc:
                if streamed:  # never re-send once text reached the user
                    self.breaker.failure()
                    raise EngineError(f"the stream broke after text was sent: {exc}") from None
                if attempt > s.retries:
                    self.breaker.failure()
                    raise EngineUnavailable(f"{exc} (after {attempt} attempts)") from None
                delay = min(s.max_backoff, s.backoff * 2 ** (attempt - 1) * (0.8 + 0.4 * random.random()))
                if exc.retry_after is not None:
                    delay = min(s.max_backoff, max(delay, exc.retry_after))
                log.warning("engine request failed before any text (%s); retry %d/%d in %.2f s", exc, attempt,
                            s.retries, delay)
                await self._sleep(delay)
            except (EngineUnavailable, TimeoutError):
                self.breaker.failure()
                raise
            except EngineError:
                self.breaker.success()  # the server answered; the request itself was refused
                raise

    async def _stream_once(self, payload: bytes) -> AsyncIterator[str]:
        s = self.settings
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + s.first_token_timeout  # headers and first text, together
        response = await self._open(payload, first_deadline)
        try:
            lines = response.aiter_lines()
            got_text = False
            while True:
                deadline = loop.time() + s.token_timeout if got_text else first_deadline
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if got_text:
                        raise EngineUnavailable(f"the answer stalled for {s.token_timeout:.1f} s") from None
                    raise EngineUnavailable(f"no first text within {s.first_token_timeout:.1f} s") from None
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    if got_text:
                        raise EngineError(f"the connection broke mid-answer: {type(exc).__name__}") from None
                    raise _Retryable(f"{type(exc).__name__}: {exc}") from None
                texts = _sse_texts(line, started=got_text)
                if texts is None:
                    return
                for text in texts:
                    got_text = True
                    yield text
        finally:
            await response.aclose()

    async def _open(self, payload: bytes, deadline: float) -> httpx.Response:
        """``POST /chat/completions``, streamed: the response once its status says the stream follows."""
        assert self._client is not None
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **self._headers()}
        self.requests += 1
        request = self._client.build_request("POST", f"{self.base_url}/chat/completions", content=payload,
                                             headers=headers)
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise EngineUnavailable(f"no answer within {self.settings.first_token_timeout:.1f} s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code < 400:
            return response
        try:
            await response.aread()
        finally:
            await response.aclose()
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}", retry_after_seconds(response.headers.get("retry-after")))
        try:
            message, _ = _error_text(response.json())
        except ValueError:
            message = response.text[:300]
        if response.status_code in (401, 403):
            raise EngineUnavailable(f"the server refused the API key: {message}")
        raise EngineError(f"HTTP {response.status_code}: {message}")


def _sse_texts(line: str, *, started: bool) -> list[str] | None:
    """The answer's text in one line of the event stream (often none: comments, event names, separators);
    None at ``[DONE]``. An error the server reports in the stream raises (retryable before any text)."""
    if not line.startswith("data:"):
        return []  # comments (": ping"), event names, blank separators
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        log.warning("engine sent a malformed SSE line, skipped: %r", data[:200])
        return []
    if not isinstance(chunk, dict):
        log.warning("engine sent a non-object SSE payload, skipped: %r", data[:200])
        return []
    if "error" in chunk or chunk.get("object") == "error":
        message, code = _error_text(chunk)
        if not started and code is not None and (code == 429 or code >= 500):
            raise _Retryable(f"error in stream ({code}): {message}")
        raise EngineError(f"the server reported an error: {message}")
    return [text for choice in chunk.get("choices") or () if (text := (choice.get("delta") or {}).get("content"))]


def _upright(source: bytes, width: int, height: int) -> bool:
    """True when the file decodes to the same upright image we have (no EXIF rotation to apply)."""
    try:
        with Image.open(io.BytesIO(source)) as im:
            orientation = im.getexif().get(0x0112, 1)
            return orientation in (0, 1) and im.size == (width, height)
    except Exception:
        return False
