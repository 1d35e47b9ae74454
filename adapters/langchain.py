"""The LangChain bridge (optional extra ``langchain``): the framework's engines and store as LangChain parts.

- :func:`as_chat_model` wraps any engine (transformers, OpenAI-compatible HTTP, LMDeploy, echo) as a
  LangChain chat model that streams and accepts image content blocks — LangChain's
  ``{"type": "image", "base64": ..., "mime_type": ...}`` and OpenAI's ``{"type": "image_url",
  "image_url": {"url": "data:..."}}`` — preprocessed exactly as the bot does (EXIF orientation,
  InternVL tiles, the original bytes for remote engines).
- :func:`as_message_history` is a LangChain chat message history over the bot's store: the same
  conversation the bot keeps (``platform:chat[:thread]``), from its last ``/reset`` on.

It lives at the edge: the core never imports LangChain. Engines and stores are asynchronous and tied
to the event loop they run on; the bridge runs them on one loop of its own (a daemon thread), so that
LangChain's synchronous calls (``invoke``, ``stream``) and asynchronous ones (``ainvoke``, ``astream``)
both work from anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from bot.config import GenerationSettings
from bot.engines.base import ChatMessage, Engine, ImagePart, message_cost
from bot.media.images import decode_pixels
from bot.store import NewMessage, Store
from bot.types import ConversationKey

_T = TypeVar("_T")

__all__ = ["InternVLChatModel", "StoreChatMessageHistory", "as_chat_model", "as_message_history"]


class EngineLoop:
    """One event loop on a daemon thread, where an engine or a store lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="internvl-bot-langchain", daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` there and wait (from a thread that is not that loop's)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a synchronous LangChain call from inside the bridge's own loop")
        return self.submit(coro).result()

    async def arun(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


_shared: EngineLoop | None = None
_shared_lock = threading.Lock()


def shared_loop() -> EngineLoop:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EngineLoop()
        return _shared


# -- messages ---------------------------------------------------------------------------------------


def _image_bytes(block: dict[str, Any]) -> bytes | None:
    """The bytes of an image content block, or None when the block is not an image."""
    kind = block.get("type")
    if kind == "image_url":
        url = block["image_url"]["url"] if isinstance(block.get("image_url"), dict) else block.get("image_url")
        return _data_url(str(url))
    if kind == "image":
        if block.get("base64") or block.get("data"):
            try:
                return base64.b64decode(block.get("base64") or block["data"], validate=False)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"an image block's base64 data is invalid: {exc}") from None
        if block.get("url"):
            return _data_url(str(block["url"]))
        raise ValueError("an image block needs base64 data (URLs to fetch are not supported)")
    return None


def _data_url(url: str) -> bytes:
    if not url.startswith("data:") or "," not in url:
        raise ValueError("only data: URLs are supported for images (the bot does not fetch URLs)")
    head, data = url.split(",", 1)
    return base64.b64decode(data) if head.endswith(";base64") else data.encode()


def to_chat_messages(messages: Sequence[BaseMessage], *, max_tiles: int = 12,
                     max_pixels: int = 40_000_000) -> list[ChatMessage]:
    """LangChain messages -> the engine's messages. System, human and AI messages; images in human ones."""
    out: list[ChatMessage] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        else:
            raise ValueError(f"{type(message).__name__} is not supported (no tool calling): use system, human "
                             "and AI messages")
        content = message.content
        texts: list[str] = []
        images: list[ImagePart] = []
        for block in [content] if isinstance(content, str) else content:
            if isinstance(block, str):
                texts.append(block)
                continue
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
                continue
            data = _image_bytes(block)
            if data is None:
                raise ValueError(f"content blocks of type {block.get('type')!r} are not supported")
            if role != "user":
                raise ValueError("images are accepted in human messages only")
            pixels = decode_pixels(data, max_pixels=max_pixels)
            images.append(ImagePart(pixels, max_tiles=max_tiles, source=data))
        out.append(ChatMessage(role, "".join(texts), tuple(images)))  # type: ignore[arg-type]
    return out


def _unpack(item: tuple[str, Any]) -> str | None:
    """A relayed item: the text piece, None at the end; an error is raised here, in the caller's thread."""
    kind, value = item
    if kind == "error":
        raise value
    return value if kind == "text" else None


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    positions = [i for s in stop if s and (i := text.find(s)) >= 0]
    return (text[: min(positions)], True) if positions else (text, False)


# -- chat model -------------------------------------------------------------------------------------


class InternVLChatModel(BaseChatModel):
    """A LangChain chat model over an internvl-bot engine. Build it with :func:`as_chat_model`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(exclude=True)
    temperature: float = 0.7
    max_tokens: int = 512
    top_p: float = 0.9
    repetition_penalty: float = 1.05
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int = 0  # engines retry on their own (the HTTP engine before the first token)
    max_tiles: int = 12
    start_engine: bool = True  # start the engine on the bridge's loop at first use
    _runner: EngineLoop | None = PrivateAttr(default=None)
    _started: bool = PrivateAttr(default=False)

    @property
    def _llm_type(self) -> str:
        return "internvl-bot"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        info = getattr(self.engine, "info", None)
        return {"engine": getattr(info, "name", type(self.engine).__name__),
                "model": getattr(self.engine, "model", None), "temperature": self.temperature,
                "max_tokens": self.max_tokens}

    @property
    def model_name(self) -> str:
        info = getattr(self.engine, "info", None)
        return str(getattr(self.engine, "model", "") or getattr(info, "name", "") or type(self.engine).__name__)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "internvl-bot"
        params["ls_model_name"] = kwargs.get("model") or self.model_name
        return params

    def _runner_loop(self) -> EngineLoop:
        if self._runner is None:
            self._runner = shared_loop()
        return self._runner

    async def _ensure_started(self) -> None:
        if self.start_engine and not self._started:
            await self.engine.start()
            self._started = True

    def _generation(self, **kwargs: Any) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            repetition_penalty=max(1.0, float(kwargs.get("repetition_penalty", self.repetition_penalty))),
        )

    def _usage(self, messages: list[ChatMessage], answer: str) -> UsageMetadata:
        engine: Engine = self.engine
        prompt = sum(message_cost(engine, m) for m in messages)
        output = engine.count_tokens(answer) if answer else 0
        return UsageMetadata(input_tokens=prompt, output_tokens=output, total_tokens=prompt + output)

    async def _chunks(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> AsyncIterator[str]:
        """Runs on the bridge's loop: the engine's stream, cut at the first stop sequence."""
        await self._ensure_started()
        chat = to_chat_messages(messages, max_tiles=self.max_tiles)
        stops = [*(self.stop or []), *(stop or [])]
        generation = self._generation(**kwargs)
        text = ""
        stream = self.engine.stream(chat, generation)
        try:
            async for piece in stream:
                before = len(text)
                text, cut = _cut_at_stop(text + piece, stops)
                if len(text) > before:
                    yield text[before:]
                if cut:
                    return
        finally:
            await stream.aclose()

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        runner = self._runner_loop()
        caller = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        future = runner.submit(self._produce(messages, stop, kwargs,
                                             lambda item: caller.call_soon_threadsafe(inbox.put_nowait, item)))
        answer = ""
        try:
            while (value := _unpack(await inbox.get())) is not None:
                answer += value
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=value))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(value, chunk=chunk)
                yield chunk
            yield self._last_chunk(await runner.arun(self._usage_async(messages, answer)))
        finally:
            future.cancel()  # stops the engine's stream (the HTTP engine closes its connection)

    async def _produce(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                       put: Callable[[tuple[str, Any]], Any]) -> None:
        """On the bridge's loop: the answer's pieces, then ("end", None), or ("error", exception)."""
        try:
            async for piece in self._chunks(messages, stop, **kwargs):
                put(("text", piece))
            put(("end", None))
        except BaseException as exc:
            put(("error", exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _last_chunk(self, usage: UsageMetadata) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage, chunk_position="last",
            response_metadata={"model_name": self.model_name, "model_provider": "internvl-bot"}))

    async def _usage_async(self, messages: list[BaseMessage], answer: str) -> UsageMetadata:
        return self._usage(to_chat_messages(messages, max_tiles=self.max_tiles), answer)

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        runner = self._runner_loop()
        pipe: queue.Queue[tuple[str, Any]] = queue.Queue()
        future = runner.submit(self._produce(messages, stop, kwargs, pipe.put))
        answer = ""
        try:
            while (value := _unpack(pipe.get())) is not None:
                answer += value
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=value))
                if run_manager is not None:
                    run_manager.on_llm_new_token(value, chunk=chunk)
                yield chunk
            yield self._last_chunk(runner.run(self._usage_async(messages, answer)))
        finally:
            future.cancel()

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text, usage = self._runner_loop().run(self._complete(messages, stop, **kwargs))
        return self._result(text, usage)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        text, usage = await self._runner_loop().arun(self._complete(messages, stop, **kwargs))
        return self._result(text, usage)

    def _result(self, text: str, usage: UsageMetadata) -> ChatResult:
        message = AIMessage(content=text, usage_metadata=usage,
                            response_metadata={"model_name": self.model_name, "model_provider": "internvl-bot"})
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _complete(self, messages: list[BaseMessage], stop: list[str] | None,
                        **kwargs: Any) -> tuple[str, UsageMetadata]:
        pieces = [piece async for piece in self._chunks(messages, stop, **kwargs)]
        text = "".join(pieces)
        return text, self._usage(to_chat_messages(messages, max_tiles=self.max_tiles), text)


def as_chat_model(engine: Engine, *, started: bool = False, **params: Any) -> InternVLChatModel:
    """A LangChain chat model answering with ``engine``. The bridge starts the engine on its own loop at first
    use; pass ``started=True`` for an engine already started on a loop that keeps running elsewhere."""
    return InternVLChatModel(engine=engine, start_engine=not started, **params)


# -- message history ----------------------------------------------------------------------------------


class StoreChatMessageHistory(BaseChatMessageHistory):
    """A conversation of the bot's store as LangChain history. ``clear()`` works like ``/reset``: the
    messages stay stored, the history starts after them."""

    def __init__(self, store: Store, conversation: ConversationKey | str, *, runner: EngineLoop | None = None,
                 open_store: bool = False) -> None:
        self.store = store
        self.key = conversation if isinstance(conversation, ConversationKey) else ConversationKey.parse(conversation)
        self._runner = runner or shared_loop()
        self._open = open_store

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    async def _ready(self) -> None:
        if self._open:
            await self.store.open()
            self._open = False

    async def _messages(self) -> list[BaseMessage]:
        await self._ready()
        conv = await self.store.conversation(self.key)
        rows = await self.store.transcript(self.key, limit=10_000)
        out: list[BaseMessage] = []
        for row in rows:
            if row.id < conv.context_start or row.kind != "chat" or row.state in ("failed", "cancelled"):
                continue
            if row.role == "user":
                out.append(HumanMessage(content=row.text, id=str(row.id)))
            else:
                out.append(AIMessage(content=row.text, id=str(row.id)))
        return out

    async def _add(self, messages: Sequence[BaseMessage]) -> None:
        await self._ready()
        last_user: int | None = None
        for message in messages:
            text = message.text if isinstance(message.content, list) else str(message.content)
            if isinstance(message, HumanMessage):
                # "answered": an external conversation; the bot must not pick it up as a pending message
                last_user = await self.store.add_message(self.key, NewMessage(role="user", text=text,
                                                                               state="answered"))
            elif isinstance(message, AIMessage):
                reply_to = last_user or await self._last_user()
                await self.store.add_message(self.key, NewMessage(role="assistant", text=text, state="answered",
                                                                  reply_to=reply_to))
            else:
                raise ValueError(f"{type(message).__name__} cannot be stored: human and AI messages only")

    async def _last_user(self) -> int | None:
        rows = await self.store.transcript(self.key, limit=50)
        return next((r.id for r in reversed(rows) if r.role == "user"), None)

    async def _clear(self) -> None:
        await self._ready()
        await self.store.update_conversation(self.key, context_start=await self.store.last_message_id() + 1)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self._run(self._messages())

    async def aget_messages(self) -> list[BaseMessage]:
        return await self._runner.arun(self._messages())

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        self._run(self._add(list(messages)))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await self._runner.arun(self._add(list(messages)))

    def clear(self) -> None:
        self._run(self._clear())

    async def aclear(self) -> None:
        await self._runner.arun(self._clear())


def as_message_history(store: Store, conversation: ConversationKey | str, **kwargs: Any) -> StoreChatMessageHistory:
    """LangChain chat message history over ``store`` for one conversation (``"telegram:42"``)."""
    return StoreChatMessageHistory(store, conversation, **kwargs)
