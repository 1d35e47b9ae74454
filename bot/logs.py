"""Logging set-up: a conversation id on every line, optional JSON lines, and secrets redacted."""

from __future__ import annotations

import json
import logging
import os
import re
from contextvars import ContextVar

conversation_var: ContextVar[str] = ContextVar("conversation", default="-")

#: Environment variables whose values must never appear in a log line.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|SIGNING)", re.I)


def _secret_values() -> list[str]:
    return sorted(
        (v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6), key=len, reverse=True
    )


class ContextFilter(logging.Filter):
    """Adds ``record.conversation`` and replaces secret values with ``[redacted]``."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets = _secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        record.conversation = conversation_var.get()
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, "[redacted]")
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "conversation": getattr(record, "conversation", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(conversation)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
