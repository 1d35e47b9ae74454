"""No secret ever reaches the log: messages, arguments, tracebacks, libraries' own lines."""

from __future__ import annotations

import logging

import httpx
import pytest

from bot.ops.logs import conversation_var, register_secret, setup_logging

TOKEN = "123456789:AAF-secret-token_value-abcdefghijklmn"


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Call it to set up logging as ``serve`` does; call what it returns to read what was logged."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("CHATWOOT_WEBHOOK_SECRET", "chatwoot-hook-secret")

    def start():  # type: ignore[no-untyped-def]
        setup_logging("DEBUG")
        return lambda: capsys.readouterr().err

    yield start
    logging.getLogger().handlers[:] = []


async def test_a_bot_token_in_a_url_logged_by_httpx_is_redacted(logged) -> None:  # type: ignore[no-untyped-def]
    logged = logged()
    logging.getLogger("httpx").setLevel(logging.INFO)  # what an operator debugging the network would do
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.post(f"https://api.telegram.org/bot{TOKEN}/getMe")
    out = logged()
    assert "getMe" in out and "[redacted]" in out
    assert TOKEN not in out and "AAF-secret" not in out


def test_tracebacks_arguments_and_library_loggers_are_redacted(logged) -> None:  # type: ignore[no-untyped-def]
    logged = logged()
    conversation_var.set("telegram:42")
    try:
        raise ConnectionError(f"POST https://api.telegram.org/bot{TOKEN}/sendMessage failed")
    except ConnectionError:
        logging.getLogger("telegram.ext.Updater").exception("polling failed for %s", TOKEN)
    logging.getLogger("bot").info("webhook secret %s", "chatwoot-hook-secret")
    logging.getLogger("slack_sdk").warning("token xoxb-1234567890-abcdefghijk in a header")
    register_secret("a-secret-read-from-a-file")
    logging.getLogger("adapters").error("oops a-secret-read-from-a-file")
    out = logged()
    assert "[telegram:42]" in out and "Traceback" in out
    for secret in (TOKEN, "chatwoot-hook-secret", "xoxb-1234567890-abcdefghijk", "a-secret-read-from-a-file"):
        assert secret not in out, secret
    assert out.count("[redacted]") >= 5


def test_a_logging_failure_does_not_print_the_secret(logged) -> None:  # type: ignore[no-untyped-def]
    logged = logged()
    logging.getLogger("bot").error("broken %d format", TOKEN)  # a bad format string: logging reports it
    out = logged()
    assert "logging error" in out and TOKEN not in out


def test_json_lines_are_redacted_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "slack-signing-secret-value")
    setup_logging("INFO", json_format=True)
    try:
        logging.getLogger("bot").warning("signature made with slack-signing-secret-value")
        out = capsys.readouterr().err
        assert "slack-signing-secret-value" not in out and "[redacted]" in out and out.startswith("{")
    finally:
        logging.getLogger().handlers[:] = []
