"""Shared fixtures. The demo model is built once per test session, through the real code path."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.registry import AppSettings
from bot.config import Settings
from bot.engines.demo_model import make_demo_model
from tests.fakes.serving import free_port


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("models") / "demo")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with data under ``tmp_path``; ``overrides`` are nested dicts like the YAML file."""
    data: dict[str, Any] = {"data_dir": str(tmp_path / "data")}
    for key, value in overrides.items():
        data[key] = value
    return AppSettings(**data)


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **overrides: make_settings(tmp_path, **overrides)


def image_bytes(width: int = 640, height: int = 480, fmt: str = "JPEG", color: tuple[int, int, int] = (200, 40, 40),
                mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color if mode == "RGB" else None).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.media_corpus import FFMPEG, make_videos

    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (.ci/run installs it)")
    return make_videos(tmp_path_factory.mktemp("videos"))


ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="session")
def hf_server(demo_model: Path) -> Iterator[str]:
    """``transformers serve`` with the demo model, as a subprocess (see tests/hf_serve.py)."""
    port = free_port()
    log = open(demo_model.parent / "hf-serve.log", "w")  # noqa: SIM115 — closed below
    proc = subprocess.Popen([sys.executable, "-m", "tests.hf_serve", str(demo_model), "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (demo_model.parent / "hf-serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("transformers serve did not start")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class GatedEngine:
    """Wraps the echo engine for event-driven tests: an answer whose prompt contains a key of ``gates``
    waits for that event before its first word; ``fail_after`` makes answers containing a key raise after
    that many words; ``started``/``finished`` are set per prompt text as generation starts and ends."""

    def __init__(self, **echo: Any) -> None:
        import asyncio

        from bot.engines import EchoEngine

        self.echo = EchoEngine(**echo)
        self.info = self.echo.info
        self.max_concurrency = self.echo.max_concurrency
        self.gates: dict[str, asyncio.Event] = {}
        self.fail_after: dict[str, int] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self.order: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.echo, name)

    def event(self, table: dict[str, Any], text: str) -> Any:
        import asyncio

        return table.setdefault(text, asyncio.Event())

    async def stream(self, messages: Any, generation: Any) -> Any:
        text = messages[-1].text
        self.order.append(text)
        self.event(self.started, text).set()
        try:
            for key, gate in self.gates.items():
                if key in text:
                    await gate.wait()
            limit = next((n for key, n in self.fail_after.items() if key in text), None)
            count = 0
            async for chunk in self.echo.stream(messages, generation):
                if limit is not None and count >= limit:
                    raise RuntimeError("the model server went away")
                count += 1
                yield chunk
        finally:
            self.event(self.finished, text).set()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL cluster for the whole run (tests/postgres_cluster.py); ``postgres.database()`` gives
    each test a fresh database. Required in CI (``INTERNVL_BOT_REQUIRE_POSTGRES=1``), skipped elsewhere
    when PostgreSQL is not installed."""
    from tests import postgres_cluster

    if not postgres_cluster.available():
        if os.environ.get("INTERNVL_BOT_REQUIRE_POSTGRES"):
            raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
        pytest.skip("PostgreSQL is not installed")
    with postgres_cluster.cluster() as found:
        yield found
