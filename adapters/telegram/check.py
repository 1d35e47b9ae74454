"""``serve --check`` for Telegram: ``getMe`` with the token and, in webhook mode, ``getWebhookInfo``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from adapters.telegram import PLATFORM, WEBHOOK_PATH
from bot.ops.checks import HTTP_TIMEOUT, CheckResult, platform_said, shown, unreachable

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter



async def check(adapter: TelegramAdapter) -> list[CheckResult]:
    """``getMe`` with the token; in webhook mode also ``getWebhookInfo``: Telegram delivers to
    ``server.public_url`` + ``/telegram/webhook``. Lines show the token as the variable that holds it."""
    http = adapter.http_client(timeout=HTTP_TIMEOUT)
    me, failed = await _ask(adapter, http, "getMe")
    if failed is not None:
        return [failed]
    results = [CheckResult(True, PLATFORM, f"getMe at {_where(adapter, 'getMe')}: the bot @{me.get('username')} "
                                           f"(id {me.get('id')}), {adapter.conf.mode} mode")]
    if adapter.conf.mode != "webhook":
        return results
    info, failed = await _ask(adapter, http, "getWebhookInfo")
    if failed is not None:
        return [*results, failed]
    expected = adapter.settings.server.public_url.rstrip("/") + WEBHOOK_PATH
    url = str(info.get("url") or "")
    if url == expected:
        error = info.get("last_error_message")
        last = f"; Telegram's last delivery failed: {error!r}" if error else ""
        results.append(CheckResult(True, PLATFORM, f"getWebhookInfo: Telegram delivers to {expected} "
                                                    f"({info.get('pending_update_count', 0)} update(s) waiting{last})"))
    elif not url:
        results.append(CheckResult(False, PLATFORM, f"getWebhookInfo: no webhook set, Telegram must deliver to "
                                                    f"{expected} — start serve (it calls setWebhook at start)"))
    else:
        results.append(CheckResult(False, PLATFORM, f"getWebhookInfo: Telegram delivers to {shown(url)}, not "
                                                    f"{expected} — another deployment of this bot (serve sets "
                                                    "its own at start: stop the other, or give each a bot of "
                                                    "its own), or fix server.public_url"))
    return results

def _where(adapter: TelegramAdapter, method: str) -> str:
    return f"{shown(adapter.conf.base_url)}<{adapter.conf.token_env}>/{method}"

async def _ask(adapter: TelegramAdapter, http: httpx.AsyncClient, method: str) -> tuple[dict[str, Any], CheckResult | None]:
    """One Bot API call without parameters: its result, or the ✗ line saying what Telegram said."""
    try:
        response = await http.post(f"{adapter.conf.base_url}{adapter.app.bot.token}/{method}")
    except httpx.HTTPError as exc:
        return {}, CheckResult(False, PLATFORM, f"{method}: " + unreachable(
            adapter.conf.base_url, exc, "check adapters.telegram.base_url and the network"))
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("ok") is True and isinstance(body.get("result"), dict):
        return body["result"], None
    said = platform_said(response, "description")
    if isinstance(body, dict) and response.status_code == 401:
        fix = f"set {adapter.conf.token_env} to the bot token from @BotFather (Telegram does not know this one)"
    elif isinstance(body, dict) and response.status_code == 404:
        fix = (f"{adapter.conf.token_env} is not shaped like a bot token (123456:ABC…, from @BotFather), or "
               "adapters.telegram.base_url is not the Bot API")
    else:
        fix = "check adapters.telegram.base_url (the Bot API, ending in /bot)"
    return {}, CheckResult(False, PLATFORM, f"{method} at {_where(adapter, method)}: Telegram said {said} — {fix}")

