"""``serve --check`` for Slack: ``auth.test``, and ``apps.connections.open`` in socket mode."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from slack_sdk.errors import SlackApiError

from adapters.slack.transport import EVENTS_PATH, PLATFORM, slack_error
from bot.ops.checks import CheckResult, reason, shown, unreachable

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter


async def check(adapter: SlackAdapter) -> list[CheckResult]:
    """``auth.test`` with the bot token; in socket mode ``apps.connections.open`` with the app token (the
    connection it offers is not opened); in http mode, the Request URL Slack must call."""
    url = f"{shown(adapter.conf.api_url).rstrip('/')}/auth.test"
    bot_fix = f"set {adapter.conf.bot_token_env} to the app's Bot User OAuth Token (xoxb-…, OAuth & Permissions)"
    try:
        auth = await adapter.client.auth_test()
    except Exception as exc:
        return [_refused(adapter, url, exc, bot_fix)]
    results = [CheckResult(True, PLATFORM, f"auth.test at {url}: the bot {auth.get('user')} ({auth.get('user_id')})"
                                           f" in {auth.get('team')} ({auth.get('url')})")]
    if adapter.conf.mode == "socket":
        url = f"{shown(adapter.conf.api_url).rstrip('/')}/apps.connections.open"
        try:
            await adapter.client.apps_connections_open(app_token=adapter.app_token)
        except Exception as exc:
            results.append(_refused(adapter, url, exc, f"set {adapter.conf.app_token_env} to an app-level token "
                                                   "(xapp-…, Basic Information → App-Level Tokens) with the "
                                                   "connections:write scope, and turn Socket Mode on"))
        else:
            results.append(CheckResult(True, PLATFORM, f"apps.connections.open at {url}: Slack offers a Socket "
                                                       f"Mode connection to the app token ({adapter.conf.app_token_env})"))
    else:
        results.append(CheckResult(True, PLATFORM, f"Slack must POST events to {adapter.served_at(EVENTS_PATH)} "
                                                   "(Event Subscriptions and Interactivity → Request URL)"))
    return results

def _refused(adapter: SlackAdapter, url: str, exc: BaseException, fix: str) -> CheckResult:
    """The ✗ line of a Web API call that failed: what Slack said, or why it could not be asked."""
    method = url.rsplit("/", 1)[1]
    if isinstance(exc, SlackApiError):
        error = slack_error(exc) or f"HTTP {exc.response.status_code}"
        if error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                     "not_allowed_token_type"):
            return CheckResult(False, PLATFORM, f"{method} at {url}: Slack said {error!r} — {fix}")
        return CheckResult(False, PLATFORM, f"{method} at {url}: Slack said {error!r} — check "
                                            "adapters.slack.api_url (https://slack.com/api/)")
    if isinstance(exc, (OSError, asyncio.TimeoutError, aiohttp.ClientError)):
        return CheckResult(False, PLATFORM, f"{method}: " + unreachable(
            adapter.conf.api_url, exc, "check adapters.slack.api_url and the network"))
    return CheckResult(False, PLATFORM, f"{method} at {url}: {type(exc).__name__}: {reason(exc)} — check "
                                        "adapters.slack.api_url")
