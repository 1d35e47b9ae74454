"""Logging set-up: a conversation id on every line, optional JSON lines, and secrets redacted.

Redaction works on the finished line — message, arguments, traceback, whichever library logged it — so a
bot token inside a URL that httpx logs, or inside an exception's text, never reaches the output. Secrets
are the values of environment variables whose names say so (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``,
``*API_KEY*``, ``*SIGNING*``), values registered with :func:`register_secret`, and anything shaped like a
Telegram bot token or a Slack token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar

conversation_var: ContextVar[str] = ContextVar("conversation", default="-")

#: Environment variables whose values must never appear in a log line.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|APIKEY|SIGNING|PASSWD|CREDENTIAL)", re.I)
#: Token shapes redacted wherever they appear: Telegram bot tokens, Slack tokens.
_TOKEN_SHAPES = re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}\b|\bx(?:ox[abposr]|app)-[A-Za-z0-9-]{8,}")
REDACTED = "[redacted]"

_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never log ``value`` (a secret read from somewhere else than a conventionally named variable)."""
    if value and len(value) >= 6:
        _registered.add(value)


def _secret_values() -> list[str]:
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(found | _registered, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``[redacted]``."""
    for secret in _secret_values():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, text)


class Throttle:
    """At most one log line per key every ``seconds``: a platform that stays down, or a webhook rejected a
    thousand times after a secret rotation, is one warning a minute, not a flood.
    ``throttle.allow(key)`` is None while the key is quiet, else how many lines were held back since."""

    def __init__(self, seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 size: int = 1024) -> None:
        self.seconds = seconds
        self.clock = clock
        self.size = size
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.seconds:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= self.size:  # bounded whatever the keys (remote addresses)
            self._last.pop(next(iter(self._last)))
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0

    def reset(self, key: Hashable) -> None:
        """The condition ended: the next occurrence is said at once."""
        self._last.pop(key, None)


class ContextFilter(logging.Filter):
    """Adds ``record.conversation``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.conversation = conversation_var.get()
        return True


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner`` and redacts the whole result (tracebacks included)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose own failure report (logging's "--- Logging error ---") is redacted too."""

    def handleError(self, record: logging.LogRecord) -> None:
        if logging.raiseExceptions and self.stream is not None:
            try:
                exc = sys.exc_info()[1]
                self.stream.write(redact(f"--- logging error in {record.name}: {type(exc).__name__}: {exc} "
                                         f"(message {record.msg!r}, arguments {record.args!r})\n"))
            except Exception:  # the stream itself is gone: nothing left to tell
                pass


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
    handler = SafeStreamHandler()
    handler.addFilter(ContextFilter())
    inner = JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(conversation)s] %(message)s")
    handler.setFormatter(RedactingFormatter(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
