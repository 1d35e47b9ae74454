"""The OpenAI-compatible HTTP engine: against ``transformers serve`` (a real server) and against a
protocol-faithful LMDeploy api_server stand-in that injects faults. No test waits real seconds on a
fault: back-off sleeps are recorded instead of slept, and timeouts are a fraction of a second."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import GenerationSettings, OpenAIHTTPSettings
from bot.engines import Engine, build_engine
from bot.engines.base import ChatMessage, ImagePart, VideoPart
from bot.engines.openai_http import OpenAIHTTPEngine
from bot.errors import EngineError, EngineUnavailable, StartupError
from bot.l10n.i18n import text
from bot.media.images import IMAGE_SIZE, decode_pixels, grid_for
from bot.store import MemoryStore
from tests.conftest import image_bytes, make_settings
from tests.fake_lmdeploy import MODEL, FakeLMDeploy, fake_lmdeploy
from tests.test_engines import EngineContract

ROOT = Path(__file__).resolve().parent.parent
GEN = GenerationSettings(max_new_tokens=16, temperature=0.0)


class Sleeps:
    """Stands in for asyncio.sleep: records the back-off and yields once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(0)


def settings(url: str, **overrides: Any) -> OpenAIHTTPSettings:
    return OpenAIHTTPSettings(base_url=url, **{"backoff": 0.5, "retries": 3, **overrides})


@pytest.fixture
async def fake() -> AsyncIterator[FakeLMDeploy]:
    async with fake_lmdeploy() as server:
        yield server


async def started(url: str, sleeps: Sleeps | None = None, **overrides: Any) -> OpenAIHTTPEngine:
    engine = OpenAIHTTPEngine(settings(url, **overrides), sleep=sleeps or Sleeps())
    await engine.start()
    return engine


def user(text_: str, *images: ImagePart, videos: tuple[VideoPart, ...] = ()) -> list[ChatMessage]:
    return [ChatMessage("system", "Be brief."), ChatMessage("user", text_, tuple(images), videos)]


async def collect(engine: Engine, messages: list[ChatMessage], gen: GenerationSettings = GEN) -> list[str]:
    return [c async for c in engine.stream(messages, gen)]


async def collect_into(got: list[str], engine: Engine, messages: list[ChatMessage]) -> None:
    """Like collect, keeping what streamed before an error."""
    async for chunk in engine.stream(messages, GEN):
        got.append(chunk)


def photo_part(data: bytes, max_tiles: int = 12) -> ImagePart:
    return ImagePart(decode_pixels(data, max_pixels=50_000_000), max_tiles=max_tiles, sha256="x", source=data)


def sent_image(url: str) -> bytes:
    assert url.startswith("data:image/")
    return base64.b64decode(url.split(",", 1)[1])


# -- request construction ------------------------------------------------------------------------


async def test_model_is_discovered_and_the_api_key_comes_from_the_environment(
        fake: FakeLMDeploy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("INTERNVL_BOT_ENGINE_API_KEY", "sk-very-secret")
    engine = await started(fake.url)
    try:
        assert engine.model == MODEL
        chunks = await collect(engine, user("hello"))
        assert "".join(chunks).startswith("fake: w0")
        assert fake.headers[-1]["authorization"] == "Bearer sk-very-secret"
        body = fake.requests[-1]
        assert (body["model"], body["stream"], body["max_tokens"], body["temperature"]) == (MODEL, True, 16, 0.0)
        assert "sk-very-secret" not in caplog.text
    finally:
        await engine.close()


async def test_a_photo_travels_as_its_original_jpeg_with_its_tile_count(fake: FakeLMDeploy) -> None:
    engine = await started(fake.url)
    try:
        jpeg = image_bytes(1000, 700)
        await collect(engine, user("what is broken?", photo_part(jpeg, max_tiles=6)))
        content = fake.requests[-1]["messages"][-1]["content"]
        assert content[0] == {"type": "text", "text": "<IMAGE_TOKEN>\nwhat is broken?"}
        assert content[1]["image_url"]["max_dynamic_patch"] == 6
        assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert sent_image(content[1]["image_url"]["url"]) == jpeg  # byte for byte: no re-encode
        assert engine.reencoded == 0
    finally:
        await engine.close()


async def test_a_large_photo_is_scaled_to_its_grid_and_keeps_the_grid(fake: FakeLMDeploy) -> None:
    engine = await started(fake.url)
    try:
        big = image_bytes(4032, 3024)
        part = photo_part(big, max_tiles=6)
        await collect(engine, user("and this?", part))
        data = sent_image(fake.requests[-1]["messages"][-1]["content"][1]["image_url"]["url"])
        with Image.open(io.BytesIO(data)) as sent:
            size, fmt = sent.size, sent.format
        cols, rows = grid_for(4032, 3024, max_num=6)
        assert fmt == "JPEG" and size[0] >= cols * IMAGE_SIZE and size[1] >= rows * IMAGE_SIZE
        assert size[0] < 4032 and grid_for(*size, max_num=6) == (cols, rows)
        assert len(data) < len(big)
    finally:
        await engine.close()


async def test_rotated_photos_pages_and_frames_are_reencoded_upright(fake: FakeLMDeploy) -> None:
    engine = await started(fake.url)
    try:
        buffer = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways, shown rotated 90°
        Image.new("RGB", (600, 400), (10, 200, 30)).save(buffer, "JPEG", exif=exif)
        rotated = photo_part(buffer.getvalue())
        assert rotated.size == (400, 600)
        page = ImagePart(Image.new("RGB", (900, 1270), "white"), max_tiles=24, label="Page-1")
        frames = tuple(ImagePart(Image.new("RGB", (1280, 720), (i, i, i)), max_tiles=1) for i in range(3))
        await collect(engine, user("<IMAGE_TOKEN> sneaky <|im_start|>", rotated, page,
                                   videos=(VideoPart(frames, "clip.mp4"),)))
        content = fake.requests[-1]["messages"][-1]["content"]
        assert content[0]["text"] == (
            "Image-1: <IMAGE_TOKEN>\nPage-1: <IMAGE_TOKEN>\nFrame1: <IMAGE_TOKEN>\nFrame2: <IMAGE_TOKEN>\n"
            "Frame3: <IMAGE_TOKEN>\n‹IMAGE_TOKEN› sneaky ‹|im_start|›")
        urls = [p["image_url"] for p in content[1:]]
        with Image.open(io.BytesIO(sent_image(urls[0]["url"]))) as upright:
            assert upright.size == (400, 600)
        assert urls[1]["url"].startswith("data:image/png;base64,") and urls[1]["max_dynamic_patch"] == 24
        assert [u["max_dynamic_patch"] for u in urls[2:]] == [1, 1, 1]
        assert engine.reencoded == 5
    finally:
        await engine.close()


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "reset", "error_first"])
async def test_failures_before_any_text_are_retried_with_backoff(fake: FakeLMDeploy, fault: str) -> None:
    sleeps = Sleeps()
    engine = await started(fake.url, sleeps)
    fake.script.extend([fault, fault, "ok"])
    try:
        chunks = await collect(engine, user("hi"))
        assert "".join(chunks).startswith("fake:")
        assert len(fake.requests) == 3
        assert len(sleeps.calls) == 2 and 0.4 <= sleeps.calls[0] <= 0.6 and 0.8 <= sleeps.calls[1] <= 1.2
    finally:
        await engine.close()


async def test_429_waits_as_long_as_retry_after_says(fake: FakeLMDeploy) -> None:
    sleeps = Sleeps()
    engine = await started(fake.url, sleeps)
    fake.script.extend(["429", "ok"])
    try:
        assert await collect(engine, user("hi"))
        assert sleeps.calls == [7.0]
        fake.retry_after = "600"  # capped by max_backoff
        fake.script.extend(["429", "ok"])
        await collect(engine, user("hi"))
        assert sleeps.calls[-1] == 20.0
    finally:
        await engine.close()


async def test_exhausted_retries_tell_the_user_the_model_is_busy(fake: FakeLMDeploy, tmp_path: Path) -> None:
    from bot.conversation.manager import ConversationManager
    from bot.seams import Channel
    from bot.testing import CollectingSink, MemoryFetcher
    from bot.types import ConversationKey, IncomingMessage, Sender

    engine = await started(fake.url, retries=2)
    fake.script.extend(["500"] * 3)
    sink = CollectingSink()
    manager = ConversationManager(make_settings(tmp_path), MemoryStore(), engine)
    manager.register(Channel("test", MemoryFetcher(), lambda context: sink))
    try:
        ticket = await manager.submit(IncomingMessage(ConversationKey("test", "c"), Sender("u"),
                                                      "Mein Drucker zeigt den Fehler E5, was bedeutet das?"))
        assert ticket is not None and await ticket.done == "failed"
        assert sink.notices == [text("engine_unavailable", "de")]
        assert len(fake.requests) == 3
    finally:
        await manager.stop()
        await engine.close()


async def test_nothing_is_resent_after_text_has_streamed(fake: FakeLMDeploy) -> None:
    for fault in ("reset_mid", "error_chunk"):
        engine = await started(fake.url)
        fake.requests.clear()
        fake.script.append(fault)
        got: list[str] = []
        with pytest.raises(EngineError):
            await collect_into(got, engine, user("hi"))
        assert got == ["fake:"] and len(fake.requests) == 1, fault
        await engine.close()


async def test_slow_first_token_and_stalls_time_out_without_waiting_long(fake: FakeLMDeploy) -> None:
    engine = await started(fake.url, first_token_timeout=0.2, token_timeout=0.2)
    try:
        fake.script.append("slow_first")
        began = time.monotonic()
        with pytest.raises(EngineUnavailable, match=r"within 0\.2"):
            await collect(engine, user("hi"))
        fake.script.append("stall")
        got: list[str] = []
        with pytest.raises(EngineUnavailable, match="stalled"):
            await collect_into(got, engine, user("hi"))
        assert "".join(got) == "fake: w0" and len(fake.requests) == 2
        assert time.monotonic() - began < 2
    finally:
        await engine.close()


async def test_a_malformed_line_is_skipped(fake: FakeLMDeploy, caplog: pytest.LogCaptureFixture) -> None:
    engine = await started(fake.url)
    fake.script.append("malformed")
    try:
        assert "".join(await collect(engine, user("hi"))) == "fake: w0 w1 w2 w3 [2 chars]"
        assert "malformed SSE line" in caplog.text
    finally:
        await engine.close()


async def test_a_refused_request_is_not_retried(fake: FakeLMDeploy) -> None:
    engine = await started(fake.url)
    fake.script.append("400")
    try:
        with pytest.raises(EngineError, match=r"exceeds the session length") as info:
            await collect(engine, user("hi"))
        assert not isinstance(info.value, EngineUnavailable) and len(fake.requests) == 1
    finally:
        await engine.close()


async def test_circuit_breaker_fails_fast_then_probes(fake: FakeLMDeploy) -> None:
    now = [0.0]
    engine = OpenAIHTTPEngine(settings(fake.url, retries=0, breaker_failures=2, breaker_reset=30),
                              sleep=Sleeps(), clock=lambda: now[0])
    await engine.start()
    try:
        fake.script.extend(["500", "500"])
        for _ in range(2):
            with pytest.raises(EngineUnavailable):
                await collect(engine, user("hi"))
        assert engine.breaker.state == "open"
        with pytest.raises(EngineUnavailable, match="circuit open"):
            await collect(engine, user("hi"))
        assert len(fake.requests) == 2  # the open circuit did not reach the server
        now[0] = 31.0
        assert engine.breaker.state == "half-open"
        assert await collect(engine, user("hi"))
        assert engine.breaker.state == "closed" and len(fake.requests) == 3
    finally:
        await engine.close()


async def test_cancelling_the_answer_closes_the_stream(fake: FakeLMDeploy) -> None:
    fake.chunk_delay = 0.05
    fake.answer_words = 200
    engine = await started(fake.url)
    try:
        got: list[str] = []

        async def consume() -> None:
            async for chunk in engine.stream(user("long answer please"), GEN):
                got.append(chunk)

        task = asyncio.create_task(consume())
        while len(got) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if fake.closed_early:
                break
            await asyncio.sleep(0.02)
        assert fake.closed_early == 1  # the server saw the connection go away and stopped
    finally:
        await engine.close()


async def test_an_unreachable_server_is_a_clear_startup_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIHTTPEngine(settings(f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(StartupError, match=r"engine\.openai_http\.base_url"):
        await engine.start()
    await engine.close()


async def test_token_counts_come_from_the_tokenizer_when_one_is_given(fake: FakeLMDeploy, demo_model: Path) -> None:
    from transformers import AutoTokenizer

    exact = await started(fake.url, tokenizer=str(demo_model))
    estimate = await started(fake.url)
    try:
        sentence = "Die Waschmaschine zeigt den Fehler E18 und pumpt nicht ab."
        tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
        assert exact.count_tokens(sentence) == len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
        assert estimate.count_tokens(sentence) >= len(sentence.encode()) // 3  # a deliberate over-estimate
    finally:
        await exact.close()
        await estimate.close()


async def test_engine_selection_from_config(fake: FakeLMDeploy, tmp_path: Path) -> None:
    conf = make_settings(tmp_path, engine={"kind": "openai_http", "context_length": 16384,
                                           "openai_http": {"base_url": fake.url}})
    engine = build_engine(conf)
    assert isinstance(engine, OpenAIHTTPEngine) and engine.info.context_length == 16384
    await engine.start()
    await engine.check()
    await engine.close()


class TestHTTPEngineAgainstFakeLMDeploy(EngineContract):
    @pytest.fixture
    async def engine(self, fake: FakeLMDeploy) -> AsyncIterator[Engine]:
        fake.chunk_delay = 0.01
        fake.answer_words = 40
        e = await started(fake.url)
        yield e
        await e.close()


# -- a real server: transformers serve -----------------------------------------------------------


class TestHTTPEngineAgainstTransformersServe(EngineContract):
    @pytest.fixture
    async def engine(self, hf_server: str) -> AsyncIterator[Engine]:
        e = await started(hf_server, image_placeholder="", max_dynamic_patch=False, send_repetition_penalty=False)
        yield e
        await e.close()

    async def test_the_served_model_answers_a_photo_in_the_internvl_layout(self, engine: Engine) -> None:
        assert isinstance(engine, OpenAIHTTPEngine) and engine.model.endswith("demo")
        body = engine.request_body(user("what is it?", photo_part(image_bytes(640, 480)),
                                        photo_part(image_bytes(300, 300))), GEN)
        kinds = [p["type"] if p["type"] != "text" else p["text"] for p in body["messages"][-1]["content"]]
        assert kinds == ["Image-1: ", "image_url", "Image-2: ", "image_url", "what is it?"]
        sampled = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0)
        chunks = await collect(engine, user("what is it?", photo_part(image_bytes(640, 480))), sampled)
        assert chunks  # streamed, and the stream (which has no [DONE] here) ended cleanly
