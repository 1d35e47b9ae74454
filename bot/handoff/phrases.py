"""Plain-language requests for a person ("I want to talk to a human"), in every supported language.

A request is a short message that matches one of these patterns; "is this human hair?" is not one.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: Per language.
_HUMAN_REQUESTS: dict[str, str] = {
    "en": r"\b(talk|speak|chat)\s+(to|with)\s+(a|an|some|the|your)?\s*(real\s+|live\s+)?(human|person|people|agent|someone|somebody|operator|representative|staff|employee)\b"
          r"|\b(human|live|real)\s+(agent|person|support|operator)\b|\b(connect|transfer)\s+me\s+to\b"
          r"|^\s*(a\s+)?(human|agent|operator|representative)(\s+please)?[\s!.]*$",
    "pt": r"\bfalar\s+com\s+(um|uma|alguém|algum|o|a)?\s*(humano|pessoa|atendente|agente|operador|funcionári[oa]|alguém)\b"
          r"|\batendente\s+humano\b|\batendimento\s+humano\b",
    "es": r"\bhablar\s+con\s+(un|una|alguien|algún|el|la)?\s*(humano|persona|agente|operador|asesor|alguien)\b"
          r"|\bagente\s+humano\b|\batención\s+humana\b",
    "fr": r"\bparler\s+(à|a|avec)\s+(un|une|quelqu'un|quelqu’un)\s*(de\s+réel|de\s+vrai)?\s*(humain|personne|conseiller|conseillère|agent|opérateur|opératrice)?(\b|$)"
          r"|\bvrai\s+humain\b|\bconseiller\s+humain\b",
    "de": r"\b(mit|zu)\s+(einem|einer|jemandem)\s+(echten\s+)?(menschen|mensch|person|mitarbeiter|mitarbeiterin|berater|beraterin)?\s*(sprechen|reden)\b"
          r"|\bmit\s+jemandem\s+(sprechen|reden)\b|\becht(en|er)\s+mensch",
    "zh": r"人工(客服|服务|坐席)|转人工|真人(客服)?|找人工|^\s*人工\s*$",
    "ru": r"(поговорить|связаться|соедините|переключите).{0,12}(с\s+)?(человеком|оператором|сотрудником|менеджером|живым)",
    "ja": r"(人間|担当者|オペレーター|スタッフ|有人).{0,6}(と話|につな|に代わ|に繋|対応)",
}
_HUMAN_RE = re.compile("|".join(f"(?:{p})" for p in _HUMAN_REQUESTS.values()), re.I)


def asks_for_human(text: str) -> bool:
    """True when ``text`` is a plain request to talk to a person, in any supported language."""
    text = text.strip()
    if not text or len(text) > 200:
        return False
    return _asks(text)


@lru_cache(maxsize=4096)
def _asks(text: str) -> bool:
    # remembered: a message is asked at intake and again when its turn comes (one pattern per language)
    return bool(_HUMAN_RE.search(text))


