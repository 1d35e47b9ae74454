"""Shared fixtures. The demo model is built once per test session, through the real code path."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.config import Settings
from bot.demo_model import make_demo_model


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_model(tmp_path_factory.mktemp("models") / "demo")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with data under ``tmp_path``; ``overrides`` are nested dicts like the YAML file."""
    data: dict[str, Any] = {"data_dir": str(tmp_path / "data")}
    for key, value in overrides.items():
        data[key] = value
    return Settings(**data)


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
