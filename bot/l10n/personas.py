"""Personas: system prompt, greeting and style, loaded from YAML files (``prompts/*.yaml``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bot.errors import ConfigError
from bot.l10n.i18n import ANSWER_IN, LANGUAGE_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Persona:
    """One persona. ``greeting`` maps language codes to the greeting text."""

    name: str
    title: str
    system: str
    style: str = ""
    description: str = ""
    greeting: dict[str, str] = field(default_factory=dict)
    #: language code -> questions a new user can start from (the web chat's greeting, Slack's suggested prompts)
    suggestions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the persona's handoff policy: words that send a message to a person at once (any language), and the
    #: marker the model ends an answer with when a person is needed ("" = none)
    handoff_keywords: tuple[str, ...] = ()
    handoff_marker: str = ""
    #: language code -> the title in that language (``title`` is the English one)
    titles: dict[str, str] = field(default_factory=dict)
    #: the knowledge bases its answers draw on and cite (``knowledge.bases.<name>``)
    knowledge: tuple[str, ...] = ()
    #: ``auto``: the boxes the model gives (``<ref>…</ref><box>…</box>``) are drawn on the image and sent back;
    #: ``off``: only their labels are kept in the text (``/find`` still draws)
    grounding: str = "auto"
    #: ``training_export: allowed`` in its YAML: its rated answers may leave in ``internvl-bot export``
    training_export: bool = False

    def title_for(self, language: str) -> str:
        return self.titles.get(language) or self.title

    def policy_hit(self, text: str) -> str | None:
        """The handoff keyword ``text`` contains, if any (case-insensitive, whole words where words exist)."""
        lowered = text.lower()
        for word in self.handoff_keywords:
            at = lowered.find(word)
            while at >= 0:
                before = lowered[at - 1] if at else " "
                after = lowered[at + len(word)] if at + len(word) < len(lowered) else " "
                if not word[0].isascii() or (not before.isalnum() and not after.isalnum()):
                    return word
                at = lowered.find(word, at + 1)
        return None

    def system_prompt(self, language: str) -> str:
        """The system prompt for an answer in ``language``."""
        name, native = LANGUAGE_NAMES.get(language, (language, language))
        parts = [self.system.strip()]
        if self.style:
            parts.append(f"Style: {self.style.strip()}")
        parts.append(ANSWER_IN.format(name=name, native=native))
        return "\n\n".join(parts)

    def greeting_for(self, language: str) -> str:
        return self.greeting.get(language) or self.greeting.get("en") or self.title

    def suggestions_for(self, language: str) -> tuple[str, ...]:
        return self.suggestions.get(language) or self.suggestions.get("en") or ()


def _parse(data: Any, source: str) -> Persona:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a persona file must be a mapping with name, title and system")
    unknown = set(data) - {"name", "title", "system", "style", "description", "greeting", "suggestions", "handoff",
                           "knowledge", "grounding", "training_export"}
    if unknown:
        raise ConfigError(f"{source}: unknown persona key(s) {sorted(unknown)} — allowed: name, title, system, style, "
                          "description, greeting, suggestions, handoff, knowledge, grounding, training_export")
    knowledge = data.get("knowledge") or []
    if isinstance(knowledge, str):
        knowledge = [knowledge]
    if not isinstance(knowledge, list) or not all(isinstance(b, str) and b.strip() for b in knowledge):
        raise ConfigError(f"{source}: knowledge must be a list of knowledge base names (knowledge.bases.<name>)")
    grounding = data.get("grounding", "auto")
    if isinstance(grounding, bool):  # YAML 1.1 reads a bare off/on as a boolean
        grounding = "auto" if grounding else "off"
    if grounding not in ("auto", "off"):
        raise ConfigError(f"{source}: grounding must be auto or off, not {grounding!r}")
    for key in ("name", "system"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{source}: persona key {key!r} is missing or empty")
    greeting = data.get("greeting") or {}
    if isinstance(greeting, str):
        greeting = {"en": greeting}
    if not isinstance(greeting, dict):
        raise ConfigError(f"{source}: greeting must be a text or a mapping of language code to text")
    suggestions = data.get("suggestions") or {}
    if not isinstance(suggestions, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v)
                                                     for v in suggestions.values()):
        raise ConfigError(f"{source}: suggestions must be a mapping of language code to a list of questions")
    handoff = data.get("handoff") or {}
    keywords = handoff.get("keywords") or {} if isinstance(handoff, dict) else None
    if not isinstance(handoff, dict) or not isinstance(keywords, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v) for v in keywords.values()):
        raise ConfigError(f"{source}: handoff must be a mapping with an optional marker and keywords per language")
    title = data.get("title") or data["name"]
    titles = {str(k): str(v).strip() for k, v in title.items()} if isinstance(title, dict) else {}
    if isinstance(title, dict) and not titles.get("en"):
        raise ConfigError(f"{source}: a title given per language needs an English one (en)")
    return Persona(
        name=data["name"].strip(),
        title=titles["en"] if titles else str(title).strip(),
        titles=titles,
        system=data["system"],
        style=str(data.get("style") or ""),
        description=str(data.get("description") or ""),
        greeting={str(k): str(v) for k, v in greeting.items()},
        suggestions={str(k): tuple(v) for k, v in suggestions.items()},
        handoff_keywords=tuple(sorted({w.strip().lower() for v in keywords.values() for w in v}, key=len, reverse=True)),
        handoff_marker=str(handoff.get("marker") or ""),
        knowledge=tuple(b.strip() for b in knowledge),
        grounding=grounding,
        training_export=_training_export(data.get("training_export"), source),
    )


def _training_export(value: object, source: str) -> bool:
    if value in (None, "off", False):
        return False
    if value == "allowed":
        return True
    raise ConfigError(f"{source}: training_export must be 'allowed' or 'off', not {value!r}")


def load_personas(extra_dir: str | Path | None = None) -> dict[str, Persona]:
    """The built-in personas, overridden and extended by the YAML files of ``extra_dir``."""
    personas: dict[str, Persona] = {}
    sources: list[tuple[str, str]] = []
    for entry in sorted(resources.files("prompts").iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            sources.append((f"prompts/{entry.name}", entry.read_text(encoding="utf-8")))
    if extra_dir:
        folder = Path(extra_dir).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"conversation.personas_dir: {folder} is not a folder — create it or leave the key empty")
        for path in sorted(folder.glob("*.y*ml")):
            sources.append((str(path), path.read_text(encoding="utf-8")))
    for source, raw in sources:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})") from None
        persona = _parse(data, source)
        personas[persona.name] = persona
    return personas
