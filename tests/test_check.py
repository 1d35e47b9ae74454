"""``internvl-bot serve --check`` through the real CLI entry point, against the protocol-faithful fakes (Telegram,
Slack, Chatwoot, an OpenAI-compatible model server), a real django-helpdesk and a real PostgreSQL, all on
127.0.0.1: a good setup passes (exit 0), a wrong token is a ✗ naming its variable without showing it, an
unreachable URL is a ✗ naming the URL, a model the server does not serve is a ✗ listing what it serves."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from adapters.cli import main
from bot.ops.checks import CheckResult, run_part
from tests.fake_lmdeploy import MODEL, fake_lmdeploy
from tests.fakes.chatwoot_api import FakeChatwoot
from tests.fakes.serving import free_port, serve_asgi
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
WRONG_TELEGRAM = "987654321:AAF-not-the-bot-token_0123456789abc"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def line(self, start: str) -> str:
        """The one stdout line starting with ``start`` (``✓ telegram: getMe``)."""
        found = [line for line in self.out.splitlines() if line.startswith(start)]
        assert len(found) == 1, f"no single line starting {start!r} in:\n{self.out}\n{self.err}"
        return found[0]


async def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any],
                *flags: str) -> Run:
    """``internvl-bot --config FILE serve --check [flags]`` in a thread of its own (the CLI runs its own event
    loop), while the fakes answer on the test's loop."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **config}), encoding="utf-8")
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--config", str(path), "serve", "--check", *flags])
    out, err = capsys.readouterr()
    return Run(code, out, err)


ECHO = {"engine": {"kind": "echo"}}


# -- Telegram ---------------------------------------------------------------------------------------------


async def test_telegram_token_and_base_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeTelegram() as tg:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
        config = {**ECHO, "adapters": {"telegram": {"enabled": True, "base_url": tg.base_url}}}
        good = await check(tmp_path, capsys, config)
        assert good.code == 0, good.out + good.err
        assert good.line("✓ telegram:") == (f"✓ telegram: getMe at {tg.base_url}<TELEGRAM_BOT_TOKEN>/getMe: the bot "
                                            f"@{tg.username} (id {tg.bot_id}), polling mode")
        assert good.line("✓ store:") and good.line("✓ engine:") and good.line("✓ web:")
        # built, never started: no poll, no webhook change, no command menu
        assert {c.method for c in tg.calls} == {"getMe"}

        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", WRONG_TELEGRAM)
        wrong = await check(tmp_path, capsys, config)
        assert wrong.code == 1
        line = wrong.line("✗ telegram:")
        assert "Telegram said HTTP 401 'Unauthorized'" in line and "set TELEGRAM_BOT_TOKEN to the bot token" in line
        assert WRONG_TELEGRAM not in wrong.out + wrong.err and "not-the-bot-token" not in wrong.out + wrong.err
        assert "internvl-bot: 1 of 4 checks failed" in wrong.err

    port = free_port()
    gone = await check(tmp_path, capsys, {**ECHO, "adapters": {"telegram": {
        "enabled": True, "base_url": f"http://127.0.0.1:{port}/bot"}}})
    assert gone.code == 1
    assert gone.line("✗ telegram:") == (f"✗ telegram: getMe: cannot reach http://127.0.0.1:{port}/ (All connection "
                                        "attempts failed) — check adapters.telegram.base_url and the network")
    assert "Traceback" not in gone.err


async def test_telegram_webhook_mode_compares_the_webhook_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeTelegram() as tg, httpx.AsyncClient() as http:
        monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
        monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "hook-secret_123")
        config = {**ECHO, "server": {"public_url": "https://bot.example.com"},
                  "adapters": {"telegram": {"enabled": True, "mode": "webhook", "base_url": tg.base_url}}}
        unset = await check(tmp_path, capsys, config)
        assert unset.code == 1
        assert "✗ telegram: getWebhookInfo: no webhook set, Telegram must deliver to " \
               "https://bot.example.com/telegram/webhook — start serve" in unset.out

        async def set_webhook(url: str) -> None:
            answer = await http.post(f"{tg.base_url}{tg.token}/setWebhook", json={"url": url})
            assert answer.json()["ok"], answer.text

        await set_webhook("https://old.example.com/telegram/webhook")
        other = await check(tmp_path, capsys, config)
        assert other.code == 1
        assert "✗ telegram: getWebhookInfo: Telegram delivers to https://old.example.com/telegram/webhook, not " \
               "https://bot.example.com/telegram/webhook — another deployment" in other.out

        await set_webhook("https://bot.example.com/telegram/webhook")
        good = await check(tmp_path, capsys, config)
        assert good.code == 0, good.out
        assert "✓ telegram: getWebhookInfo: Telegram delivers to https://bot.example.com/telegram/webhook " \
               "(0 update(s) waiting)" in good.out
        assert tg.webhook is not None and tg.webhook["url"] == "https://bot.example.com/telegram/webhook"


# -- Slack ------------------------------------------------------------------------------------------------


async def test_slack_bot_and_app_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeSlack() as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", slack.app_token)
        config = {**ECHO, "adapters": {"slack": {"enabled": True, "api_url": slack.api_url}}}
        good = await check(tmp_path, capsys, config)
        assert good.code == 0, good.out + good.err
        assert good.line("✓ slack: auth.test").startswith(f"✓ slack: auth.test at {slack.api_url}auth.test: the bot ")
        assert good.line("✓ slack: apps.connections.open") == (
            f"✓ slack: apps.connections.open at {slack.api_url}apps.connections.open: Slack offers a Socket Mode "
            "connection to the app token (SLACK_APP_TOKEN)")

        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1111-not-a-real-bot-token")
        wrong = await check(tmp_path, capsys, config)
        assert wrong.code == 1
        line = wrong.line("✗ slack:")
        assert "auth.test" in line and "Slack said 'invalid_auth'" in line and "set SLACK_BOT_TOKEN" in line
        assert "not-a-real-bot-token" not in wrong.out + wrong.err

        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("SLACK_APP_TOKEN", slack.bot_token)  # the bot token where the app token goes
        swapped = await check(tmp_path, capsys, config)
        assert swapped.code == 1
        assert swapped.line("✓ slack: auth.test")
        line = swapped.line("✗ slack:")
        assert "apps.connections.open" in line and "'not_allowed_token_type'" in line and "SLACK_APP_TOKEN" in line
        assert slack.bot_token not in swapped.out + swapped.err

    port = free_port()
    gone = await check(tmp_path, capsys, {**ECHO, "adapters": {"slack": {
        "enabled": True, "api_url": f"http://127.0.0.1:{port}/api/"}}})
    assert gone.code == 1
    assert gone.line("✗ slack:").startswith(f"✗ slack: auth.test: cannot reach http://127.0.0.1:{port}/ (")
    assert "check adapters.slack.api_url" in gone.out and "Traceback" not in gone.err


async def test_slack_http_mode_names_the_request_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeSlack() as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("SLACK_SIGNING_SECRET", slack.signing_secret)
        run = await check(tmp_path, capsys, {**ECHO, "server": {"public_url": "https://bot.example.com/"},
                                             "adapters": {"slack": {"enabled": True, "mode": "http",
                                                                    "api_url": slack.api_url}}})
    assert run.code == 0, run.out
    assert "✓ slack: Slack must POST events to https://bot.example.com/slack/events" in run.out
    assert "apps.connections.open" not in run.out


# -- Chatwoot ---------------------------------------------------------------------------------------------


async def test_chatwoot_token_and_webhook_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    async with FakeChatwoot() as cw:
        monkeypatch.setenv("CHATWOOT_BOT_TOKEN", cw.bot_token)
        monkeypatch.setenv("CHATWOOT_WEBHOOK_SECRET", cw.secret or "")
        config = {**ECHO, "server": {"public_url": "https://bot.example.com"},
                  "adapters": {"chatwoot": {"enabled": True, "base_url": cw.url}}}
        good = await check(tmp_path, capsys, config)
        assert good.code == 0, good.out + good.err
        assert good.line("✓ chatwoot: GET").startswith(
            f"✓ chatwoot: GET {cw.url}/api/v1/profile: Chatwoot knows the agent bot token in CHATWOOT_BOT_TOKEN "
            "(HTTP 401 'Access to this endpoint is not authorized for bots'")
        assert good.line("✓ chatwoot: Chatwoot must") == (
            "✓ chatwoot: Chatwoot must POST the agent bot's events to https://bot.example.com/chatwoot/webhook "
            "(the bot's Webhook URL in Chatwoot)")
        assert [(c.name, c.status) for c in cw.calls] == [("profiles.show", 401)]

        monkeypatch.setenv("CHATWOOT_BOT_TOKEN", "cw-wrong-token-value")
        wrong = await check(tmp_path, capsys, config)
        assert wrong.code == 1
        line = wrong.line("✗ chatwoot:")
        assert "Chatwoot said HTTP 401 'Invalid Access Token'" in line and "set CHATWOOT_BOT_TOKEN" in line
        assert "cw-wrong-token-value" not in wrong.out + wrong.err

        monkeypatch.setenv("CHATWOOT_BOT_TOKEN", cw.agent_token)
        agent = await check(tmp_path, capsys, config)
        assert agent.code == 0
        assert "CHATWOOT_BOT_TOKEN is the user 'Ana Agent''s access token, not an agent bot's" in agent.out
        assert cw.agent_token not in agent.out + agent.err

    port = free_port()
    gone = await check(tmp_path, capsys, {**ECHO, "adapters": {"chatwoot": {
        "enabled": True, "base_url": f"http://127.0.0.1:{port}"}}})
    assert gone.code == 1
    assert gone.line("✗ chatwoot:") == (f"✗ chatwoot: GET /api/v1/profile: cannot reach http://127.0.0.1:{port}/ "
                                        "(All connection attempts failed) — check adapters.chatwoot.base_url and the "
                                        "network")
    # without server.public_url, the line says what is missing
    assert "<this service's public address>/chatwoot/webhook (server.public_url is not set)" in gone.out


# -- django-helpdesk (a real one) -------------------------------------------------------------------------


async def test_django_helpdesk_api_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpdesk_peer import HelpdeskSite, helpdesk_site

    monkeypatch.setenv("HELPDESK_WEBHOOK_TOKEN", "hd-webhook-token-value")
    async with helpdesk_site(tmp_path) as site:
        monkeypatch.setenv("HELPDESK_API_USER", HelpdeskSite.api_user)
        monkeypatch.setenv("HELPDESK_API_PASSWORD", HelpdeskSite.api_password)
        config = {**ECHO, "server": {"public_url": "https://bot.example.com"},
                  "adapters": {"django_helpdesk": {"enabled": True, "base_url": site.url}}}
        good = await check(tmp_path, capsys, config)
        assert good.code == 0, good.out + good.err
        assert good.line("✓ django_helpdesk: GET") == (
            f"✓ django_helpdesk: GET {site.url}/api/followups/: the API user 'bot' logs in and reads the follow-ups "
            "(0 in the helpdesk)")
        assert "https://bot.example.com/django-helpdesk/webhook?token=<the value of HELPDESK_WEBHOOK_TOKEN>" in good.out
        assert "hd-webhook-token-value" not in good.out + good.err

        monkeypatch.setenv("HELPDESK_API_PASSWORD", "not-the-password")
        wrong = await check(tmp_path, capsys, config)
        assert wrong.code == 1
        line = wrong.line("✗ django_helpdesk:")
        assert "the helpdesk said HTTP 403 'Invalid username/password.'" in line
        assert "set HELPDESK_API_USER and HELPDESK_API_PASSWORD to a staff user's name and password" in line
        assert "not-the-password" not in wrong.out + wrong.err

    port = free_port()
    gone = await check(tmp_path, capsys, {**ECHO, "adapters": {"django_helpdesk": {
        "enabled": True, "base_url": f"http://127.0.0.1:{port}"}}})
    assert gone.code == 1
    assert gone.line("✗ django_helpdesk:").startswith(
        f"✗ django_helpdesk: GET /api/followups/: cannot reach http://127.0.0.1:{port}/ (")


# -- the helpdesk API -------------------------------------------------------------------------------------


async def test_helpdesk_api_callback_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HELPDESK_API_SECRET", "helpdesk-api-secret-value")
    received: list[str] = []

    async def hook(request: Any) -> Response:
        received.append(request.method)
        return Response(status_code=204)

    async with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        good = await check(tmp_path, capsys, {**ECHO, "adapters": {"helpdesk_api": {
            "enabled": True, "callback_url": f"{url}/hook"}}})
    assert good.code == 0, good.out + good.err
    assert good.line("✓ helpdesk_api: callback_url") == (
        f"✓ helpdesk_api: callback_url {url}/hook: 127.0.0.1 (127.0.0.1) takes connections; 127.0.0.1 is a loopback "
        "address (fine for a helpdesk on your network); replies are POSTed there, signed")
    assert received == []  # a connection, not a delivery

    port = free_port()
    gone = await check(tmp_path, capsys, {**ECHO, "adapters": {"helpdesk_api": {
        "enabled": True, "callback_url": f"http://127.0.0.1:{port}/hook?key=abc"}}})
    assert gone.code == 1
    assert gone.line("✗ helpdesk_api:").startswith(f"✗ helpdesk_api: callback_url: cannot reach http://127.0.0.1:{port}/ (")
    assert "key=abc" not in gone.out

    polling = await check(tmp_path, capsys, {**ECHO, "adapters": {"helpdesk_api": {"enabled": True}}})
    assert polling.code == 0 and "✓ helpdesk_api: no callback_url: the helpdesk polls the replies" in polling.out


# -- PostgreSQL (a real cluster) --------------------------------------------------------------------------


async def test_postgres_connection_and_migration_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str], postgres: Any) -> None:
    from bot.store.postgres.store import MIGRATIONS, PostgresStore
    from tests.postgres_cluster import PASSWORD

    url = postgres.database()
    database = url.rsplit("/", 1)[1]
    where = f"PostgreSQL 127.0.0.1:{postgres.port}/{database}"
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", url)
    monkeypatch.setenv("INTERNVL_BOT_WEB_SESSION_SECRET", "web-session-secret-value")
    config = {**ECHO, "store": {"backend": "postgres"}}
    names = [name for name, _ in MIGRATIONS]
    fresh = await check(tmp_path, capsys, config)
    assert fresh.code == 0, fresh.out + fresh.err
    assert fresh.line("✓ store:") == (f"✓ store: {where} is writable; migrations 0 of {len(names)} applied — serve "
                                      f"applies {', '.join(names)} at start")
    assert postgres.psql("SELECT to_regclass('_migrations') IS NULL", database).strip() == "t"  # nothing migrated

    store = PostgresStore(url)
    await store.open()
    await store.close()
    level = await check(tmp_path, capsys, config)
    assert level.code == 0
    assert level.line("✓ store:") == (f"✓ store: {where} is writable; migrations {len(names)} of {len(names)} "
                                      f"applied (latest {names[-1]})")

    postgres.psql("INSERT INTO _migrations (name, applied_at) VALUES ('p999_from_the_future', 0)", database)
    newer = await check(tmp_path, capsys, config)
    assert newer.code == 1
    assert "p999_from_the_future that this version does not know" in newer.line("✗ store:")

    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", url.replace(PASSWORD, "wrong-db-password"))
    refused = await check(tmp_path, capsys, config)
    assert refused.code == 1
    line = refused.line("✗ store:")
    assert line.startswith(f"✗ store: cannot connect to {where} (") and "INTERNVL_BOT_DATABASE_URL" in line
    assert "wrong-db-password" not in refused.out + refused.err and PASSWORD not in refused.out + refused.err

    port = free_port()
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", f"postgresql://bot:{PASSWORD}@127.0.0.1:{port}/{database}")
    gone = await check(tmp_path, capsys, config)
    assert gone.code == 1 and f"✗ store: cannot connect to PostgreSQL 127.0.0.1:{port}/{database} (" in gone.out


# -- the engine -------------------------------------------------------------------------------------------


async def test_openai_http_engine_names_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with fake_lmdeploy() as server:
        def config(model: str) -> dict[str, Any]:
            return {"engine": {"kind": "openai_http", "openai_http": {"base_url": server.url, "model": model}}}

        good = await check(tmp_path, capsys, config(MODEL))
        assert good.code == 0, good.out + good.err
        assert good.line("✓ engine:") == f"✓ engine: GET {server.url}/models serves {MODEL}"
        first = await check(tmp_path, capsys, config(""))
        assert first.line("✓ engine:") == (f"✓ engine: GET {server.url}/models serves {MODEL} "
                                           f"(engine.openai_http.model is empty: {MODEL} is used)")
        wrong = await check(tmp_path, capsys, config("OpenGVLab/InternVL3-1B"))
        assert wrong.code == 1
        assert wrong.line("✗ engine:") == (f"✗ engine: GET {server.url}/models does not serve "
                                           f"'OpenGVLab/InternVL3-1B'; it serves {MODEL} — set "
                                           "engine.openai_http.model to one of them")
        assert server.requests == []  # nothing generated

    port = free_port()
    gone = await check(tmp_path, capsys, {"engine": {"kind": "openai_http", "openai_http": {
        "base_url": f"http://127.0.0.1:{port}/v1", "model": MODEL}}})
    assert gone.code == 1
    assert gone.line("✗ engine:") == (f"✗ engine: cannot reach http://127.0.0.1:{port}/ (All connection attempts "
                                      "failed) — is the model server running? Check engine.openai_http.base_url")


async def test_a_model_folder_is_checked_by_its_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       demo_model: Path) -> None:
    demo = await check(tmp_path, capsys, {"engine": {"transformers": {"model": str(demo_model)}}})
    assert demo.code == 0, demo.out + demo.err
    assert demo.line("✓ engine:").startswith(f"✓ engine: transformers: {demo_model} has an InternVL -hf config "
                                             "(context ")
    missing = await check(tmp_path, capsys, {"engine": {"transformers": {"model": "/nowhere/model"}}})
    assert missing.code == 1
    assert missing.line("✗ engine:") == ("✗ engine: engine.transformers.model: model folder /nowhere/model not found "
                                         "— fix the path, or leave the key empty to use the demo model")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    other = await check(tmp_path, capsys, {"engine": {"transformers": {"model": str(tmp_path / "not-a-model")}}})
    assert other.code == 1 and "is a 'llama' model, not InternVL" in other.line("✗ engine:")


# -- the whole command ------------------------------------------------------------------------------------


async def test_offline_contacts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", WRONG_TELEGRAM)
    port = free_port()
    config = {"engine": {"kind": "openai_http", "openai_http": {"base_url": f"http://127.0.0.1:{port}/v1"}},
              "adapters": {"telegram": {"enabled": True, "base_url": f"http://127.0.0.1:{port}/bot"}}}
    run = await check(tmp_path, capsys, config, "--offline")
    assert run.code == 0, run.out + run.err
    assert run.out.splitlines() == [
        f"ok: store {tmp_path / 'data' / 'internvl-bot.sqlite3'} is writable",
        f"ok: engine openai_http at http://127.0.0.1:{port}/v1 (not contacted: --offline)",
        "ok: adapters enabled: web, telegram"]


async def test_a_part_that_does_not_answer_is_one_line() -> None:
    never = asyncio.Event()

    async def hangs() -> list[CheckResult]:
        await never.wait()
        return []

    assert await run_part("slowpoke", hangs(), limit=0.05) == [
        CheckResult(False, "slowpoke", "no answer within 0.05 s — is the network or the peer down?")]


async def test_the_installed_command_never_prints_the_token(tmp_path: Path) -> None:
    """The real process: logging and all, the wrong token is nowhere in what it prints."""
    async with FakeTelegram() as tg:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "data"), **ECHO,
            "adapters": {"telegram": {"enabled": True, "base_url": tg.base_url}}}), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TELEGRAM_BOT_TOKEN": WRONG_TELEGRAM}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adapters.cli", "serve", "--check", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
    text = out.decode() + err.decode()
    assert process.returncode == 1, text
    assert "✗ telegram: getMe at" in text and "TELEGRAM_BOT_TOKEN" in text
    assert WRONG_TELEGRAM not in text and WRONG_TELEGRAM.split(":")[1] not in text
