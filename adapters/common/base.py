"""What every platform adapter shares, written once.

A platform adapter subclasses :class:`PlatformAdapter`: it gets the manager, the settings and its own
section; :meth:`~PlatformAdapter.secret` reads a secret from the environment variable its settings name
(a missing one stops start-up with one line naming the variable and how to turn the adapter off; the
value never reaches a log); :meth:`~PlatformAdapter.http_client` gives it one HTTP client it closes on
:meth:`~PlatformAdapter.close`; ``accepting`` is False until :meth:`~PlatformAdapter.start` and after
:meth:`~PlatformAdapter.stop_intake` (webhooks answer :meth:`~PlatformAdapter.restarting`, a 503 the
platform retries); :meth:`~PlatformAdapter.build` is what ``serve`` calls (adapters/registry.py).

An adapter only writes what is its platform's own: how events become
:class:`~bot.types.IncomingMessage` and how replies are rendered. The README's "Add your own platform"
shows a whole one in about 60 lines (tested in tests/test_adapter_base.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from bot.config import AdapterSection, Settings
from bot.errors import StartupError, describe
from bot.ops.checks import CheckResult
from bot.ops.logs import redact, register_secret

if TYPE_CHECKING:
    from bot.conversation.manager import ConversationManager
    from bot.runtime import Runtime

Conf = TypeVar("Conf", bound=AdapterSection)
Self = TypeVar("Self", bound="PlatformAdapter[Any]")


class PlatformAdapter(Generic[Conf]):
    """See the module docstring. Subclasses set ``name`` (the config section ``adapters.<name>`` and the
    platform of their conversations) and call ``super().__init__`` first."""

    name: ClassVar[str]

    def __init__(self, manager: ConversationManager, settings: Settings, conf: Conf) -> None:
        self.manager = manager
        self.settings = settings
        self.conf = conf
        self.accepting = False
        self._clients: list[httpx.AsyncClient] = []
        #: the platform's URL (no credentials) and the key under ``adapters.<name>`` that sets it, and how
        #: to get a good credential: what the one-line errors of :meth:`failure` name (subclasses set them)
        self.endpoint = ""
        self.endpoint_key = ""
        self.credential_fix = ""

    # -- set-up -----------------------------------------------------------------------------

    def secret(self, env: str, what: str, *, required: bool = True) -> str:
        """The secret in the environment variable ``env`` (``what`` says what it is, for the error); never
        logged from here on. Missing and ``required``: start-up stops with one line saying what to set."""
        value = os.environ.get(env, "").strip()
        if not value and required:
            raise StartupError(f"adapters.{self.name}: set the environment variable {env} to {what}, or set "
                               f"adapters.{self.name}.enabled: false")
        if value:
            register_secret(value)
        return value

    def setting(self, value: str, key: str, what: str) -> str:
        """A setting that must be given (``key`` under ``adapters.<name>``); start-up stops without it."""
        if not value:
            raise StartupError(f"adapters.{self.name}: set {key} to {what}")
        return value

    def http_client(self, given: httpx.AsyncClient | None = None, **options: Any) -> httpx.AsyncClient:
        """``given`` (a test's, left open), or a new client with ``options`` that :meth:`close` closes."""
        if given is not None:
            return given
        client = httpx.AsyncClient(**options)
        self._clients.append(client)
        return client

    # -- one-line errors ---------------------------------------------------------------------

    def refused_credentials(self, exc: BaseException) -> tuple[str, str] | None:
        """When ``exc`` means the platform refused a credential: the environment variable that holds it and
        what the platform said (None: something else). Subclasses know their platform's errors (Telegram's
        InvalidToken, Slack's ``invalid_auth``)."""
        return None

    def failure(self, exc: BaseException, doing: str) -> str:
        """``exc``, raised while ``doing`` something with the platform, as one line: which adapter, which URL
        (no credentials), what failed and what to check — never a secret, not even from a library's text."""
        prefix = f"adapters.{self.name}: {doing}"
        refused = self.refused_credentials(exc)
        if refused is not None:
            env, said = refused
            fix = f" — {self.credential_fix}" if self.credential_fix else ""
            return redact(f"{prefix}: {self.endpoint or 'the platform'} refused the credential in the environment "
                          f"variable {env} ({said}){fix}")
        cause = network_cause(exc)
        if cause is not None:
            key = f"adapters.{self.name}.{self.endpoint_key}" if self.endpoint_key else f"adapters.{self.name}"
            return redact(f"{prefix}: cannot reach {self.endpoint or 'the platform'} ({describe(cause)}) — check "
                          f"{key}, the network, DNS and any proxy")
        return redact(f"{prefix} failed: {describe(exc)}")

    def served_at(self, path: str) -> str:
        """The URL a platform must call for ``path`` of this service: ``server.public_url`` + ``path``, or, while
        it is not set, a placeholder saying so (``serve --check`` prints it)."""
        public = self.settings.server.public_url
        if public:
            return public.rstrip("/") + path
        return f"<this service's public address>{path} (server.public_url is not set)"

    # -- checks -----------------------------------------------------------------------------

    async def check(self) -> list[CheckResult]:
        """``serve --check``: ask the platform whether this adapter's settings and secrets work, one
        :class:`~bot.ops.checks.CheckResult` per thing asked, on a built adapter that is never started (no
        message is taken). Network failures are ✗ results naming the URL and the fix, not exceptions. The base
        asks nothing: being built already checked the settings and the secrets' presence; adapters that talk to
        a platform override this next to the code that knows it."""
        return [CheckResult(True, self.name, "settings and secrets accepted (this adapter asks its platform "
                                             "nothing: it has no check of its own)")]

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.accepting = True

    def stop_intake(self) -> None:
        self.accepting = False

    async def close(self) -> None:
        self.accepting = False
        for client in self._clients:
            await client.aclose()
        self._clients.clear()

    def router(self) -> APIRouter | None:
        return None

    def announced(self, router: APIRouter) -> list[str]:
        """The paths of ``router`` the start-up banner lists (default: all of them, once each)."""
        return list(dict.fromkeys(getattr(route, "path", "") for route in router.routes if getattr(route, "path", "")))

    def ready_detail(self) -> str:
        """What the "ready" line says after a start (``@bot, polling``; the helpdesk's URL)."""
        return self.endpoint

    @staticmethod
    def restarting(status: int = 503) -> JSONResponse:
        """What a webhook answers while intake is off: a status the platform delivers again after (503 by
        default; Chatwoot retries only 429 and 500)."""
        return JSONResponse({"error": "restarting"}, status_code=status, headers={"Retry-After": "1"})

    @classmethod
    def build(cls: type[Self], runtime: Runtime, conf: Any) -> Self:
        """``serve``'s constructor (adapters/registry.py)."""
        assert runtime.manager is not None
        return cls(runtime.manager, runtime.settings, conf)


try:  # Slack's SDK speaks aiohttp; it comes with the slack extra only
    from aiohttp import ClientConnectionError as _AiohttpConnectionError
except ImportError:
    _AiohttpConnectionError = ConnectionError  # type: ignore[assignment,misc]

_UNREACHABLE = (httpx.TransportError, _AiohttpConnectionError, ConnectionError, socket.gaierror,
                TimeoutError, asyncio.TimeoutError)


def network_cause(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says the platform could not be reached (a refused connection, a name
    that does not resolve, a time-out), or None. SDKs wrap them (PTB's NetworkError ``from`` httpx's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _UNREACHABLE):
            return current
        current = current.__cause__ or current.__context__
    return None


__all__ = ["PlatformAdapter", "network_cause"]
