"""The LMDeploy engine, driven through a stand-in that follows LMDeploy's Python API (no CUDA here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot.config import GenerationSettings, LMDeploySettings
from bot.conversation.manager import ConversationManager
from bot.engines import Engine, build_engine
from bot.engines.base import ChatMessage, ImagePart, VideoPart
from bot.engines.lmdeploy import LMDeployEngine
from bot.errors import EngineError, ModelLoadError, PromptTooLong
from bot.seams import Channel
from bot.store import MemoryStore
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import ConversationKey, IncomingMessage, Sender
from tests import fake_lmdeploy_module as fake
from tests.conftest import make_settings
from tests.test_engines import EngineContract

GEN = GenerationSettings(max_new_tokens=16, temperature=0.7, top_p=0.8, repetition_penalty=1.1)


async def make(**overrides: object) -> LMDeployEngine:
    settings = LMDeploySettings(model="/models/InternVL3-8B", **overrides)
    engine = LMDeployEngine(settings, module=fake)
    await engine.start()
    return engine


async def test_pipeline_is_built_from_config() -> None:
    engine = await make(backend="pytorch", session_len=16384, cache_max_entry_count=0.5, tp=2, max_batch_size=64)
    pipe = fake.pipelines[-1]
    config = pipe.async_engine.backend_config
    assert isinstance(config, fake.PytorchEngineConfig)
    assert (config.session_len, config.cache_max_entry_count, config.tp, config.max_batch_size) == (16384, 0.5, 2, 64)
    assert engine.info.context_length == 16384
    await engine.close()
    assert pipe.closed
    engine = await make()
    assert isinstance(fake.pipelines[-1].async_engine.backend_config, fake.TurbomindEngineConfig)
    assert engine.info.context_length == 32768  # the model's, reported by LMDeploy


async def test_request_construction_images_frames_and_generation_config() -> None:
    engine = await make()
    photo = ImagePart(Image.new("RGB", (1000, 700), "red"), max_tiles=6)
    page = ImagePart(Image.new("RGB", (900, 1270), "white"), max_tiles=24, label="Page-1")
    frames = tuple(ImagePart(Image.new("RGB", (640, 360), (i, i, i)), max_tiles=1) for i in range(2))
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "first", (photo,)),
                ChatMessage("assistant", "ok"),
                ChatMessage("user", "compare <IMAGE_TOKEN>", (photo, page), (VideoPart(frames),))]
    chunks = [c async for c in engine.stream(messages, GEN)]
    assert "".join(chunks) == "".join(f"tok{i} " for i in range(8))
    call = fake.pipelines[-1].async_engine.calls[-1]
    assert call["stream"] and call["start"] and call["end"]
    gen = call["gen_config"]
    assert (gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_p, gen.repetition_penalty) == (
        16, True, 0.7, 0.8, 1.1)
    sent = call["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[1]["content"][0]["text"] == "<IMAGE_TOKEN>\nfirst"
    last = sent[3]["content"]
    assert last[0]["text"] == ("Image-1: <IMAGE_TOKEN>\nPage-1: <IMAGE_TOKEN>\nFrame1: <IMAGE_TOKEN>\n"
                               "Frame2: <IMAGE_TOKEN>\ncompare ‹IMAGE_TOKEN›")
    assert [p["image_data"]["max_dynamic_patch"] for p in last[1:]] == [6, 24, 1, 1]
    greedy = GenerationSettings(max_new_tokens=4, temperature=0.0)
    assert [c async for c in engine.stream(messages[:2], greedy)]
    assert fake.pipelines[-1].async_engine.calls[-1]["gen_config"].do_sample is False


async def test_errors_and_a_prompt_over_the_session_length() -> None:
    engine = await make()
    core = fake.pipelines[-1].async_engine
    core.finish = "error"
    with pytest.raises(EngineError, match="internal error"):
        [c async for c in engine.stream([ChatMessage("user", "hi")], GEN)]
    core.finish = "too_long"
    with pytest.raises(PromptTooLong):
        [c async for c in engine.stream([ChatMessage("user", "hi")], GEN)]


async def test_conversations_are_batched_and_cancelling_cancels_the_session(tmp_path: Path) -> None:
    engine = await make()
    core = fake.pipelines[-1].async_engine
    core.delay = 0.02
    settings = make_settings(tmp_path, engine={"max_concurrency": 8})
    manager = ConversationManager(settings, MemoryStore(), engine)
    sinks: dict[str, CollectingSink] = {}
    manager.register(Channel("t", MemoryFetcher(), lambda context: sinks.setdefault(context.key.chat, CollectingSink())))
    tickets = [await manager.submit(IncomingMessage(ConversationKey("t", f"c{i}"), Sender("u"), "hello there"))
               for i in range(4)]
    assert all([await t.done for t in tickets if t is not None])
    assert core.peak == 4  # four conversations generated at the same time: LMDeploy batches them
    assert all(s.answers for s in sinks.values())

    core.words = 1000
    stream = engine.stream([ChatMessage("user", "long")], GenerationSettings(max_new_tokens=1000))
    await stream.__anext__()
    await stream.aclose()
    assert core.cancelled  # the generator was closed: LMDeploy cancels the session
    await manager.stop()


async def test_without_lmdeploy_the_engine_says_how_to_install_it(tmp_path: Path) -> None:
    engine = build_engine(make_settings(tmp_path, engine={"kind": "lmdeploy", "lmdeploy": {"model": "/m"}}))
    assert isinstance(engine, LMDeployEngine)
    with pytest.raises(ModelLoadError, match=r"pip install 'internvl-bot\[lmdeploy\]'"):
        await engine.start()
    with pytest.raises(ModelLoadError, match=r"engine\.lmdeploy\.model"):
        await LMDeployEngine(LMDeploySettings(), module=fake).start()


class TestLMDeployEngineContract(EngineContract):
    @pytest.fixture
    async def engine(self) -> AsyncIterator[Engine]:
        e = await make()
        fake.pipelines[-1].async_engine.delay = 0.005
        fake.pipelines[-1].async_engine.words = 50
        yield e
        await e.close()
