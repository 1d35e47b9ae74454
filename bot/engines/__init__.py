"""Engines: the model behind the conversation. :func:`build_engine` picks one from settings."""

from __future__ import annotations

import logging

from bot.config import Settings
from bot.engines.base import ChatMessage, Engine, EngineInfo, ImagePart, message_cost
from bot.engines.echo import EchoEngine

log = logging.getLogger(__name__)

__all__ = ["ChatMessage", "EchoEngine", "Engine", "EngineInfo", "ImagePart", "build_engine", "demo_model_path",
           "message_cost"]


def demo_model_path(settings: Settings) -> str:
    return str(settings.data_path / "demo-model")


def build_engine(settings: Settings) -> Engine:
    """The engine named by ``engine.kind``; the demo model is built on first use when none is set."""
    eng = settings.engine
    if eng.kind == "openai_http":
        from bot.engines.openai_http import OpenAIHTTPEngine

        return OpenAIHTTPEngine(eng.openai_http, max_concurrency=max(eng.max_concurrency, 1),
                                context_length=eng.context_length)
    if eng.kind == "lmdeploy":
        from bot.engines.lmdeploy import LMDeployEngine

        return LMDeployEngine(eng.lmdeploy, max_concurrency=eng.max_concurrency, context_length=eng.context_length)
    if eng.kind == "echo":
        return EchoEngine(max_concurrency=eng.max_concurrency, context_length=eng.context_length or 8192,
                          delay=eng.echo.delay_ms / 1000)
    from bot.engines.transformers import TransformersEngine

    path = eng.transformers.model
    if not path:
        path = demo_model_path(settings)
        from bot.engines.demo_model import is_demo_model, make_demo_model

        if not is_demo_model(path):
            log.warning("no model configured: building the random demo model in %s", path)
            make_demo_model(path)
    return TransformersEngine(
        eng.transformers, model_path=path, max_concurrency=eng.max_concurrency, context_length=eng.context_length,
        fast_resize=settings.media.resize == "fast",
    )
