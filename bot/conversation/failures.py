"""What the user is told when their message fails — refused at intake (a usage limit, too many waiting), a file
that could not be read, the engine failing — on the turn's own sink, in the turn's language, with the channel's
command prefix; the message is stored as failed."""

from __future__ import annotations

import contextlib
import logging

from bot.conversation.commands import with_prefix
from bot.conversation.turn import Turn
from bot.errors import BotError, InputError
from bot.l10n import i18n
from bot.types import Notice

log = logging.getLogger(__name__)


async def tell_failure(turn: Turn, exc: Exception) -> None:
    """Tell the user what went wrong, on the turn's own sink, and store the message as failed (nothing is sent
    when the turn already finished: its answer stands)."""
    key = exc.user_key if isinstance(exc, BotError) else "engine_error"
    params = dict(exc.params) if isinstance(exc, BotError) else {}
    if "name" in params and not params["name"]:
        params["name"] = "file"
    if "wait" in params:
        params["wait"] = i18n.wait_text(float(params["wait"]), turn.lang)
    text = with_prefix(i18n.text(key, turn.lang, **params), turn.channel.command_prefixes[0])
    if isinstance(exc, InputError):
        log.info("message %d refused (%s): %s", turn.msg.id, type(exc).__name__, exc)
    if turn.finished:
        return
    with contextlib.suppress(Exception):
        await turn.relay.flush()
    await turn.reply(Notice(text, kind="error"), kind="notice", state="failed",
                     error=f"{type(exc).__name__}: {exc}"[:500])
