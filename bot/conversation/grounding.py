"""Grounding in a conversation: InternVL's boxes drawn on the images they refer to and sent after the answer
(a persona with ``grounding: auto``), and ``/find <thing>``, the grounding question asked about the
conversation's latest image. The marked-up picture is stored as a reply of the turn's message and sent on the
turn's sink, or kept in the outbox. The conversation manager holds one (``manager.grounder``); the parsing and
drawing themselves are :mod:`bot.media.grounding`'s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from bot.config import Settings
from bot.conversation.outbox import NOT_DELIVERED, Outbox
from bot.conversation.prompting import Prompt
from bot.conversation.turn import Turn
from bot.engines.base import ChatMessage, Engine, ImagePart
from bot.errors import InputError, describe
from bot.l10n import i18n
from bot.media.attachments import PIXEL_LEASE, AttachmentResolver
from bot.media.grounding import GROUNDING_PROMPT, Annotated, Region, annotate, parse_regions, strip_tags
from bot.scheduling.scheduler import FairGate
from bot.store import NewMessage, Store, sha256_of
from bot.types import Attachment, FileReply, Notice, SinkContext, Status, strip_controls

log = logging.getLogger(__name__)


class Grounder:
    """See the module docstring. ``gate``: the model's places, shared with the answers (a ``/find`` waits its
    turn like any question)."""

    def __init__(self, settings: Settings, store: Store, engine: Engine, resolver: AttachmentResolver,
                 outbox: Outbox, gate: FairGate) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.resolver = resolver
        self.outbox = outbox
        self.gate = gate

    async def draw(self, turn: Turn, regions: Sequence[Region], images: dict[str, ImagePart], *,
                   delivered: bool = True) -> int:
        """Draw what the model located on the images it refers to (``Image-2``; else the latest) and send each
        after the answer; how many pictures were sent or kept to send."""
        groups: dict[str, list[Region]] = {}
        for region in regions:
            groups.setdefault(region.image if region.image in images else "", []).append(region)
        sent = 0
        for name, group in groups.items():
            part = images.get(name)
            if part is None:
                continue
            try:
                drawn = await asyncio.to_thread(annotate, part.image, group, language=turn.lang)
            except Exception:  # the answer stands without its picture
                log.exception("drawing the boxes of message %d failed", turn.msg.id)
                continue
            sent += 1
            await self._send_picture(turn, drawn, f"boxes-{turn.msg.id}{f'-{sent}' if sent > 1 else ''}.jpg",
                                     delivered=delivered)
        return sent

    async def _send_picture(self, turn: Turn, drawn: Annotated, filename: str, *, delivered: bool = True) -> None:
        """Store the marked-up image as a reply of the turn's message (the history, the operator inbox and the
        helpdesk API's polling show it) and send it on the turn's sink after what was sent so far; kept in the
        outbox when the platform is away for a while, or when the answer itself waits there (the order stays)."""
        msg = turn.msg
        caption = ", ".join(drawn.labels)
        mime = "image/jpeg"
        row = await self.store.add_message(msg.key, NewMessage(
            role="assistant", text=caption, kind="notice", state="answered", reply_to=msg.id, route=msg.route,
            attachments=(Attachment(f"blob:{sha256_of(drawn.data)}", filename, mime, len(drawn.data)),)))
        await self.store.save_attachment(row, 0, drawn.data, mime)
        reply = FileReply(filename, mime, drawn.data, caption)
        error: BaseException | None = None
        wait = 0.0
        if delivered and not (self.outbox.maybe_waiting(msg.key) and await self.outbox.waiting(msg.key)):
            try:
                await self.store.set_platform_ids(row, await turn.say(reply))
                return
            except Exception as exc:
                retry = turn.channel.retry_after(exc)
                if retry is None:
                    log.warning("the marked-up image of message %d was not delivered: %s", msg.id, describe(exc))
                    await self.store.set_state(row, "failed", error=f"{NOT_DELIVERED}: {describe(exc)}"[:500])
                    return
                error, wait = exc, retry
        context = replace(turn.context or SinkContext(msg.key), previous=(), record=None, reply_row=row)
        await self.outbox.keep(msg.key, reply, row=row, context=context, error=error, wait=wait)

    async def find(self, turn: Turn, thing: str) -> None:
        """``/find <thing>``: InternVL's grounding question about the conversation's latest image; the image comes
        back with what it found marked, or the user is told it found nothing."""
        msg, lang = turn.msg, turn.lang
        label = strip_tags(thing).strip()
        if not label:
            await turn.reply(Notice(i18n.text("find_usage", lang), kind="command"))
            return
        lease = self.resolver.lease()
        token = PIXEL_LEASE.set(lease)
        try:
            image = await self._latest_image(turn)
            if image is None:
                await turn.reply(Notice(i18n.text("find_no_image", lang), kind="command"))
                return
            await turn.relay.note(Status("typing"))
            question = [ChatMessage("user", GROUNDING_PROMPT.format(thing.strip()), (image,))]
            pieces: list[str] = []
            who = f"{msg.key.platform}:{msg.sender_id}"
            await self.gate.acquire(who)
            try:
                async for piece in self.engine.stream(question, self.settings.engine.generation):
                    pieces.append(piece)
            finally:
                self.gate.release(who)
            # InternVL answers the grounding question with tagged boxes, sometimes with the bare list alone
            regions = parse_regions(strip_controls("".join(pieces)), default_label=label, bare=True)
            if not regions:
                await turn.reply(Notice(i18n.text("find_nothing", lang, thing=label), kind="command"))
                return
            drawn = await asyncio.to_thread(annotate, image.image, regions, language=lang)
        finally:
            PIXEL_LEASE.reset(token)
            await self.resolver.release(lease)
        await self._send_picture(turn, drawn, f"find-{msg.id}.jpg")
        await self.store.finish(msg.id, "answered")
        turn.finished = True

    async def _latest_image(self, turn: Turn) -> ImagePart | None:
        """The newest image of the conversation's context: the command's own first, then earlier messages'."""
        msg = turn.msg
        conv = await self.store.conversation(msg.key)
        earlier = [r for r in await self.store.transcript(msg.key, limit=100)
                   if r.role == "user" and r.attachments and conv.context_start <= r.id < msg.id]
        for row in [msg, *reversed(earlier)]:
            for att in reversed(row.attachments):
                try:
                    data, sha, kind = await self.resolver.fetch(row, att, turn.channel)
                    if kind.kind != "image":
                        continue
                    pixels = await self.resolver.decode(sha, data, att.filename)
                except InputError as exc:
                    log.info("attachment %r not used by /find: %s", att.filename, exc)
                    continue
                if pixels is not None:
                    return ImagePart(image=pixels, max_tiles=self.settings.media.max_tiles, sha256=sha,
                                     source=data if self.engine.info.wants_source else None)
        return None


def grounding_images(prompt: Prompt) -> dict[str, ImagePart]:
    """The images the model's boxes may refer to, by the names the prompt gave them (``Image-2``, ``Page-3``),
    ``""`` for the default: the latest image of the newest user message that has one (the turn's own, else an
    earlier one still in the context). A knowledge base's source pages are named but never the default."""
    for message in reversed(prompt.messages):
        if message.role != "user" or not message.images:
            continue
        named: dict[str, ImagePart] = {}
        many = len(message.images) > 1
        number = 0
        for part in message.images:  # the numbering of bot.engines.base.layout
            if part.label:
                named[part.label] = part
            elif many:
                number += 1
                named[f"Image-{number}"] = part
        own = [p for p in message.images if not p.label.startswith("Source [")]
        if own:
            named[""] = next((p for p in reversed(own) if not p.label), own[-1])
            return named
    return {}
