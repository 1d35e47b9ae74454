"""The Slack adapter: mentions in channels, DMs and the AI-assistant panel, through slack-bolt.

This module holds the settings and ``build()``; :mod:`adapters.slack.adapter` the adapter itself
(imported only when Slack is enabled, so the SDK is needed only then: ``pip install -e '.[slack]'``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from bot.config import AdapterSection

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter
    from bot.runtime import Runtime


class SlackSettings(AdapterSection):
    """``adapters.slack``: a Slack app (create it from slack-app-manifest.yaml)."""

    secrets: ClassVar[dict[str, str]] = {"bot_token_env": "the app's Bot User OAuth Token (xoxb-…)"}

    enabled: bool = False
    mode: Literal["socket", "http"] = Field("socket", description="socket (no public URL) | http (Events API)")
    bot_token_env: str = Field("SLACK_BOT_TOKEN", description="environment variable with the bot token (xoxb-…)")
    app_token_env: str = Field("SLACK_APP_TOKEN", description="environment variable with the app token (xapp-…), socket mode")
    signing_secret_env: str = Field("SLACK_SIGNING_SECRET", description="environment variable with the signing secret, http mode")
    api_url: str = Field("https://slack.com/api/", description="slack-sdk base_url; apps.connections.open goes here too")
    file_hosts: list[str] = Field(default_factory=lambda: ["files.slack.com"],
                                  description="url_private downloads only from these hosts (or api_url's host)")
    native_streaming: bool = Field(True, description="stream with chat.startStream/appendStream/stopStream")
    update_interval: float = Field(1.5, ge=0.5, description="seconds between chat.update edits where native streaming is off")
    command_prefix: str = Field("!", description="commands in messages (Slack keeps /… for its own slash commands)")
    slash_command: str = Field("", description="a slash command of the app that runs the framework's commands, e.g. /internvl")
    support_channel: str = Field("", description="channel id told about each handoff, with a link to the thread")
    suggested_prompts: bool = Field(True, description="suggested prompts of the persona in new assistant threads")
    thread_followups: Literal["asker", "everyone", "mention"] = Field(
        "asker", description="which replies without a mention, in a channel thread the bot answers in, it answers: "
                             "asker (only those of the person who asked it first there; others mention it), "
                             "everyone (anyone's), mention (none: every message needs a mention). DMs and "
                             "assistant threads are always answered")

    def missing_secrets(self) -> list[str]:
        missing = super().missing_secrets()
        need = self.app_token_env if self.mode == "socket" else self.signing_secret_env
        if not os.environ.get(need, ""):
            missing.append(need)
        return missing


def build(runtime: Runtime, conf: SlackSettings) -> SlackAdapter:
    """``serve``'s constructor (see adapters/registry.py); the SDKs load only when Slack is enabled."""
    from adapters.slack.adapter import SlackAdapter

    return SlackAdapter.build(runtime, conf)


__all__ = ["SlackSettings", "build"]
