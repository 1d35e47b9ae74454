"""What ``internvl-bot serve`` prints when a platform refuses its token or cannot be reached: one line naming
the adapter, the URL and the fix, and never the token — through the real CLI, against the fake platforms."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.serving import free_port
from tests.fakes.slack_api import FakeSlack
from tests.fakes.telegram_api import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
WRONG_TELEGRAM = "7004039802:AAunWrongWrongWrongWrongWrongWrong12345"
WRONG_SLACK = "xoxb-1111-2222-WrongWrongWrongWrong"


async def serve(folder: Path, config: str, env: dict[str, str]) -> tuple[int, str]:
    (folder / "config.yaml").write_text(config, encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.cli", "serve", "--port", str(free_port()), cwd=folder,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def error_line(stderr: str) -> str:
    """The service's own lines (logging's are time-stamped): exactly one, the error."""
    own = [line for line in stderr.splitlines() if line.startswith("internvl-bot:")]
    assert len(own) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return own[0]


def telegram_config(base_url: str) -> str:
    return f"engine:\n  kind: echo\nadapters:\n  telegram:\n    enabled: true\n    base_url: {base_url}\n"


async def test_a_wrong_telegram_token_is_one_line_without_the_token(tmp_path: Path) -> None:
    async with FakeTelegram() as tg:
        rc, err = await serve(tmp_path, telegram_config(tg.base_url), {"TELEGRAM_BOT_TOKEN": WRONG_TELEGRAM})
    line = error_line(err)
    assert rc == 2
    assert line.startswith("internvl-bot: error: adapters.telegram:") and "TELEGRAM_BOT_TOKEN" in line
    assert "Unauthorized" in line and "@BotFather" in line and tg.base_url in line
    assert WRONG_TELEGRAM not in err and WRONG_TELEGRAM.split(":")[1] not in err


async def test_an_unreachable_telegram_names_the_url(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/bot"
    rc, err = await serve(tmp_path, telegram_config(dead), {"TELEGRAM_BOT_TOKEN": WRONG_TELEGRAM})
    line = error_line(err)
    assert rc == 2 and f"cannot reach {dead}" in line and "ConnectError" in line
    assert "adapters.telegram.base_url" in line and WRONG_TELEGRAM not in err


def slack_config(api_url: str) -> str:
    return (f"engine:\n  kind: echo\nadapters:\n  slack:\n    enabled: true\n    mode: socket\n"
            f"    api_url: {api_url}\n")


async def test_a_wrong_slack_token_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    async with FakeSlack() as slack:
        rc, err = await serve(tmp_path, slack_config(slack.api_url),
                              {"SLACK_BOT_TOKEN": WRONG_SLACK, "SLACK_APP_TOKEN": slack.app_token})
        line = error_line(err)
        assert rc == 2 and "adapters.slack:" in line and "SLACK_BOT_TOKEN" in line and "invalid_auth" in line
        assert WRONG_SLACK not in err
        # the app-level token is the one Socket Mode needs: named when it is the wrong one
        wrong_app = "xapp-1-A111-222-WrongWrongWrong"
        rc, err = await serve(tmp_path, slack_config(slack.api_url),
                              {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_APP_TOKEN": wrong_app})
    line = error_line(err)
    assert rc == 2 and "SLACK_APP_TOKEN" in line and wrong_app not in err


async def test_an_unreachable_slack_names_the_url(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    rc, err = await serve(tmp_path, slack_config(dead), {"SLACK_BOT_TOKEN": WRONG_SLACK,
                                                         "SLACK_APP_TOKEN": "xapp-1-A111-222-Whatever"})
    line = error_line(err)
    assert rc == 2 and f"cannot reach {dead}" in line and "adapters.slack.api_url" in line
