"""The adapters this framework knows: their settings sections and how ``serve`` builds each one.

Adding an adapter is one module (or package) in ``adapters/`` with a settings class (an
:class:`~bot.config.AdapterSection`, validated with ``extra="forbid"`` like every section) and an adapter
class on :class:`~adapters.common.base.PlatformAdapter` (its ``build`` is what ``serve`` calls), plus one
line in :data:`ADAPTERS`. The core never imports this: the settings model with every adapter's section
(:class:`AppSettings`) is made here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from fastapi import APIRouter
from pydantic import create_model

from bot.config import AdapterSection, AdaptersSettings, Settings, load_settings
from bot.ops.checks import CheckResult
from bot.runtime import Runtime


class ServedAdapter(Protocol):
    """What ``serve`` needs from an adapter: its HTTP routes (webhooks, pages; may be None) and which of them the
    start-up banner lists, a check of its platform (``serve --check``), a start (a Telegram poller, a Slack
    socket) with its "ready" line or its failure as one line, and the two steps of shutdown: stop taking
    messages, then close."""

    name: str

    def router(self) -> APIRouter | None: ...
    def announced(self, router: APIRouter) -> list[str]: ...
    def ready_detail(self) -> str: ...
    def failure(self, exc: BaseException, doing: str) -> str: ...
    async def check(self) -> list[CheckResult]: ...
    async def start(self) -> None: ...
    def stop_intake(self) -> None: ...
    async def close(self) -> None: ...


def _load(path: str) -> Any:
    """``"package.module:Name"`` (or ``"package.module:Class.method"``)."""
    module, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module)
    for name in attribute.split("."):
        found = getattr(found, name)
    return found


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter: its name (the config section ``adapters.<name>`` and the platform of its conversations),
    ``"module:Class"`` of its settings, and ``"module:callable"`` building it for ``serve`` (None: not
    served, the console). A settings module stays light: the platform's SDK is imported by ``build``."""

    name: str
    settings_path: str
    build: str | None = None

    @property
    def settings(self) -> type[AdapterSection]:
        return cast(type[AdapterSection], _load(self.settings_path))

    def builder(self) -> Callable[[Runtime, Any], ServedAdapter]:
        assert self.build is not None
        return cast(Callable[[Runtime, Any], ServedAdapter], _load(self.build))


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("console", "adapters.console:ConsoleSettings"),
    AdapterSpec("web", "adapters.web:WebSettings", "adapters.web:build"),
    AdapterSpec("telegram", "adapters.telegram:TelegramSettings", "adapters.telegram:build"),
    AdapterSpec("slack", "adapters.slack:SlackSettings", "adapters.slack:build"),
    AdapterSpec("chatwoot", "adapters.chatwoot:ChatwootSettings", "adapters.chatwoot:build"),
    AdapterSpec("django_helpdesk", "adapters.django_helpdesk:DjangoHelpdeskSettings", "adapters.django_helpdesk:build"),
    AdapterSpec("helpdesk_api", "adapters.helpdesk_api:HelpdeskApiSettings", "adapters.helpdesk_api:build"),
)

AppAdaptersSettings = create_model(  # type: ignore[call-overload]
    "AppAdaptersSettings",
    __base__=AdaptersSettings,
    __doc__="One section per adapter (see adapters/registry.py).",
    **{spec.name: (spec.settings, spec.settings()) for spec in ADAPTERS},
)


class AppSettings(Settings):
    """Every setting, with a section for each registered adapter."""

    adapters: AppAdaptersSettings = AppAdaptersSettings()  # type: ignore[valid-type]


def load(path: str | os.PathLike[str] | None = None, *, required: bool = False) -> AppSettings:
    """:func:`bot.config.load_settings` with every adapter's section."""
    return cast(AppSettings, load_settings(path, required=required, model=AppSettings))


def servable(settings: Settings) -> list[tuple[AdapterSpec, Any]]:
    """The enabled adapters ``serve`` runs (the console is not one), with their settings, in registry order."""
    enabled = settings.enabled_adapters()
    return [(spec, enabled[spec.name]) for spec in ADAPTERS if spec.build is not None and spec.name in enabled]


def served(runtime: Runtime) -> list[ServedAdapter]:
    """The enabled adapters that ``serve`` runs, built on a started runtime, in registry order."""
    return [spec.builder()(runtime, conf) for spec, conf in servable(runtime.settings)]
