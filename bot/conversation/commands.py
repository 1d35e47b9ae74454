"""The framework's commands: ``/start``, ``/help``, ``/reset``, ``/persona``, ``/lang``, ``/export``, ``/find``,
``/human``, ``/bot``. A platform may use another prefix (Slack intercepts ``/…`` in its composer): the
channel says which, and texts that name commands show that prefix."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence

from bot.config import Settings
from bot.conversation.tables import markdown_tables, to_csv, to_json
from bot.conversation.turn import Turn
from bot.l10n import i18n
from bot.l10n.personas import Persona
from bot.seams import Channel
from bot.store import Conversation, Store
from bot.types import FileReply, Notice

log = logging.getLogger(__name__)

COMMANDS = ("start", "help", "reset", "persona", "lang", "export", "find", "human", "bot")
_NAME = r"([A-Za-z][A-Za-z0-9_]*)(?:@\S+)?(?:\s+(.*))?\Z"
_MENTIONED = re.compile(r"(?<![\w/!])/(" + "|".join(COMMANDS) + r")\b")


def parse_command(text: str, prefixes: Sequence[str] = ("/",)) -> tuple[str, str] | None:
    """``/persona tutor`` -> ``("persona", "tutor")``; ``/start@MyBot`` -> ``("start", "")``.

    Text that merely starts with a slash (``/usr/bin is missing``) is not a command.
    """
    stripped = text.strip()
    for prefix in prefixes:
        if stripped.startswith(prefix):
            m = re.match(_NAME, stripped[len(prefix):], re.S)
            if m and (prefix == "/" or m.group(1).lower() in COMMANDS):
                return m.group(1).lower(), (m.group(2) or "").strip()
    return None


def with_prefix(text: str, prefix: str) -> str:
    """The framework's texts name commands as ``/help``; on a platform whose prefix is ``!``, ``!help``."""
    return text if prefix == "/" else _MENTIONED.sub(lambda m: prefix + m.group(1), text)


class Commands:
    """Runs one command turn. ``human``/``bot`` are passed to the handoff desk by the manager, ``find`` (which asks
    the model) is run by the manager."""

    def __init__(self, settings: Settings, store: Store, personas: dict[str, Persona],
                 persona_for: Callable[[Conversation, Channel], Persona],
                 on_reset: Callable[[Turn], Awaitable[None]]) -> None:
        self.settings = settings
        self.store = store
        self.personas = personas
        self.persona_for = persona_for
        self.on_reset = on_reset

    async def run(self, turn: Turn, name: str, arg: str) -> None:
        msg, lang, channel = turn.msg, turn.lang, turn.channel
        conv = await self.store.conversation(msg.key)
        names = ", ".join(sorted(self.personas))
        languages = ", ".join(self.settings.conversation.languages)
        if name == "start":
            persona = self.persona_for(conv, channel)
            reply = f"{persona.greeting_for(lang)}\n{i18n.text('greeting_hint', lang)}"
        elif name == "help":
            reply = i18n.text("help", lang, personas=names, languages=languages)
        elif name == "reset":
            await self.store.update_conversation(msg.key, context_start=msg.id + 1)
            await self.on_reset(turn)
            reply = i18n.text("reset_done", lang)
        elif name == "persona":
            if not arg:
                reply = i18n.text("persona_list", lang, persona=self.persona_for(conv, channel).name, personas=names)
            elif arg.lower() in self.personas:
                await self.store.update_conversation(msg.key, persona=arg.lower())
                reply = i18n.text("persona_set", lang, persona=self.personas[arg.lower()].title_for(lang))
            else:
                reply = i18n.text("persona_unknown", lang, name=arg, personas=names)
        elif name == "lang":
            code = i18n.normalize_code(arg)
            if code == "auto":
                await self.store.update_conversation(msg.key, language=None)
                reply = i18n.text("lang_auto", lang)
            elif code and code in self.settings.conversation.languages:
                await self.store.update_conversation(msg.key, language=code, last_language=code)
                reply = i18n.text("lang_set", code, language=i18n.language_name(code, code))
            else:
                reply = i18n.text("lang_unknown", lang, code=arg or "?", languages=languages)
        elif name == "export":
            reply = await self._export(turn, conv, arg.lower().strip())
        else:
            reply = i18n.text("unknown_command", lang, command=f"{channel.command_prefixes[0]}{name}")
            log.info("unknown command /%s", name)
        await turn.reply(Notice(with_prefix(reply, channel.command_prefixes[0]), kind="command"))

    async def _export(self, turn: Turn, conv: Conversation, fmt: str) -> str:
        """``/export csv|json``: the tables of the last answer, sent back as a file."""
        msg, lang = turn.msg, turn.lang
        if fmt not in ("csv", "json"):
            return i18n.text("export_usage", lang)
        rows = await self.store.history(msg.key, since=conv.context_start, before=msg.id, limit=2)
        last = next((r for r in reversed(rows) if r.role == "assistant"), None)
        found = markdown_tables(last.text) if last else []
        if not found:
            return i18n.text("export_nothing", lang)
        data = to_csv(found) if fmt == "csv" else to_json(found)
        filename = f"tables-{msg.key.chat}-{last.id if last else 0}.{fmt}"
        mime = "text/csv" if fmt == "csv" else "application/json"
        await turn.say(FileReply(filename, mime, data))
        return i18n.text("export_done", lang, count=len(found), filename=filename)
