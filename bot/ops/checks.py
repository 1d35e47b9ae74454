"""``serve --check``: what can be checked before serving, one line per part.

Each part (the store, the engine, every enabled adapter) gives :class:`CheckResult` values: ✓ or ✗, what was
checked (a URL without credentials), what answered, and for a ✗ the fix. Network failures become one line
(:func:`unreachable`), never a traceback; every line goes through :func:`~bot.ops.logs.redact` before it is
shown. The store and engine checks live here; each adapter checks its own platform
(``PlatformAdapter.check`` in adapters/common/base.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot.config import Settings
from bot.ops.logs import redact

log = logging.getLogger(__name__)

#: Seconds one part's check may take in all; the network calls inside use shorter timeouts of their own, so a
#: silent host is named by the call that waited on it before this limit is reached.
PART_TIMEOUT = 30.0
#: Connect and read timeouts of the checks' own HTTP requests.
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of ``serve --check``: whether ``part`` (``store``, ``engine``, an adapter's name) passed, and
    ``text``: what was checked, what answered and, when it failed, the fix."""

    ok: bool
    part: str
    text: str

    def line(self) -> str:
        """The line as printed: secrets redacted, whatever the text carries."""
        return redact(f"{'✓' if self.ok else '✗'} {self.part}: {self.text}")


def shown(url: str) -> str:
    """``url`` as a line may show it: without ``user:password@`` and without the query (tokens travel there)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def site(url: str) -> str:
    """``scheme://host[:port]/`` of ``url``: what "cannot reach" names."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/"


def reason(exc: BaseException) -> str:
    """A network library's error in a few words (httpx, aiohttp, psycopg, ssl, OSError), one line."""
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return text or type(exc).__name__


def unreachable(url: str, exc: BaseException, fix: str) -> str:
    """The line for a request that got no HTTP answer: ``cannot reach https://host/ (why) — fix``."""
    return f"cannot reach {site(url)} ({reason(exc)}) — {fix}"


def platform_said(response: httpx.Response, *keys: str) -> str:
    """What a platform's error answer says: the first of ``keys`` found in its JSON body, else its status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in keys:
            value = body.get(key)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str) and value:
                return f"HTTP {response.status_code} {value!r}"
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


async def run_part(part: str, check: Awaitable[list[CheckResult]], limit: float = PART_TIMEOUT) -> list[CheckResult]:
    """``check``'s results, or one ✗ line when it takes longer than ``limit`` seconds or fails unexpectedly (the
    traceback goes to the debug log: ``serve --check`` prints lines, not tracebacks)."""
    try:
        return await asyncio.wait_for(check, limit)
    except TimeoutError:
        return [CheckResult(False, part, f"no answer within {limit:g} s — is the network or the peer down?")]
    except Exception as exc:
        log.debug("the check of %s failed", part, exc_info=True)
        return [CheckResult(False, part, f"the check failed: {type(exc).__name__}: {reason(exc)}")]


# -- the store ------------------------------------------------------------------------------------------------


async def check_store(settings: Settings) -> list[CheckResult]:
    """SQLite: the file opens (migrated) and takes a write. PostgreSQL: it accepts a connection, its migration
    level against this version's, and a write (rolled back)."""
    if settings.store.backend == "postgres":
        return [await _check_postgres(settings)]
    from bot.store import SQLiteStore

    store = SQLiteStore(settings.store_path, settings.data_path / "attachments")
    try:
        await store.open()
        await store.check()
    except Exception as exc:
        return [CheckResult(False, "store", f"SQLite {settings.store_path} is not writable ({reason(exc)}) — check "
                                            "data_dir / store.path and the folder's permissions")]
    finally:
        await store.close()
    return [CheckResult(True, "store", f"SQLite {settings.store_path} is writable")]


async def _check_postgres(settings: Settings) -> CheckResult:
    import psycopg

    from bot.store.postgres.store import MIGRATIONS

    url = settings.store.url
    where = urlsplit(url)
    name = f"PostgreSQL {where.hostname}:{where.port or 5432}{where.path}"
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
    except Exception as exc:
        return CheckResult(False, "store", f"cannot connect to {name} ({reason(exc)}) — is it running, and does "
                                           f"{settings.store.url_env} name the right user, password and database?")
    expected = [migration for migration, _ in MIGRATIONS]
    try:
        async with conn:
            exists = await (await conn.execute("SELECT to_regclass('_migrations') IS NOT NULL")).fetchone()
            applied = [row[0] for row in await (await conn.execute("SELECT name FROM _migrations ORDER BY name")
                                                ).fetchall()] if exists and exists[0] else []
            pending = [m for m in expected if m not in applied]
            async with conn.transaction(force_rollback=True):
                if pending:  # what the migrations at start need: to create tables
                    await conn.execute("CREATE TABLE internvl_bot_check (x int)")
                else:  # what serving needs (the readiness probe's write)
                    await conn.execute("INSERT INTO stash (bucket, item, payload, at) VALUES ('check', 'x', '', 0) "
                                       "ON CONFLICT DO NOTHING")
    except Exception as exc:
        return CheckResult(False, "store", f"{name} accepts the connection but not a write ({reason(exc)}) — give "
                                           "the user rights on the database, or point at the primary, not a replica")
    unknown = [m for m in applied if m not in expected]
    level = f"migrations {len(expected) - len(pending)} of {len(expected)} applied"
    if unknown:
        return CheckResult(False, "store", f"{name}: {level}, and {', '.join(unknown)} that this version does not "
                                           "know — the database was migrated by a newer internvl-bot: run that one")
    if pending:
        return CheckResult(True, "store", f"{name} is writable; {level} — serve applies {', '.join(pending)} at start")
    return CheckResult(True, "store", f"{name} is writable; {level} (latest {expected[-1]})")


# -- the engine -----------------------------------------------------------------------------------------------


async def check_engine(settings: Settings) -> list[CheckResult]:
    """The model server names the configured model (OpenAI-compatible HTTP), or the model folder's config reads
    as an InternVL one (transformers, LMDeploy). The weights are not loaded: ``serve`` loads them."""
    kind = settings.engine.kind
    if kind == "openai_http":
        return [await _check_openai_http(settings)]
    if kind == "transformers":
        return [await asyncio.to_thread(_check_transformers, settings)]
    if kind == "lmdeploy":
        return [await asyncio.to_thread(_check_lmdeploy, settings)]
    return [CheckResult(True, "engine", "echo: no model (answers repeat the question; for wiring checks)")]


async def _check_openai_http(settings: Settings) -> CheckResult:
    from bot.engines.openai_http import OpenAIHTTPEngine
    from bot.errors import EngineError

    conf = settings.engine.openai_http
    url = f"{conf.base_url.rstrip('/')}/models"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            served = await OpenAIHTTPEngine(conf, client=client).served_models()
    except (httpx.HTTPStatusError, EngineError) as exc:
        said = f"HTTP {exc.response.status_code}" if isinstance(exc, httpx.HTTPStatusError) else str(exc)
        return CheckResult(False, "engine", f"GET {shown(url)}: {said} — check engine.openai_http.base_url (up to "
                                            f"and including /v1) and {conf.api_key_env}")
    except (httpx.HTTPError, OSError) as exc:
        return CheckResult(False, "engine", unreachable(url, exc, "is the model server running? Check "
                                                                  "engine.openai_http.base_url"))
    except ValueError as exc:  # an answer that is not the OpenAI list
        return CheckResult(False, "engine", f"GET {shown(url)} answered something else than a model list "
                                            f"({reason(exc)}) — check engine.openai_http.base_url")
    listed = ", ".join(served[:10]) + (f" and {len(served) - 10} more" if len(served) > 10 else "")
    if not served:
        return CheckResult(False, "engine", f"GET {shown(url)} lists no model — load one in the model server")
    if conf.model and conf.model not in served:
        return CheckResult(False, "engine", f"GET {shown(url)} does not serve {conf.model!r}; it serves {listed} — "
                                            "set engine.openai_http.model to one of them")
    if not conf.model:
        return CheckResult(True, "engine", f"GET {shown(url)} serves {listed} (engine.openai_http.model is empty: "
                                           f"{served[0]} is used)")
    return CheckResult(True, "engine", f"GET {shown(url)} serves {conf.model}")


def _check_transformers(settings: Settings) -> CheckResult:
    from bot.engines import demo_model_path
    from bot.engines.demo_model import is_demo_model
    from bot.engines.transformers import internvl_config
    from bot.errors import ModelLoadError

    path = settings.engine.transformers.model
    demo = not path
    if demo:
        path = demo_model_path(settings)
        if not is_demo_model(path):
            return CheckResult(True, "engine", f"transformers: engine.transformers.model is empty: serve builds the "
                                               f"random DEMO MODEL in {path} (answers are noise)")
    try:
        found, config = internvl_config(path)
    except ModelLoadError as exc:
        return CheckResult(False, "engine", str(exc))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    context = settings.engine.context_length or int(text.get("max_position_embeddings") or 8192)
    what = "the random DEMO MODEL (answers are noise)" if demo else "an InternVL -hf config"
    return CheckResult(True, "engine", f"transformers: {found} has {what} (context {context} tokens); the weights "
                                       "load when serve starts")


def _check_lmdeploy(settings: Settings) -> CheckResult:
    import importlib.util

    model = settings.engine.lmdeploy.model
    if importlib.util.find_spec("lmdeploy") is None:
        return CheckResult(False, "engine", "lmdeploy: LMDeploy is not installed — pip install 'internvl-bot[lmdeploy]'"
                                            " on the GPU host")
    if not model:
        return CheckResult(False, "engine", "lmdeploy: engine.lmdeploy.model is empty — set it to an InternVL "
                                            "checkpoint folder or hub id")
    local = Path(model).expanduser()
    if not local.exists():
        if model.startswith((".", "/", "~")) or model.count("/") != 1:
            return CheckResult(False, "engine", f"lmdeploy: model folder {model} not found — fix engine.lmdeploy.model")
        return CheckResult(True, "engine", f"lmdeploy: {model} is a hub id (fetched and loaded when serve starts)")
    try:
        config: Any = json.loads((local / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return CheckResult(False, "engine", f"lmdeploy: {local} has no readable config.json ({reason(exc)}) — point "
                                            "engine.lmdeploy.model at an InternVL checkpoint folder")
    kind = config.get("model_type", "?") if isinstance(config, dict) else "?"
    return CheckResult(True, "engine", f"lmdeploy: {local} has a {kind} config; the weights load when serve starts")


__all__ = ["HTTP_TIMEOUT", "PART_TIMEOUT", "CheckResult", "check_engine", "check_store", "platform_said", "reason",
           "run_part", "shown", "site", "unreachable"]
