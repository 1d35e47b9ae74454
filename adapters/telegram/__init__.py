"""The Telegram adapter: private chats, groups and forum topics, through python-telegram-bot.

This module holds the settings and ``build()``; :mod:`adapters.telegram.adapter` the adapter itself
(imported only when Telegram is enabled, so the SDK is needed only then: ``pip install -e '.[telegram]'``).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from bot.config import AdapterSection

if TYPE_CHECKING:
    from adapters.telegram.adapter import TelegramAdapter
    from bot.runtime import Runtime

PLATFORM = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
#: What Telegram accepts as a webhook secret token.
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")


class TelegramSettings(AdapterSection):
    """``adapters.telegram``: a Telegram bot (create it with @BotFather)."""

    secrets: ClassVar[dict[str, str]] = {"token_env": "the bot token from @BotFather"}

    enabled: bool = False
    mode: Literal["polling", "webhook"] = Field("polling", description="polling | webhook (needs server.public_url)")
    token_env: str = Field("TELEGRAM_BOT_TOKEN", description="environment variable holding the bot token")
    webhook_secret_env: str = Field(
        "TELEGRAM_WEBHOOK_SECRET", description="environment variable holding the webhook secret token (webhook mode)")
    base_url: str = Field("https://api.telegram.org/bot", description="Bot API base URL (the token is appended)")
    base_file_url: str = Field("https://api.telegram.org/file/bot", description="file download base URL")
    album_debounce: float = Field(1.5, gt=0, le=30, description="seconds to wait for the rest of an album")
    edit_interval: float = Field(1.0, ge=0.3, description="least seconds between two edits of a streamed answer")
    group_edit_interval: float = Field(3.0, ge=1.0, description="the same in groups (20 messages a minute there)")
    drafts: bool = Field(True, description="stream with sendMessageDraft previews in private chats")
    buttons: bool = Field(True, description="Regenerate and New conversation buttons under answers")
    trigger_words: list[str] = Field(
        default_factory=list, description="in groups, also answer messages containing one of these words")
    poll_timeout: int = Field(30, ge=1, le=50, description="long-polling timeout of getUpdates, seconds")

    def missing_secrets(self) -> list[str]:
        missing = super().missing_secrets()
        if self.mode == "webhook" and not os.environ.get(self.webhook_secret_env, ""):
            missing.append(self.webhook_secret_env)
        return missing


def build(runtime: Runtime, conf: TelegramSettings) -> TelegramAdapter:
    """``serve``'s constructor (see adapters/registry.py); PTB loads only when Telegram is enabled."""
    from adapters.telegram.adapter import TelegramAdapter

    return TelegramAdapter.build(runtime, conf)


__all__: list[Any] = ["PLATFORM", "SECRET_TOKEN", "WEBHOOK_PATH", "TelegramSettings", "build"]
