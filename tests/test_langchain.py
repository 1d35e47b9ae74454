"""The LangChain bridge: LangChain's own standard tests for chat models (``langchain-tests``), run against
the bridge over the echo engine and over the HTTP engine talking to ``transformers serve``; and the
chat message history over the SQLite store (``langchain-tests`` has no standard suite for histories:
these tests follow ``BaseChatMessageHistory``'s documented contract)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from PIL import Image

from adapters.langchain import InternVLChatModel, as_chat_model, as_message_history
from bot.config import OpenAIHTTPSettings
from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine
from bot.engines.openai_http import OpenAIHTTPEngine
from bot.seams import Channel
from bot.store import SQLiteStore
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import ConversationKey, IncomingMessage, Sender
from tests.conftest import image_bytes, make_settings


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (30, 120, 220)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def offline_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard image test downloads a PNG from GitHub; here nothing outside answers, so that one
    URL is served from memory (the test's own code is unchanged)."""
    import langchain_tests.integration_tests.chat_models as standard

    real_get = httpx.get

    def get(url: str, *args: Any, **kwargs: Any) -> httpx.Response:
        if url.startswith("https://raw.githubusercontent.com/") and url.endswith(".png"):
            return httpx.Response(200, content=_png(), request=httpx.Request("GET", url))
        return real_get(url, *args, **kwargs)

    monkeypatch.setattr(standard.httpx, "get", get)


class _Bridge:
    """What every standard suite here shares: the bridge's class, image blocks, one model per engine."""

    @property
    def chat_model_class(self) -> type[InternVLChatModel]:
        return InternVLChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": EchoEngine(record=True)}

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # an engine serves one model


class TestEchoChatModelUnit(_Bridge, ChatModelUnitTests):
    pass


class TestEchoChatModelIntegration(_Bridge, ChatModelIntegrationTests):
    pass


class TestHTTPEngineChatModelIntegration(_Bridge, ChatModelIntegrationTests):
    """The same standard tests through the HTTP engine and a real server (``transformers serve``)."""

    @pytest.fixture(autouse=True)
    def _server(self, hf_server: str) -> None:
        type(self).url = hf_server

    url = ""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        engine = OpenAIHTTPEngine(OpenAIHTTPSettings(base_url=self.url, image_placeholder="", max_dynamic_patch=False,
                                                     send_repetition_penalty=False))
        return {"engine": engine}


def test_images_reach_the_engine_as_the_bot_would_send_them() -> None:
    engine = EchoEngine(record=True)
    model = as_chat_model(engine, max_tiles=6)
    jpeg = image_bytes(1200, 900)
    data = base64.b64encode(jpeg).decode()
    reply = model.invoke([
        SystemMessage("You diagnose faults."),
        HumanMessage(content=[{"type": "text", "text": "what is wrong?"},
                              {"type": "image", "base64": data, "mime_type": "image/jpeg"},
                              {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}]),
    ])
    assert reply.content.startswith("[image 1: 1200x900, 7 tiles]\n[image 2: 1200x900, 7 tiles]\necho: what is wrong?")
    sent = engine.calls[-1][-1].images[0]
    assert sent.source == jpeg and sent.max_tiles == 6
    assert reply.usage_metadata["input_tokens"] > 2 * 256 * 7


async def test_streaming_and_stop_sequences() -> None:
    model = as_chat_model(EchoEngine(record=True, delay=0.001))
    chunks = [c.content async for c in model.astream("one two three four five")]
    assert len([c for c in chunks if c]) >= 5 and "".join(chunks) == "echo: one two three four five"
    assert model.invoke("one two three four five", stop=["four"]).content == "echo: one two three "
    with pytest.raises(ValueError, match="only data: URLs"):
        model.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])])


async def test_message_history_over_the_bots_own_store(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = SQLiteStore(path)
    await store.open()
    key = ConversationKey("telegram", "42")
    manager = ConversationManager(make_settings(tmp_path), store, EchoEngine(record=True))
    sink = CollectingSink()
    manager.register(Channel("telegram", MemoryFetcher(), lambda context: sink))
    ticket = await manager.submit(IncomingMessage(key, Sender("u"), "my boiler shows F28"))
    assert ticket is not None and await ticket.done == "answered"

    # the bridge opens its own connection to the same file (WAL: readers and writers side by side)
    history = as_message_history(SQLiteStore(path), "telegram:42", open_store=True)
    assert [(type(m).__name__, m.content) for m in await history.aget_messages()] == [
        ("HumanMessage", "my boiler shows F28"), ("AIMessage", "echo: my boiler shows F28")]
    history.add_user_message("and the pressure is low")
    history.add_ai_message("Then refill it to 1.5 bar.")
    await history.aadd_messages([HumanMessage("thanks"), AIMessage("You're welcome.")])
    assert [m.content for m in history.messages][-4:] == [
        "and the pressure is low", "Then refill it to 1.5 bar.", "thanks", "You're welcome."]
    assert await store.pending() == []  # the bot does not take LangChain's messages as questions to answer

    # the bot sees those turns as context of its next answer
    ticket = await manager.submit(IncomingMessage(key, Sender("u"), "so?"))
    assert ticket is not None and await ticket.done == "answered"
    context = [m.text for m in manager.engine.calls[-1]]  # type: ignore[attr-defined]
    assert "Then refill it to 1.5 bar." in context and "thanks" in context

    history.clear()
    assert history.messages == []
    history.add_user_message("fresh start")
    assert [m.content for m in await history.aget_messages()] == ["fresh start"]
    with pytest.raises(ValueError, match="human and AI messages only"):
        history.add_message(SystemMessage("no"))
    await manager.stop()
    await store.close()
