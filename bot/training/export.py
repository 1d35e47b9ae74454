"""``internvl-bot export sft|mpo``: the bot's rated conversations as InternVL fine-tuning data.

``sft`` writes InternVL's supervised fine-tuning layout (``internvl_chat/shell/data``): a meta JSON naming the
images root, the annotation JSONL and its length, and one JSONL line per exported answer —
``{"id", "image": "<path>" | [...], "conversations": [{"from": "human", "value": "<image>\\n…"}, {"from":
"gpt", "value": "…"}]}``, one ``<image>`` per image, image paths relative to the root. A question with a video
gives ``{"id", "video": "<path>", "conversations": [{"from": "human", "value": "<video>\\n…"}, …]}``:
internvl_chat's video_get_item samples the frames itself and replaces the one ``<video>\\n`` with a
``Frame-N: <image>`` line per frame. A sample holds images or one video, so a question with a video beside
images or another video is left out (counted). The "gpt" turn is an answer rated up (and never rated down or
regenerated), or the text an agent sent in place of a draft (``edited``); the Sources footer of a knowledge
base answer is left out.

``mpo`` writes InternVL's preference pairs ``{"image", "question", "chosen", "rejected"}`` (``"video"`` and
``<video>\\n`` for a video question) from what the bot observed: an answer regenerated (rejected) against the
one finally kept and rated up (chosen), following a chain of regenerations; a draft an agent edited or
discarded (rejected) against what the agent sent (chosen).

Privacy: only conversations of adapters with ``training_export: allowed`` whose answer's persona says
``training_export: allowed``; never a user who had a conversation forgotten; text redacted and images stripped
of metadata, videos remuxed without it (:mod:`bot.training.privacy`; a video ffmpeg cannot remux, or any video
when ffmpeg is missing, leaves its sample out, counted). Images and videos are copied once each, named by their
SHA-256.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import Settings
from bot.l10n import i18n
from bot.l10n.personas import Persona
from bot.store import AnswerMeta, Feedback, Store, StoredMessage
from bot.training.privacy import redact, strip_metadata, strip_video_metadata

#: Answers read from the store at a time (memory stays flat whatever the database holds).
BATCH = 2000
_GOOD = {"up", "edited", "sent_as_is"}
_BAD = {"down", "regenerated", "discarded"}


@dataclass(frozen=True, slots=True)
class ExportOptions:
    out: Path
    since: float = 0.0
    persona: str | None = None
    name: str = "internvl_bot"


@dataclass(slots=True)
class ExportReport:
    samples: int = 0
    images: int = 0
    videos: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _footer_pattern() -> re.Pattern[str]:
    words = sorted({i18n.text("sources", lang) for lang in i18n.UI_LANGUAGES} | {"Sources"}, key=len, reverse=True)
    return re.compile(r"\n\n\*\*(?:" + "|".join(re.escape(w) for w in words) + r")\*\*\n\n.*\Z", re.DOTALL)


class _Exporter:
    """One export run: the filters, the images copied so far, the files written."""

    def __init__(self, store: Store, settings: Settings, personas: dict[str, Persona], opts: ExportOptions) -> None:
        self.store = store
        self.settings = settings
        self.personas = personas
        self.opts = opts
        self.report = ExportReport()
        self.root = opts.out / "images"
        self.copied: dict[str, str] = {}
        self.footer = _footer_pattern()
        self.forgotten: set[tuple[str, str]] = set()

    def _adapter_allows(self, platform: str) -> bool:
        section = getattr(self.settings.adapters, platform, None)
        return getattr(section, "training_export", "off") == "allowed"

    def _persona_of(self, platform: str, meta: AnswerMeta | None) -> str:
        if meta is not None and meta.persona:
            return meta.persona
        section = getattr(self.settings.adapters, platform, None)
        return getattr(section, "persona", "") or self.settings.conversation.default_persona

    def admits(self, question: StoredMessage, meta: AnswerMeta | None) -> bool:
        platform = question.key.platform
        persona = self._persona_of(platform, meta)
        if not self._adapter_allows(platform):
            self.report.skip("adapter does not allow training export")
        elif persona not in self.personas or not self.personas[persona].training_export:
            self.report.skip("persona does not allow training export")
        elif self.opts.persona is not None and persona != self.opts.persona:
            self.report.skip("another persona")
        elif (platform, question.sender_id) in self.forgotten:
            self.report.skip("user forgot their conversation")
        else:
            return True
        return False

    async def admitted_media(self, question: StoredMessage, meta: AnswerMeta | None) \
            -> tuple[list[str], str | None] | None:
        """:meth:`media` of a question whose answer may be exported (:meth:`admits`); None when not."""
        return await self.media(question) if self.admits(question, meta) else None

    def clean(self, text: str, question: StoredMessage) -> str:
        return redact(self.footer.sub("", text), [question.sender_name])

    async def media(self, question: StoredMessage) -> tuple[list[str], str | None] | None:
        """The question's images and video copied under the root (stripped of metadata): their paths relative to
        the root; None when one cannot be read or remuxed, or when the question holds a video beside other media,
        which InternVL's samples cannot express (the sample is left out rather than exported without them)."""
        images = [a for a in question.attachments if a.mime.startswith("image/") and a.sha256]
        videos = [a for a in question.attachments if a.mime.startswith("video/") and a.sha256]
        if videos and (images or len(videos) > 1):
            self.report.skip("a video beside other images or videos")
            return None
        paths = []
        for att in images:
            path = self.copied.get(att.sha256)
            if path is None:
                try:
                    data = await self.store.attachment_data(att.sha256)
                    clean, ext = strip_metadata(data)
                except Exception:
                    self.report.skip("image not readable")
                    return None
                path = self._write(att.sha256, ext, clean)
                self.report.images += 1
            paths.append(path)
        if not videos:
            return paths, None
        att = videos[0]
        path = self.copied.get(att.sha256)
        if path is None:
            try:
                data = await self.store.attachment_data(att.sha256)
                # ffmpeg runs for a while on a long video; the event loop need not wait for it
                clean, ext = await asyncio.to_thread(strip_video_metadata, data, att.mime)
            except Exception as exc:
                # the reason is the report's key: "ffmpeg is not installed" tells the operator what to do
                why = str(exc) if isinstance(exc, RuntimeError) else "not readable"
                self.report.skip(f"video not exported: {why}")
                return None
            path = self._write(att.sha256, ext, clean)
            self.report.videos += 1
        return paths, path

    def _write(self, sha256: str, ext: str, data: bytes) -> str:
        """Store ``data`` under the root by its SHA-256 (stable across exports) and remember it; its path."""
        path = f"{sha256[:2]}/{sha256}.{ext}"
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)
        self.copied[sha256] = path
        return path

    @staticmethod
    def human(text: str, images: Sequence[str], video: str | None = None) -> str:
        return ("<video>\n" if video else "<image>\n" * len(images)) + text

    @staticmethod
    def visual(images: Sequence[str], video: str | None) -> dict[str, object]:
        """The sample's ``image`` or ``video`` key, as internvl_chat reads them."""
        if video:
            return {"video": video}
        if images:
            return {"image": images[0] if len(images) == 1 else list(images)}
        return {}

    def write_meta(self, annotation: Path) -> None:
        meta = {self.opts.name: {"root": str(self.root.resolve()), "annotation": str(annotation.resolve()),
                                 "data_augment": False, "repeat_time": 1, "length": self.report.samples}}
        (self.opts.out / f"{self.opts.name}.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    async def pairs(self, rows: Sequence[Feedback]) -> AsyncIterator[list[tuple[StoredMessage, StoredMessage, AnswerMeta | None]]]:
        """(question, answer, what produced the answer) for the answers of ``rows``, a batch at a time."""
        ids = list(dict.fromkeys(f.message_id for f in rows))
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            answers = await self.store.messages_by_id(chunk)
            questions = {q.id: q for q in await self.store.messages_by_id([a.reply_to for a in answers if a.reply_to])}
            metas = await self.store.answer_meta(chunk)
            out = []
            for answer in answers:
                question = questions.get(answer.reply_to or -1)
                if question is not None:
                    out.append((question, answer, metas.get(answer.id)))
            yield out


async def export_sft(store: Store, settings: Settings, personas: dict[str, Persona], opts: ExportOptions) -> ExportReport:
    """Write the SFT meta JSON and JSONL under ``opts.out``; see the module docstring."""
    ex = _Exporter(store, settings, personas, opts)
    ex.forgotten = await store.forgotten()
    rows = await store.feedback(since=opts.since, kinds=sorted(_GOOD | _BAD))
    verdicts: dict[int, list[Feedback]] = {}
    for f in rows:
        verdicts.setdefault(f.message_id, []).append(f)
    good = [fs[-1] for fs in verdicts.values() if any(f.kind in _GOOD for f in fs)]
    opts.out.mkdir(parents=True, exist_ok=True)
    ex.root.mkdir(parents=True, exist_ok=True)
    annotation = opts.out / f"{opts.name}.jsonl"
    with annotation.open("w", encoding="utf-8") as lines:
        async for batch in ex.pairs(good):
            for question, answer, meta in batch:
                kinds = {f.kind for f in verdicts[answer.id]}
                edited = next((f.value for f in reversed(verdicts[answer.id]) if f.kind == "edited" and f.value), "")
                if kinds & {"down", "regenerated", "discarded"} and not edited:
                    ex.report.skip("rated down or replaced")
                    continue
                media = await ex.admitted_media(question, meta)
                if media is None:
                    continue
                images, video = media
                item: dict[str, object] = {"id": f"{question.key.platform}-{answer.id}", **ex.visual(images, video)}
                item["conversations"] = [
                    {"from": "human", "value": ex.human(ex.clean(question.text, question), images, video)},
                    {"from": "gpt", "value": ex.clean(edited or answer.text, question)}]
                lines.write(json.dumps(item, ensure_ascii=False) + "\n")
                ex.report.samples += 1
    ex.write_meta(annotation)
    return ex.report


async def export_mpo(store: Store, settings: Settings, personas: dict[str, Persona], opts: ExportOptions) -> ExportReport:
    """Write the MPO meta JSON and JSONL of preference pairs under ``opts.out``; see the module docstring."""
    ex = _Exporter(store, settings, personas, opts)
    ex.forgotten = await store.forgotten()
    rows = await store.feedback(since=opts.since, kinds=["up", "down", "regenerated", "edited", "discarded"])
    downs = {f.message_id for f in rows if f.kind == "down"}
    ups = [f for f in rows if f.kind == "up" and f.message_id not in downs]
    regens = {f.message_id: int(f.value) for f in rows if f.kind == "regenerated" and f.value.isdigit()}
    # which answer each question got: the regenerated ones (a chain) and those rated up
    up_of_question: dict[int, StoredMessage] = {}
    regen_of_question: dict[int, int] = {}
    async for batch in ex.pairs([*ups, *(f for f in rows if f.kind == "regenerated")]):
        for question, answer, _ in batch:
            if answer.id in regens:
                regen_of_question[question.id] = answer.id
            elif answer.id not in downs:
                up_of_question[question.id] = answer
    opts.out.mkdir(parents=True, exist_ok=True)
    ex.root.mkdir(parents=True, exist_ok=True)
    annotation = opts.out / f"{opts.name}.jsonl"
    drafts = {f.message_id: f.value for f in rows if f.kind in ("edited", "discarded") and f.value.strip()}
    with annotation.open("w", encoding="utf-8") as lines:
        async for batch in ex.pairs([f for f in rows if f.message_id in regens or f.message_id in drafts]):
            for question, rejected, meta in batch:
                chosen_text = drafts.get(rejected.id, "")
                if not chosen_text:
                    asked, seen = regens.get(rejected.id), set()
                    while asked is not None and asked not in up_of_question and asked not in seen:
                        seen.add(asked)
                        asked = regens.get(regen_of_question.get(asked, -1))
                    kept = up_of_question.get(asked) if asked is not None else None
                    if kept is None:
                        ex.report.skip("no answer kept and rated up")
                        continue
                    chosen_text = kept.text
                media = await ex.admitted_media(question, meta)
                if media is None:
                    continue
                images, video = media
                item: dict[str, object] = ex.visual(images, video)
                item.update(question=ex.human(ex.clean(question.text, question), images, video),
                            chosen=ex.clean(chosen_text, question), rejected=ex.clean(rejected.text, question))
                lines.write(json.dumps(item, ensure_ascii=False) + "\n")
                ex.report.samples += 1
    ex.write_meta(annotation)
    return ex.report


__all__ = ["ExportOptions", "ExportReport", "export_mpo", "export_sft"]
