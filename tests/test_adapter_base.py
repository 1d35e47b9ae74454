"""The adapter base (adapters/common/base.py), through the README's "Add your own platform" example: its
code is taken from README.md and run against a real HTTP receiver, so the example cannot rot."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.registry import AdapterSpec
from adapters.server import Service, build_app
from bot.engines import EchoEngine
from bot.errors import StartupError
from bot.runtime import Runtime
from tests.conftest import ROOT, make_settings
from tests.fakes.serving import serve_asgi

TOKEN = "mychat-token-123"


def example() -> ModuleType:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Add your own platform", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "README's example is gone"
    assert len(code.group(1).splitlines()) <= 65, "the example grew past 60-odd lines"
    spec = importlib.util.spec_from_loader("mychat_example", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mychat_example"] = module  # dataclasses and pydantic resolve names through it
    exec(compile(code.group(1), "README.md#add-your-own-platform", "exec"), module.__dict__)
    return module


@pytest.fixture
async def chat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    fail = {"times": 0}

    async def replies(request: Request) -> JSONResponse:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if fail["times"]:
            fail["times"] -= 1
            return JSONResponse({"error": "busy"}, status_code=503)
        received.append(await request.json())
        return JSONResponse({"id": len(received)})

    mychat = example()
    monkeypatch.setenv("MYCHAT_TOKEN", TOKEN)
    async with serve_asgi(Starlette(routes=[Route("/replies", replies, methods=["POST"])])) as receiver:
        settings = make_settings(tmp_path)
        conf = mychat.MyChatSettings(enabled=True, reply_url=f"{receiver}/replies")
        async with Runtime(settings, engine=EchoEngine()) as runtime:
            assert runtime.manager is not None
            adapter = mychat.MyChatAdapter.build(runtime, conf)
            service = Service(runtime.settings, runtime, [adapter])
            service.ready = True
            async with serve_asgi(build_app(service)) as url:
                await runtime.manager.start()
                await adapter.start()
                try:
                    yield {"url": url, "received": received, "fail": fail, "runtime": runtime, "adapter": adapter,
                           "module": mychat}
                finally:
                    adapter.stop_intake()
                    await runtime.manager.stop(2)
                    await adapter.close()


async def _until(check: Any, timeout: float = 10) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_the_readme_example_answers_once_and_keeps_what_the_chat_refused(chat: dict[str, Any]) -> None:
    hook = f"{chat['url']}/hooks/mychat"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    message = {"id": "m1", "chat": "room-1", "user": "ana", "text": "why does my kettle click?"}
    async with httpx.AsyncClient() as client:
        assert (await client.post(hook, json=message)).status_code == 401  # no token
        assert (await client.post(hook, json={"chat": "room-1"}, headers=auth)).status_code == 400
        assert (await client.post(hook, json=message, headers=auth)).status_code == 202
        await _until(lambda: chat["received"])
        assert (await client.post(hook, json=message, headers=auth)).status_code == 202  # a redelivery
        chat["fail"]["times"] = 1  # the chat refuses the next answer once: the outbox sends it again
        later = {"id": "m2", "chat": "room-1", "user": "ana", "text": "and the filter?"}
        assert (await client.post(hook, json=later, headers=auth)).status_code == 202
        await _until(lambda: len(chat["received"]) >= 2, 20)
        manager = chat["runtime"].manager
        await asyncio.wait_for(manager.idle(), 10)
        assert chat["received"] == [{"chat": "room-1", "text": "echo: why does my kettle click?"},
                                    {"chat": "room-1", "text": "echo: and the filter?"}]
        chat["adapter"].stop_intake()
        assert (await client.post(hook, json={**message, "id": "m3"}, headers=auth)).status_code == 503


def test_a_missing_secret_or_setting_stops_start_up_with_one_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mychat = example()
    monkeypatch.delenv("MYCHAT_TOKEN", raising=False)

    class Manager:
        def register(self, channel: Any) -> None:
            raise AssertionError("not reached")

    settings = make_settings(tmp_path)
    with pytest.raises(StartupError) as missing:
        mychat.MyChatAdapter(Manager(), settings, mychat.MyChatSettings(reply_url="http://127.0.0.1:9/r"))
    assert str(missing.value) == ("adapters.mychat: set the environment variable MYCHAT_TOKEN to the bearer token, "
                                  "or set adapters.mychat.enabled: false")
    monkeypatch.setenv("MYCHAT_TOKEN", TOKEN)
    with pytest.raises(StartupError, match=r"^adapters.mychat: set reply_url to the URL answers are POSTed to$"):
        mychat.MyChatAdapter(Manager(), settings, mychat.MyChatSettings())


def test_the_registry_loads_a_class_method_path() -> None:
    spec = AdapterSpec("chatwoot", "adapters.chatwoot:ChatwootSettings", "adapters.chatwoot:ChatwootAdapter.build")
    from adapters.chatwoot import ChatwootAdapter, ChatwootSettings

    assert spec.settings is ChatwootSettings
    assert spec.builder() == ChatwootAdapter.build
