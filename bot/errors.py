"""Error classes. One root; each subclass carries its data and a key for a message safe to show users.

The text a user sees is looked up in :mod:`bot.l10n.i18n` by ``user_key`` and rendered with ``params`` in
the user's language, so errors never carry English prose into a Portuguese conversation.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx


class BotError(Exception):
    """Root of every error the framework raises on purpose."""

    user_key: str = "error_generic"

    def __init__(self, detail: str = "", **params: Any) -> None:
        super().__init__(detail or type(self).__doc__ or type(self).__name__)
        self.params: dict[str, Any] = params


class StartupError(BotError):
    """The service cannot start; the message names what is wrong and how to fix it."""


class ConfigError(StartupError):
    """The configuration is invalid."""


class ModelLoadError(StartupError):
    """The model folder is missing or is not an InternVL checkpoint."""


class InputError(BotError):
    """Something the user sent cannot be processed; the user is told why, politely."""


class EmptyMessage(InputError):
    """The message had neither text nor attachments."""

    user_key = "empty_message"


class MessageTooLong(InputError):
    """The message text is longer than the configured limit."""

    user_key = "message_too_long"


class PromptTooLong(InputError):
    """The current turn alone does not fit the model's context."""

    user_key = "prompt_too_long"


class UnreadableImage(InputError):
    """An attachment that claims to be an image could not be decoded."""

    user_key = "unreadable_image"


class ImageTooLarge(InputError):
    """An image has more pixels than the configured limit."""

    user_key = "image_too_large"


class FileTooLarge(InputError):
    """An attachment is larger than the configured byte limit."""

    user_key = "file_too_large"


class UnsupportedFile(InputError):
    """An attachment of a kind the bot cannot read (audio, archives, office files...)."""

    user_key = "unsupported_file"


class AudioNotSupported(UnsupportedFile):
    """A voice message or an audio file: the model cannot listen (yet)."""

    user_key = "voice_not_supported"


class StickerNotSupported(UnsupportedFile):
    """A sticker."""

    user_key = "sticker_not_supported"


class UnreadableVideo(InputError):
    """A video that could not be decoded (broken, truncated, empty, unknown codec)."""

    user_key = "unreadable_video"


class VideoTooLong(InputError):
    """A video longer than the configured duration cap."""

    user_key = "video_too_long"


class VideoTooLarge(InputError):
    """A video whose frames have more pixels than the configured cap."""

    user_key = "video_too_large"


class UnreadableDocument(InputError):
    """A PDF that could not be opened (broken, not a PDF)."""

    user_key = "unreadable_document"


class EncryptedDocument(InputError):
    """A password-protected PDF."""

    user_key = "encrypted_document"


class AttachmentUnavailable(InputError):
    """The platform did not deliver an attachment's bytes."""

    user_key = "attachment_unavailable"


class FileHostRefused(AttachmentUnavailable):
    """A file offered at an address the adapter does not fetch from (not the platform's own file servers)."""

    user_key = "file_host_refused"


class TooManyPending(InputError):
    """The conversation already has the maximum number of messages waiting."""

    user_key = "too_many_pending"


class EngineError(BotError):
    """The model failed while answering."""

    user_key = "engine_error"


class EngineUnavailable(EngineError):
    """The model is not reachable or is overloaded."""

    user_key = "engine_unavailable"


class ShuttingDown(BotError):
    """The service is stopping and takes no new messages; the platform should deliver them again later."""

    user_key = "busy_restarting"


class NoSuchChannel(BotError):
    """No adapter is registered for the platform of a conversation."""


class NoSuchConversation(BotError):
    """An operator named a conversation the store does not have."""


class UsageLimitReached(InputError):
    """A user reached a per-user limit; ``wait`` (seconds) says when they can continue."""

    def __init__(self, user_key: str, *, limit: float, wait: float) -> None:
        super().__init__(f"{user_key}: limit {limit}, wait {wait:.0f} s", limit=limit, wait=wait)
        self.user_key = user_key
        self.wait = wait


def default_retry_after(exc: BaseException) -> float | None:
    """Seconds to wait before sending to a platform again when ``exc`` passes (HTTP 429 or 5xx, a timeout, a
    network error); None when sending again would fail the same way. An adapter whose SDK raises its own
    errors gives its own (``Channel.retry_after``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status == 429 or status >= 500:
            try:
                return max(0.0, float(exc.response.headers.get("Retry-After", "0")))
            except ValueError:
                return 0.0
        return None
    if isinstance(exc, httpx.TransportError | OSError | asyncio.TimeoutError):
        return 0.0
    return None


def default_may_have_arrived(exc: BaseException) -> bool:
    """Whether a send that failed with ``exc`` may still have reached the platform (the request went out and
    its answer was lost: a time-out, a connection dropped): then a retry first looks for the earlier copy
    where the platform can tell. False when the platform answered that it did not take it (429, 503) or no
    connection was made. An adapter whose SDK raises its own errors gives its own
    (``Channel.may_have_arrived``)."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code not in (429, 503)
    return not isinstance(exc, httpx.ConnectError | ConnectionRefusedError)


def timed_out(exc: BaseException) -> bool:
    """Whether a request got no answer at all before its time-out (ours or the HTTP client's)."""
    return isinstance(exc, TimeoutError | httpx.TimeoutException)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` for a one-line report (a time-out without text says so)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not text and isinstance(exc, TimeoutError | httpx.TimeoutException):
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or
    unreadable (a date in the past is 0)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

