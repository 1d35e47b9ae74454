"""A turn's answer: its prompt (files resolved and counted, the persona's system prompt, the knowledge bases'
passages, the history that fits), the engine's stream relayed to the turn's sink (InternVL's grounding tags and
the persona's handoff marker filtered out), the final answer sent or kept in the outbox, recorded with what made
it, and one access-log line. The conversation manager holds one (``manager.answerer``) and calls
:meth:`Answerer.answer` for every turn that is neither a command nor a handoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from cachetools import LRUCache

from bot.config import Settings
from bot.conversation.grounding import Grounder, grounding_images
from bot.conversation.limits import UsageGuard
from bot.conversation.outbox import Outbox, StillHanging
from bot.conversation.prompting import Prompt, PromptBuilder
from bot.conversation.relay import MarkerFilter, MeteredSink
from bot.conversation.turn import Turn
from bot.engines.base import ChatMessage, Engine
from bot.errors import EmptyMessage, MessageTooLong
from bot.handoff.desk import HandoffDesk
from bot.knowledge.citing import cited
from bot.knowledge.reader import KnowledgeReader
from bot.l10n import i18n
from bot.l10n.personas import Persona
from bot.media.attachments import PIXEL_LEASE, AttachmentResolver
from bot.media.grounding import TagFilter, parse_regions
from bot.scheduling.scheduler import FairGate
from bot.seams import Channel
from bot.store import AnswerMeta, Conversation, Store
from bot.types import (
    AnswerDone,
    ConversationKey,
    Notice,
    PlatformIds,
    SinkContext,
    Status,
    platform_ids,
    strip_controls,
    was_cut,
)

log = logging.getLogger(__name__)

#: Per-conversation memory kept in the process (what was already said about images left out of the context).
REMEMBERED_CONVERSATIONS = 4096


class Answerer:
    """See the module docstring. ``gate``: the model's places, handed out fairly between users (shared with
    ``/find``); ``persona_for``: the manager's choice of a conversation's persona."""

    def __init__(self, settings: Settings, store: Store, engine: Engine, *, resolver: AttachmentResolver,
                 prompts: PromptBuilder, usage: UsageGuard, reader: KnowledgeReader | None, outbox: Outbox,
                 grounder: Grounder, desk: HandoffDesk, gate: FairGate,
                 persona_for: Callable[[Conversation, Channel], Persona]) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.resolver = resolver
        self.prompts = prompts
        self.usage = usage
        self.reader = reader
        self.outbox = outbox
        self.grounder = grounder
        self.desk = desk
        self.gate = gate
        self.persona_for = persona_for
        self._reported: LRUCache[ConversationKey, int] = LRUCache(maxsize=REMEMBERED_CONVERSATIONS)

    def forget(self, key: ConversationKey) -> None:
        """``/reset`` or a forgotten conversation: what was said about its images left out starts again."""
        self._reported.pop(key, None)

    async def answer(self, turn: Turn) -> None:
        """The turn's answer; what it decoded (images, its history's) is held out of the shared pixel budget
        until it ends, then given back."""
        lease = self.resolver.lease()
        token = PIXEL_LEASE.set(lease)
        try:
            await self._answer_with(turn)
        finally:
            PIXEL_LEASE.reset(token)
            await self.resolver.release(lease)

    async def _prompt(self, turn: Turn) -> tuple[Prompt, Persona]:
        """The turn's prompt: its files resolved (and counted against the user's limits), its persona's
        system prompt, the history that fits; what was left out is said in notes."""
        msg, lang, relay = turn.msg, turn.lang, turn.relay
        text = msg.text.strip()
        if not text and not msg.attachments:
            raise EmptyMessage()
        cut = was_cut(msg.text)
        if cut or len(msg.text) > self.settings.conversation.max_message_chars:
            raise MessageTooLong(chars=cut or len(msg.text), limit=self.settings.conversation.max_message_chars)
        await relay.note(Status("typing"))
        resolved = await self.resolver.resolve(msg, turn.channel, relay.post, lang)
        await self.usage.admit_media(f"{msg.key.platform}:{msg.sender_id}", turn.channel.policy.limits,
                                     images=resolved.image_count, video_seconds=resolved.video_seconds)
        for note in resolved.notes:
            await turn.note(note)
        conv = await self.store.conversation(msg.key)
        persona = self.persona_for(conv, turn.channel)
        system = ChatMessage("system", persona.system_prompt(lang))
        current = ChatMessage("user", "\n\n".join(p for p in (text, *resolved.texts) if p), tuple(resolved.images),
                              tuple(resolved.videos))
        budget = ((self.settings.conversation.history_token_budget or self.engine.info.context_length)
                  - self.settings.engine.generation.max_new_tokens)
        # the persona's bases and those bound to the adapter (adapters.<name>.knowledge), each once
        bases = tuple(dict.fromkeys((*persona.knowledge, *self.settings.adapter_knowledge(msg.key.platform))))
        passages_left_out = 0
        if bases and self.reader is not None:
            reading = await self.reader.prompt_with(turn.msg, persona, current, budget, bases=bases)
            current, passages_left_out = reading.message, reading.left_out
        prompt = await self.prompts.fit(msg, conv, system, current, budget, reported=self._reported.get(msg.key, 0))
        if passages_left_out:  # what the documentation had and the prompt could not hold is said too
            await turn.note(Notice(i18n.text("knowledge_left_out", lang, count=passages_left_out)))
        if prompt.sources_dropped:
            await turn.note(Notice(i18n.text("source_pages_left_out", lang, count=prompt.sources_dropped)))
        if prompt.reduced:
            await turn.note(Notice(i18n.text("images_reduced", lang, count=prompt.reduced)))
        if prompt.reduced_pages:  # a document's pages are pages, not "images"
            await turn.note(Notice(i18n.text("pages_reduced", lang, count=prompt.reduced_pages)))
        if prompt.dropped:
            await turn.note(Notice(i18n.text("history_images_dropped", lang, count=prompt.dropped)))
        self._remember_reported(msg.key, prompt.reported)
        return prompt, persona

    async def _answer_with(self, turn: Turn) -> None:
        msg, lang, relay = turn.msg, turn.lang, turn.relay
        prompt, persona = await self._prompt(turn)
        generation = self.settings.engine.generation

        marker = MarkerFilter(persona.handoff_marker) if persona.handoff_marker else None
        tags = TagFilter()  # InternVL's <ref>/<box>: the labels are read, the boxes drawn (on every platform)
        try:
            await self.gate.acquire(f"{msg.key.platform}:{msg.sender_id}")
            try:
                async for raw in self.engine.stream(prompt.messages, generation):
                    chunk = tags.feed(strip_controls(raw))
                    await relay.push(marker.feed(chunk) if marker else chunk)
                    if relay.error is not None and turn.channel.retry_after(relay.error) is None:
                        raise relay.error  # the platform refused for good: stop generating for it
                    # (a platform down for a while: the answer is finished and kept for the outbox)
            finally:
                self.gate.release(f"{msg.key.platform}:{msg.sender_id}")
            tail = tags.rest()
            await relay.push(marker.feed(tail) + marker.rest() if marker else tail)
        except asyncio.CancelledError:
            # the turn ends on its sink even before any text: a silent end stops typing and placeholders
            stopped = relay.streamed.strip() + " " + i18n.text("cancelled", lang) if relay.streamed.strip() else ""
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(2):
                    await relay.send(AnswerDone(stopped, outcome="interrupted"))
            raise
        except Exception:
            if relay.streamed.strip() and relay.error is None:
                with contextlib.suppress(Exception):
                    await relay.send(AnswerDone(relay.streamed.strip(), outcome="failed"))
            raise
        answer = relay.streamed.strip()
        if self.reader is not None:
            answer = self.reader.with_sources(prompt.messages[-1], answer, lang)
        answer = answer or i18n.text("empty_answer", lang)
        delivered = await self._deliver_final(turn, AnswerDone(answer))
        if turn.answer is not None:  # kept with the answer: its feedback and a training export say what made it
            await self.store.record_answer(turn.answer, AnswerMeta(persona.name, self.engine.info.name,
                                                                   self._cited(prompt, answer)))
        self._log_answer(turn, prompt, answer, delivered)
        if persona.grounding == "auto" and tags.grounded:
            await self.grounder.draw(turn, parse_regions(tags.raw), grounding_images(prompt), delivered=delivered)
        if not delivered:
            return  # kept in the outbox (stored as answered): the lane is free, the outbox sends it
        turn.finished = True
        if marker and marker.found:
            await self.desk.model_gave_up(turn)

    @staticmethod
    def _cited(prompt: Prompt, answer: str) -> tuple[str, ...]:
        """The passages ``answer`` cites, as ``base/document#page`` labels."""
        passages = prompt.messages[-1].knowledge if prompt.messages else ()
        if not passages:
            return ()
        numbers = set(cited(answer, len(passages)))
        return tuple(f"{p.base}/{p.doc}" + (f"#{p.page}" if p.page is not None else "")
                     for k, p in enumerate(passages, start=1) if k in numbers)

    def _log_answer(self, turn: Turn, prompt: Prompt, answer: str, delivered: bool) -> None:
        """One line per answered message, like an access log: where, how long (to the first text and in
        all, from its arrival), the tokens in and out and the images the model saw."""
        if not log.isEnabledFor(logging.INFO):
            return
        sink = turn.relay.sink
        now = time.monotonic()
        arrived, first = (sink.arrived, sink.first_at) if isinstance(sink, MeteredSink) else (now, None)
        images = sum(len(m.images) + sum(len(v.frames) for v in m.videos) for m in prompt.messages[-1:])
        log.info("answered %s in %.2f s (first text %s): %d prompt + %d answer tokens, %d image(s)%s",
                 turn.msg.key, now - arrived, f"{first - arrived:.2f} s" if first is not None else "-",
                 prompt.tokens, self.engine.count_tokens(answer), images,
                 "" if delivered else "; delivery pending (outbox)")

    def _remember_reported(self, key: ConversationKey, reported: int) -> None:
        if reported:
            self._reported[key] = reported

    async def _send_final(self, turn: Turn, event: AnswerDone) -> PlatformIds:
        """``event`` through the turn's relay. With the platform in trouble as it goes (sends failing, the
        outbox probing it), a send that still has no answer when the outbox sees the platform answer again
        was made into the outage (it, or the preview the relay is stuck on ahead of it) and would wait out
        its time-out (10 s and more) while the other kept replies go: it is given up then
        (:class:`StillHanging`) and kept, to go with them."""
        platform = turn.msg.key.platform
        if not self.outbox.in_trouble(platform):
            ids = await turn.relay.send(event)
            self.outbox.went_through(platform)  # (the platform being probed: a probe now)
            return ids
        loop = asyncio.get_running_loop()
        started = loop.time()
        sending = asyncio.ensure_future(turn.relay.send(event))
        back = asyncio.ensure_future(self.outbox.answers_again(platform))
        try:
            await asyncio.wait((sending, back), return_when=asyncio.FIRST_COMPLETED)
            if not sending.done():
                # back: a request made moments ago (or waiting its turn in the rate limiter) may be about to go
                # through, and given up it would be sent twice where the platform cannot tell; only one pending
                # longer than a probe may take was made into the outage
                grace = self.outbox.probe_timeout - (loop.time() - started)
                if grace > 0:
                    await asyncio.wait((sending,), timeout=grace)
        finally:
            back.cancel()
            if not sending.done():
                sending.cancel()
        if sending.done() and not sending.cancelled():
            ids = sending.result()  # (or its error)
            self.outbox.went_through(platform)
            return ids
        await turn.relay.close()  # the request it hangs on (this answer's, or a preview's ahead of it) ends
        await asyncio.gather(sending, return_exceptions=True)
        raise StillHanging(f"no answer from {platform} yet, while it answers again")

    async def _deliver_final(self, turn: Turn, event: AnswerDone) -> bool:
        """The turn's final answer: sent now, or — the platform failing for a while, or earlier replies of the
        conversation still waiting — stored as the answer and kept in the outbox. True when it was sent."""
        msg = turn.msg
        held_back = self.outbox.maybe_waiting(msg.key) and await self.outbox.waiting(msg.key)
        error: BaseException | None = None
        if not held_back:
            try:
                ids = platform_ids(await self._send_final(turn, event))
            except Exception as exc:
                if not isinstance(exc, StillHanging) and turn.channel.retry_after(exc) is None:
                    raise
                error = exc
            else:
                turn.answer = await self.store.finish(msg.id, "answered", reply=event.text, reply_platform_ids=ids)
                return True
        drafts = (await self.store.message(msg.id)).drafts  # what the failed attempt left: completed, not doubled
        row = turn.answer = await self.store.finish(msg.id, "answered", reply=event.text)
        assert row is not None
        context = replace(turn.context or SinkContext(msg.key), previous=drafts, record=None)
        # (a send given up as still hanging: the platform answers again, the outbox sends it now)
        wait = (turn.channel.retry_after(error) or 0.0) if error is not None and \
            not isinstance(error, StillHanging) else 0.0
        await self.outbox.keep(msg.key, event, row=row, context=context, error=error, wait=wait)
        turn.finished = True
        return False
