"""What the model is given from a knowledge base, and how its answer's citations become a Sources footer.

The passages go into the user's message, numbered ``[1]``, ``[2]``..., with the instruction to cite them
that way (:func:`knowledge_block`). After the answer, :func:`cited` reads which were cited — ``[k]`` in the
text, or the echo engine's ``[knowledge k: …]`` lines — and :func:`sources_footer` lists only those, in
Markdown (every adapter already renders Markdown for its platform: links on Telegram and Slack, the web
chat's HTML, Chatwoot's and the helpdesks' text), each with its link: a help-center article's URL, or a
signed, expiring link to the stored PDF at that page (``link_for``, given by the server).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from bot.knowledge.base import Passage
from bot.l10n import i18n

#: ``[2]``, ``[1, 3]``, ``[1][3]``: what a model writes when it cites; and the echo engine's lines.
_CITE = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
_ECHO_LINE = re.compile(r"\[knowledge (\d{1,2}):")

INSTRUCTION = ("Passages from the company's documentation that may answer the question follow, numbered. Use "
               "them where they answer it and cite each one you use as [1], [2] right after what it supports. "
               "Do not cite a passage you did not use, and do not invent what they do not say.")
NOTHING_FOUND = ("The company's documentation has nothing about this question: say so in one short sentence "
                 "before anything else, and do not present a guess as documented fact.")
OFFER_PERSON = " Offer to pass the conversation to a person from the team."
NOT_FITTED = ("The company's documentation has passages about this question, but they do not fit in this "
              "conversation: do not present a guess as documented fact.")


def knowledge_block(passages: Sequence[Passage]) -> str:
    """The passages as the model reads them, before the question."""
    parts = [INSTRUCTION]
    for k, passage in enumerate(passages, start=1):
        where = passage.label + (f" — {passage.heading}" if passage.heading and passage.heading not in passage.title
                                 else "")
        parts.append(f"[{k}] {where}\n{passage.text.strip()}")
    return "\n\n".join(parts)


def nothing_found(offer_person: bool) -> str:
    """What the model is told when the persona's bases had nothing relevant."""
    return NOTHING_FOUND + (OFFER_PERSON if offer_person else "")


def cited(answer: str, count: int) -> list[int]:
    """The passage numbers (1..``count``) ``answer`` cites, in order, each once."""
    found: dict[int, None] = {}
    for match in _ECHO_LINE.finditer(answer):
        found[int(match.group(1))] = None
    for match in _CITE.finditer(answer):
        for number in re.split(r"\s*,\s*", match.group(1)):
            found[int(number)] = None
    return [k for k in found if 1 <= k <= count]


def sources_footer(passages: Sequence[Passage], numbers: Sequence[int], lang: str,
                   link_for: Callable[[Passage], str] | None = None) -> str:
    """The Markdown footer listing the cited passages (numbered as cited), "" when none was cited. Two
    passages of one page are one source."""
    lines: list[str] = []
    seen: set[tuple[str, int | None]] = set()
    for k in sorted(numbers):
        passage = passages[k - 1]
        if (passage.doc, passage.page) in seen:
            continue
        seen.add((passage.doc, passage.page))
        url = passage.url or (link_for(passage) if link_for is not None else "")
        label = _escape(passage.label)
        lines.append(f"{k}. [{label}]({_url(url)})" if url else f"{k}. {label}")
    if not lines:
        return ""
    return f"**{i18n.text('sources', lang)}**\n\n" + "\n".join(lines)


def _escape(text: str) -> str:
    """A title as Markdown link text: brackets and emphasis marks kept literal."""
    return re.sub(r"([\[\]*_`\\])", r"\\\1", text)


def _url(url: str) -> str:
    """A URL inside ``(...)``: spaces and parentheses encoded, so the link is not cut short."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


__all__ = ["cited", "knowledge_block", "nothing_found", "sources_footer"]
