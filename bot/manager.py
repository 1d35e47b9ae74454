"""The conversation manager: every adapter's messages go through here.

It stores each message before processing it, keeps answers in arrival order within a
conversation (one generation at a time per conversation) while conversations run in parallel
under a global bound, handles commands, picks the persona and the answer language, trims the
history to the model's context, streams the engine's answer to the adapter's sink, and resumes
messages left unanswered by a crash when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from bot import i18n
from bot.budget import Item, plan
from bot.config import Settings
from bot.documents import Document, read_pdf
from bot.engines.base import ChatMessage, Engine, ImagePart, VideoPart, message_cost
from bot.errors import (
    AttachmentUnavailable,
    BotError,
    ConfigError,
    EmptyMessage,
    InputError,
    MessageTooLong,
    PromptTooLong,
    TooManyPending,
    UnsupportedFile,
)
from bot.handoff import HandoffEvent, LogNotifier, Notifier
from bot.logs import conversation_var
from bot.media import MAX_TEXT_FILE_CHARS, ByteLRU, MediaKind, decode_pixels, decode_text, sniff
from bot.metrics import Metrics
from bot.personas import Persona, load_personas
from bot.store import Conversation, NewMessage, Store, StoredAttachment, StoredMessage
from bot.tables import markdown_tables, to_csv, to_json
from bot.types import (
    AnswerDone,
    Channel,
    ConversationKey,
    FileReply,
    IncomingMessage,
    Notice,
    ReplyEvent,
    ReplySink,
    Status,
    TextChunk,
)
from bot.video import sample_frames, sample_frames_fast

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

COMMANDS = ("start", "help", "reset", "persona", "lang", "export", "human", "bot")
#: Messages of the conversation sent along with a handoff, so the person sees what came before.
HANDOFF_TRANSCRIPT = 20
_COMMAND = re.compile(r"/([A-Za-z][A-Za-z0-9_]*)(?:@\S+)?(?:\s+(.*))?\Z", re.S)


def parse_command(text: str) -> tuple[str, str] | None:
    """``/persona tutor`` -> ``("persona", "tutor")``; ``/start@MyBot`` -> ``("start", "")``.

    Text that merely starts with a slash (``/usr/bin is missing``) is not a command.
    """
    m = _COMMAND.match(text.strip())
    if not m:
        return None
    return m.group(1).lower(), (m.group(2) or "").strip()


@dataclass(frozen=True, slots=True)
class Ticket:
    """Returned by :meth:`ConversationManager.submit`; ``done`` resolves to the message's final state."""

    message_id: int
    done: asyncio.Future[str]


@dataclass(eq=False)
class _Lane:
    """The queue of one conversation: messages are processed one at a time, in arrival order."""

    key: ConversationKey
    queue: deque[StoredMessage] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    current: asyncio.Task[None] | None = None
    resetting: bool = False


class ConversationManager:
    """Routes messages from adapters to the engine and back. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: Engine,
        *,
        personas: dict[str, Persona] | None = None,
        detector: i18n.LanguageDetector | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.conf = settings.conversation
        self.store = store
        self.engine = engine
        self.personas = personas if personas is not None else load_personas(self.conf.personas_dir or None)
        if self.conf.default_persona not in self.personas:
            raise ConfigError(
                f"conversation.default_persona: no persona named {self.conf.default_persona!r} — "
                f"choose one of {', '.join(sorted(self.personas))}"
            )
        self.detector = detector or i18n.LanguageDetector(self.conf.languages)
        self._channels: dict[str, Channel] = {}
        self._lanes: dict[ConversationKey, _Lane] = {}
        self._parallel = asyncio.Semaphore(self.conf.max_parallel_conversations)
        self._done: dict[int, asyncio.Future[str]] = {}
        self._accepting = True
        self._images = ByteLRU(512 * 2**20)  # decoded images by SHA-256: ~36 MB for a 12 MP photo
        self._videos: OrderedDict[str, VideoPart] = OrderedDict()
        self._documents: OrderedDict[str, Document] = OrderedDict()
        self._dropped_notified: dict[ConversationKey, int] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.notifier: Notifier = notifier or LogNotifier()
        self.metrics = metrics or Metrics()
        self.metrics.track_queue(lambda: self.queue_depth)
        self._arrived: dict[int, float] = {}
        self._mode_changed: dict[int, bool] = {}  # /human, /bot: did this message change the mode?
        self._background: set[asyncio.Task[None]] = set()

    # -- life cycle -----------------------------------------------------------------------

    def register(self, channel: Channel) -> None:
        """Register an adapter's channel; its persona must exist."""
        if channel.persona and channel.persona not in self.personas:
            raise ConfigError(
                f"adapters.{channel.platform}.persona: no persona named {channel.persona!r} — "
                f"choose one of {', '.join(sorted(self.personas))}"
            )
        self._channels[channel.platform] = channel

    async def start(self) -> int:
        """Resume messages a previous run left unanswered; return how many were queued again."""
        self._accepting = True
        resumed = 0
        for msg in await self.store.pending():
            if msg.key.platform not in self._channels:
                log.warning("message %d of %s waits for its adapter (%s) to be enabled", msg.id, msg.key,
                            msg.key.platform)
                continue
            if any(m.id == msg.id for lane in self._lanes.values() for m in lane.queue):
                continue
            self._enqueue(msg)
            resumed += 1
        if resumed:
            log.info("resuming %d message(s) left unanswered by the previous run", resumed)
        if self.settings.store.retention_days and self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self._purge_forever())
        return resumed

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking messages; let running ones finish within ``grace`` seconds, then cancel them.

        Messages cancelled here stay ``received``/``answering`` in the store, so the next start
        answers them.
        """
        self._accepting = False
        if self._housekeeping:
            self._housekeeping.cancel()
            self._housekeeping = None
        tasks = [lane.task for lane in self._lanes.values() if lane.task and not lane.task.done()]
        tasks += list(self._background)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def queue_depth(self) -> int:
        return sum(len(lane.queue) + (1 if lane.current else 0) for lane in self._lanes.values())

    # -- intake ---------------------------------------------------------------------------

    async def submit(self, message: IncomingMessage) -> Ticket | None:
        """Store ``message`` and queue it for an answer. Returns None for a duplicate event.

        Returns quickly: the answer is produced in the background and rendered by the channel's
        sink; ``Ticket.done`` resolves when the message reaches its final state.
        """
        channel = self._channels.get(message.key.platform)
        if channel is None:
            raise RuntimeError(f"no channel registered for platform {message.key.platform!r}")
        if not self._accepting:
            raise RuntimeError("the conversation manager is shutting down")
        if message.event_id and not await self.store.remember_event(message.key.platform, message.event_id):
            log.info("duplicate event %s from %s ignored", message.event_id, message.key.platform)
            return None
        self.metrics.messages_in.labels(message.key.platform).inc()
        command = parse_command(message.text)
        conv = await self.store.conversation(message.key)
        held = conv.mode == "human" and not command
        new = NewMessage(
            role="user", text=message.text, kind="command" if command else "chat", state="held" if held else "received",
            attachments=message.attachments, sender_id=message.sender.id, sender_name=message.sender.name,
            locale=message.locale, platform_message_id=message.message_id, event_id=message.event_id,
        )
        mid = await self.store.add_message(message.key, new)
        stored = StoredMessage(
            id=mid, key=message.key, role="user", kind=new.kind, text=message.text, state="received",
            attachments=tuple(
                StoredAttachment(i, a.ref, a.filename, a.mime, a.size, a.sha256)
                for i, a in enumerate(message.attachments)
            ),
            sender_id=message.sender.id, sender_name=message.sender.name, locale=message.locale,
            platform_message_id=message.message_id,
        )
        self._arrived[mid] = time.monotonic()
        if held:
            return self._hold(stored, channel)
        if (command and command[0] in ("human", "bot")) or (not command and i18n.asks_for_human(message.text)):
            # The mode changes now, not when the lane reaches the message: what the user sends next
            # already goes to the person (or back to the bot).
            want = "bot" if command and command[0] == "bot" else "human"
            self._mode_changed[mid] = conv.mode != want
            if conv.mode != want:
                await self.store.update_conversation(
                    message.key, mode=want, handoff_at=time.time() if want == "human" else None)
        lane = self._lanes.get(message.key)
        if command and command[0] == "reset" and lane is not None:
            await self._cancel_lane(lane)
        elif lane is not None and len(lane.queue) + (1 if lane.current else 0) >= self.conf.max_pending_per_conversation:
            future = self._future(mid)
            waiting = len(lane.queue) + 1
            await self._fail(stored, channel, TooManyPending(count=waiting), await self._language_for(stored))
            return Ticket(mid, future)
        future = self._future(mid)
        self._enqueue(stored)
        return Ticket(mid, future)

    def _hold(self, msg: StoredMessage, channel: Channel) -> Ticket:
        """A message that arrived while the conversation waits for a person: kept, passed on, not answered."""
        future = self._future(msg.id)
        self._arrived.pop(msg.id, None)
        self.metrics.held_messages.inc()

        async def keep() -> None:
            conversation_var.set(str(msg.key))
            try:
                names = await self._keep_attachments(msg, channel)
                text = "\n".join([msg.text, *(f"[{n}]" for n in names)]).strip()
                await self.notifier.notify(HandoffEvent(
                    "message", str(msg.key), msg.key.platform, await self._language_for(msg), text=text,
                    user=msg.sender_name or msg.sender_id))
            except Exception:
                log.exception("passing message %d on to the human failed", msg.id)
            finally:
                self._resolve(msg.id, "held")

        self._spawn(keep())
        return Ticket(msg.id, future)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _keep_attachments(self, msg: StoredMessage, channel: Channel) -> list[str]:
        """Fetch and store a message's attachments without reading them (for the person who takes over)."""
        names = []
        for att in msg.attachments:
            try:
                await self._attachment_bytes(msg, att, channel)
                names.append(att.filename or "file")
            except Exception as exc:
                log.warning("attachment %r of message %d not kept: %s", att.filename, msg.id, exc)
        return names

    def _future(self, mid: int) -> asyncio.Future[str]:
        future = self._done.get(mid)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._done[mid] = future
        return future

    def _resolve(self, mid: int, state: str) -> None:
        future = self._done.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(state)

    def _enqueue(self, msg: StoredMessage) -> None:
        lane = self._lanes.get(msg.key)
        if lane is None:
            lane = self._lanes[msg.key] = _Lane(msg.key)
        lane.queue.append(msg)
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._drain(lane), name=f"lane {msg.key}")

    async def _cancel_lane(self, lane: _Lane) -> None:
        """``/reset``: drop what is queued and stop the generation in progress."""
        while lane.queue:
            queued = lane.queue.popleft()
            await self.store.finish(queued.id, "cancelled", error="cancelled by /reset")
            self._resolve(queued.id, "cancelled")
        if lane.current is not None and not lane.current.done():
            lane.resetting = True
            lane.current.cancel()

    async def _drain(self, lane: _Lane) -> None:
        try:
            while lane.queue:
                msg = lane.queue.popleft()
                async with self._parallel:
                    lane.current = asyncio.create_task(self._process(msg, lane))
                    try:
                        await lane.current
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is not None and task.cancelling():
                            raise  # the lane itself is being stopped
                    finally:
                        lane.current = None
                        lane.resetting = False
        finally:
            if self._lanes.get(lane.key) is lane and not lane.queue:
                del self._lanes[lane.key]

    # -- processing -----------------------------------------------------------------------

    async def _process(self, msg: StoredMessage, lane: _Lane) -> None:
        conversation_var.set(str(msg.key))
        channel = self._channels[msg.key.platform]
        state = "failed"
        lang = self.conf.default_language
        try:
            lang = await self._language_for(msg)
            await self.store.set_state(msg.id, "answering")
            sink = self._sink(channel, msg)
            if msg.kind == "command":
                await self._command(msg, channel, sink, lang)
            elif i18n.asks_for_human(msg.text):
                await self._handoff(msg, channel, sink, lang)
            else:
                await self._answer(msg, channel, sink, lang)
            state = "answered"
        except asyncio.CancelledError:
            if lane.resetting:
                state = "cancelled"
                await self.store.finish(msg.id, "cancelled", error="cancelled by /reset")
            else:
                state = "interrupted"  # shutdown: stays pending, answered after restart
            raise
        except InputError as exc:
            await self._fail(msg, channel, exc, lang)
        except Exception as exc:
            log.exception("message %d failed", msg.id)
            self.metrics.engine_errors.labels(self.engine.info.name).inc()
            await self._fail(msg, channel, exc, lang)
        finally:
            self._arrived.pop(msg.id, None)
            self._mode_changed.pop(msg.id, None)
            self._resolve(msg.id, state)

    def _sink(self, channel: Channel, msg: StoredMessage) -> ReplySink:
        return _MeteredSink(channel.sink_for(msg.key, msg.platform_message_id), self.metrics, msg.key.platform,
                            self._arrived.get(msg.id) or time.monotonic())

    async def _fail(self, msg: StoredMessage, channel: Channel, exc: Exception, lang: str) -> None:
        key = exc.user_key if isinstance(exc, BotError) else "engine_error"
        params = exc.params if isinstance(exc, BotError) else {}
        if "name" in params and not params["name"]:
            params = {**params, "name": "file"}
        text = i18n.text(key, lang, **params)
        if isinstance(exc, InputError):
            log.info("message %d refused (%s): %s", msg.id, type(exc).__name__, exc)
        sink = self._sink(channel, msg)
        pid = await _emit(sink, Notice(text, kind="error"))
        await self.store.finish(msg.id, "failed", reply=text, kind="notice", reply_platform_id=pid,
                                error=f"{type(exc).__name__}: {exc}"[:500])
        self._arrived.pop(msg.id, None)
        self._resolve(msg.id, "failed")

    async def _language_for(self, msg: StoredMessage) -> str:
        conv = await self.store.conversation(msg.key)
        text = "" if msg.kind == "command" else msg.text
        lang = i18n.choose_language(
            self.detector, text, pinned=conv.language, locale_hint=msg.locale, previous=conv.last_language,
            default=self.conf.default_language, short_text_chars=self.conf.short_text_chars,
        )
        if lang != conv.last_language:
            await self.store.update_conversation(msg.key, last_language=lang)
        return lang

    def persona_for(self, conv: Conversation, channel: Channel) -> Persona:
        name = conv.persona or channel.persona or self.conf.default_persona
        return self.personas.get(name) or self.personas[self.conf.default_persona]

    async def _command(self, msg: StoredMessage, channel: Channel, sink: ReplySink, lang: str) -> None:
        name, arg = parse_command(msg.text) or ("", "")
        conv = await self.store.conversation(msg.key)
        names = ", ".join(sorted(self.personas))
        languages = ", ".join(self.conf.languages)
        if name == "start":
            persona = self.persona_for(conv, channel)
            reply = f"{persona.greeting_for(lang)}\n{i18n.text('greeting_hint', lang)}"
        elif name == "help":
            reply = i18n.text("help", lang, personas=names, languages=languages)
        elif name == "reset":
            await self.store.update_conversation(msg.key, context_start=msg.id + 1)
            self._dropped_notified.pop(msg.key, None)
            reply = i18n.text("reset_done", lang)
        elif name == "persona":
            if not arg:
                reply = i18n.text("persona_list", lang, persona=self.persona_for(conv, channel).name, personas=names)
            elif arg.lower() in self.personas:
                await self.store.update_conversation(msg.key, persona=arg.lower())
                reply = i18n.text("persona_set", lang, persona=self.personas[arg.lower()].title)
            else:
                reply = i18n.text("persona_unknown", lang, name=arg, personas=names)
        elif name == "lang":
            code = i18n.normalize_code(arg)
            if code == "auto":
                await self.store.update_conversation(msg.key, language=None)
                reply = i18n.text("lang_auto", lang)
            elif code and code in self.conf.languages:
                await self.store.update_conversation(msg.key, language=code, last_language=code)
                reply = i18n.text("lang_set", code, language=i18n.language_name(code))
            else:
                reply = i18n.text("lang_unknown", lang, code=arg or "?", languages=languages)
        elif name == "export":
            reply = await self._export(msg, conv, sink, arg.lower().strip(), lang)
        elif name == "human":
            await self._handoff(msg, channel, sink, lang)
            return
        elif name == "bot":
            if self._mode_changed.get(msg.id, True):
                await self.notifier.notify(HandoffEvent("returned", str(msg.key), msg.key.platform, lang, by="user",
                                                        user=msg.sender_name or msg.sender_id))
                reply = i18n.text("handoff_ended", lang)
            else:
                reply = i18n.text("handoff_not_active", lang)
        else:
            reply = i18n.text("unknown_command", lang, command=f"/{name}")
            log.info("unknown command /%s", name)
        pid = await _emit(sink, Notice(reply, kind="command"))
        await self.store.finish(msg.id, "answered", reply=reply, kind="command", reply_platform_id=pid)

    async def _handoff(self, msg: StoredMessage, channel: Channel, sink: ReplySink, lang: str) -> None:
        """``/human`` or a plain request for a person: tell the user, pass the conversation on."""
        if self._mode_changed.get(msg.id, True):
            await self._keep_attachments(msg, channel)
            rows = await self.store.transcript(msg.key, limit=HANDOFF_TRANSCRIPT)
            transcript = [{"role": r.role, "text": r.text, "author": r.sender_name} for r in rows
                          if r.kind != "command" and r.id != msg.id]
            await self.notifier.notify(HandoffEvent(
                "requested", str(msg.key), msg.key.platform, lang, text=msg.text,
                user=msg.sender_name or msg.sender_id, transcript=transcript))
            self.metrics.handoffs.labels(msg.key.platform).inc()
            reply = i18n.text("handoff_started", lang)
        else:
            reply = i18n.text("handoff_already", lang)
        pid = await _emit(sink, Notice(reply, kind="command"))
        await self.store.finish(msg.id, "answered", reply=reply, kind="command", reply_platform_id=pid)

    # -- operators ------------------------------------------------------------------------

    async def hand_back(self, key: ConversationKey, *, by: str = "operator") -> bool:
        """An operator gives the conversation back to the bot; the user is told. False if it was not handed off."""
        conv = await self.store.conversation(key)
        if conv.mode != "human":
            return False
        await self.store.update_conversation(key, mode="bot", handoff_at=None)
        lang = conv.language or conv.last_language or self.conf.default_language
        await self.notifier.notify(HandoffEvent("returned", str(key), key.platform, lang, by=by))
        await self._operator_notice(key, i18n.text("handoff_ended", lang), author="")
        return True

    async def operator_reply(self, key: ConversationKey, text: str, *, author: str) -> int:
        """A person's answer in a handed-off conversation: stored and sent to the user as theirs."""
        text = text.strip()
        if not text:
            raise ValueError("an operator reply needs text")
        return await self._operator_notice(key, text, author=author)

    async def _operator_notice(self, key: ConversationKey, text: str, *, author: str) -> int:
        channel = self._channels.get(key.platform)
        if channel is None:
            raise RuntimeError(f"no channel registered for platform {key.platform!r}")
        sink = _MeteredSink(channel.sink_for(key, None), self.metrics, key.platform, time.monotonic())
        pid = await _emit(sink, Notice(text, kind="info", author=author))
        return await self.store.add_message(key, NewMessage(
            role="assistant", text=text, kind="notice", state="answered", sender_name=author,
            platform_message_id=pid))

    async def _export(self, msg: StoredMessage, conv: Conversation, sink: ReplySink, fmt: str, lang: str) -> str:
        """``/export csv|json``: the tables of the last answer, sent back as a file."""
        if fmt not in ("csv", "json"):
            return i18n.text("export_usage", lang)
        rows = await self.store.history(msg.key, since=conv.context_start, before=msg.id)
        last = next((r for r in reversed(rows) if r.role == "assistant"), None)
        found = markdown_tables(last.text) if last else []
        if not found:
            return i18n.text("export_nothing", lang)
        data = to_csv(found) if fmt == "csv" else to_json(found)
        filename = f"tables-{msg.key.chat}-{last.id if last else 0}.{fmt}"
        mime = "text/csv" if fmt == "csv" else "application/json"
        await sink.emit(FileReply(filename, mime, data))
        return i18n.text("export_done", lang, count=len(found), filename=filename)

    async def _answer(self, msg: StoredMessage, channel: Channel, sink: ReplySink, lang: str) -> None:
        text = msg.text.strip()
        if not text and not msg.attachments:
            raise EmptyMessage()
        if len(msg.text) > self.conf.max_message_chars:
            raise MessageTooLong(chars=len(msg.text), limit=self.conf.max_message_chars)
        await _emit(sink, Status("typing"))
        images, videos, extra = await self._attachments(msg, channel, sink, lang)
        conv = await self.store.conversation(msg.key)
        persona = self.persona_for(conv, channel)
        system = ChatMessage("system", persona.system_prompt(lang))
        current = ChatMessage("user", "\n\n".join(p for p in (text, *extra) if p), tuple(images), tuple(videos))
        generation = self.settings.engine.generation
        budget = (self.conf.history_token_budget or self.engine.info.context_length) - generation.max_new_tokens
        messages, reduced, dropped = await self._fit(msg, conv, system, current, budget)
        if reduced:
            await _emit(sink, Notice(i18n.text("images_reduced", lang, count=reduced)))
        if dropped > self._dropped_notified.get(msg.key, 0):
            await _emit(sink, Notice(i18n.text("history_images_dropped", lang, count=dropped)))
        self._dropped_notified[msg.key] = dropped

        chunks: list[str] = []
        try:
            async for chunk in self.engine.stream(messages, generation):
                chunks.append(chunk)
                await sink.emit(TextChunk(chunk))
        except asyncio.CancelledError:
            if chunks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with asyncio.timeout(2):
                        await sink.emit(AnswerDone("".join(chunks).strip() + " " + i18n.text("cancelled", lang),
                                                   interrupted=True))
            raise
        answer = "".join(chunks).strip()
        if not answer:
            answer = i18n.text("empty_answer", lang)
        pid = await sink.emit(AnswerDone(answer))
        await self.store.finish(msg.id, "answered", reply=answer, reply_platform_id=pid)

    async def _attachments(self, msg: StoredMessage, channel: Channel, sink: ReplySink,
                           lang: str) -> tuple[list[ImagePart], list[VideoPart], list[str]]:
        """Fetch (once), store by SHA-256, recognise and decode the attachments of ``msg``."""
        media = self.settings.media
        images: list[ImagePart] = []
        videos: list[VideoPart] = []
        texts: list[str] = []
        image_count = 0
        for att in msg.attachments:
            data, sha, kind = await self._attachment_bytes(msg, att, channel)
            name = att.filename or "file"
            if kind.kind == "video":
                videos.append(await self._video(sha, data, name, sink, lang))
            elif kind.kind == "document":
                pages, text, document = await self._document(sha, data, name)
                images.extend(pages)
                if text:
                    texts.append(text)
                if document.truncated:
                    await _emit(sink, Notice(i18n.text("document_truncated", lang, name=name, pages=len(pages),
                                                       total=document.total_pages)))
            elif kind.kind == "image":
                image_count += 1
                if image_count > media.max_images_per_turn:
                    continue
                image = await self._decode(sha, data, name)
                images.append(ImagePart(image=image, max_tiles=media.max_tiles, sha256=sha,
                                        source=data if self.engine.info.wants_source else None))
            elif kind.kind == "text":
                content, truncated = decode_text(data)
                texts.append(f"[{name}]\n{content}" + (" […]" if truncated else ""))
            else:
                raise UnsupportedFile(kind.label, name=name, kind=kind.label)
        if image_count > media.max_images_per_turn:
            await _emit(sink, Notice(i18n.text("too_many_images", lang, limit=media.max_images_per_turn,
                                               count=image_count)))
        return images, videos, texts

    async def _document(self, sha: str, data: bytes, name: str) -> tuple[list[ImagePart], str, Document]:
        """A PDF's pages as images (labelled ``Page-n``) and its text layer, cached by SHA-256."""
        media = self.settings.media
        document = self._documents.get(sha)
        if document is None:
            # The pages share what the context leaves for images: each is rendered at the resolution
            # its share of tiles needs (the budget planner may still lower it).
            room = (self.conf.history_token_budget or self.engine.info.context_length) \
                - self.settings.engine.generation.max_new_tokens - 1500
            per_tile = self.engine.info.tokens_per_tile + 2

            def tiles_for(pages: int) -> int:
                return max(1, room // max(1, pages) // per_tile - 1)

            document = await asyncio.to_thread(read_pdf, data, name=name, max_pages=media.max_pdf_pages,
                                               max_tiles=media.document_max_tiles, tiles_for=tiles_for)
            self._documents[sha] = document
            while len(self._documents) > 4:
                self._documents.popitem(last=False)
        pages = [ImagePart(image=p.image, max_tiles=document.max_tiles, sha256=f"{sha}#p{p.number}",
                           label=f"Page-{p.number}") for p in document.pages]
        texts = [f"[{name}, page {p.number}, text layer]\n{p.text}" for p in document.pages if p.text]
        text = "\n\n".join(texts)
        if len(text) > MAX_TEXT_FILE_CHARS:
            text = text[:MAX_TEXT_FILE_CHARS] + " […]"
        return pages, text, document

    async def _video(self, sha: str, data: bytes, name: str, sink: ReplySink | None, lang: str) -> VideoPart:
        """Sample a video's frames (cached by SHA-256), telling the user how far reading has got."""
        media = self.settings.media
        cached = self._videos.get(sha)
        if cached is not None:
            self._videos.move_to_end(sha)
            return cached
        loop = asyncio.get_running_loop()

        def progress(done: int, total: int) -> None:
            if sink is not None:
                status = Status("progress", i18n.text("reading_frames", lang, done=done, total=total))
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_emit(sink, status)))

        sampler = sample_frames_fast if media.video_sampling == "fast" else sample_frames
        frames, info, indices = await asyncio.to_thread(
            sampler, data, num_segments=media.video_frames, max_seconds=media.max_video_seconds,
            max_pixels=media.max_video_pixels, name=name, progress=progress,
        )
        log.info("video %s: %d frames of %d (%.1f s, %dx%d)", name, len(frames), info.frames, info.seconds,
                 info.width, info.height)
        part = VideoPart(frames=tuple(ImagePart(image=f, max_tiles=1, sha256=f"{sha}#{i}")
                                      for f, i in zip(frames, indices, strict=True)), name=name)
        self._videos[sha] = part
        while len(self._videos) > 4:
            self._videos.popitem(last=False)
        return part

    async def _attachment_bytes(self, msg: StoredMessage, att: StoredAttachment,
                                channel: Channel) -> tuple[bytes, str, MediaKind]:
        """The attachment's bytes (stored once by SHA-256), its SHA-256 and what it really is."""
        if att.sha256:
            with contextlib.suppress(FileNotFoundError):
                data = await self.store.attachment_data(att.sha256)
                return data, att.sha256, sniff(data, att.filename, att.mime)
        try:
            data = await channel.fetcher.fetch(att.as_attachment(), self.settings.media.max_file_bytes)
        except InputError:
            raise
        except Exception as exc:
            log.warning("fetching attachment %r failed: %s", att.filename, exc)
            raise AttachmentUnavailable(str(exc), name=att.filename or "file") from None
        kind = sniff(data, att.filename, att.mime)
        sha = await self.store.save_attachment(msg.id, att.position, data, kind.mime)
        return data, sha, kind

    async def _decode(self, sha: str, data: bytes, name: str) -> np.ndarray:
        """Decoded pixels of an attachment, cached by SHA-256: a photo asked about again is not decoded again."""
        key = (sha, self.settings.media.max_image_pixels)
        cached = self._images.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        image = await asyncio.to_thread(decode_pixels, data, name=name, max_pixels=self.settings.media.max_image_pixels)
        self._images.put(key, image)
        return image

    async def _fit(self, msg: StoredMessage, conv: Conversation, system: ChatMessage, current: ChatMessage,
                   budget: int) -> tuple[list[ChatMessage], int, int]:
        """The prompt that fits ``budget`` tokens: the persona, the newest whole turns of history that fit,
        and the current message, with the tiles of every image chosen by the budget planner.

        Returns (messages, images of the current turn shown in less detail, older images left out).
        """
        text_only = message_cost(self.engine, replace(current, images=(), videos=()))
        frames = sum(len(v.frames) for v in current.videos)
        fixed = message_cost(self.engine, system) + text_only + frames * (self.engine.info.tokens_per_tile + 6)
        floor = sum(self.engine.image_tokens(*p.size, 1) + 6 for p in current.images)
        if fixed + floor > budget:
            raise PromptTooLong(tokens=fixed + floor, limit=max(budget, 0))
        rows = await self.store.history(msg.key, since=conv.context_start, before=msg.id)
        answers = {row.reply_to: row for row in rows if row.role == "assistant" and row.reply_to}
        turns = [(row, answers[row.id]) for row in rows if row.role == "user" and row.id in answers]
        room = budget - fixed - floor
        kept: list[tuple[ChatMessage, ChatMessage]] = []
        dropped = 0
        for user, answer in reversed(turns):
            user_msg = await self._history_message(user) if room > 0 else None
            if user_msg is None:
                dropped += sum(1 for a in user.attachments if a.sha256 and a.mime.startswith("image/"))
                continue
            reply = ChatMessage("assistant", answer.text)
            cost = message_cost(self.engine, replace(user_msg, images=())) + message_cost(self.engine, reply)
            if cost > room:  # this turn's text does not fit: it and every older turn stay out
                room = 0
                dropped += len(user_msg.images)
                continue
            room -= cost
            kept.append((user_msg, reply))
        history_text = budget - fixed - floor - room
        items = [Item(f"c{i}", *p.size, want=p.max_tiles, age=0) for i, p in enumerate(current.images)]
        for age, (user_msg, _) in enumerate(kept, start=1):
            items += [Item(f"h{age}.{i}", *p.size, want=p.max_tiles, age=age) for i, p in enumerate(user_msg.images)]
        chosen = plan(items, budget - fixed - history_text, tokens_per_tile=self.engine.info.tokens_per_tile)
        if not chosen.fits:
            raise PromptTooLong(tokens=fixed + history_text + chosen.tokens, limit=max(budget, 0))

        def tiles(prefix: str, parts: tuple[ImagePart, ...]) -> tuple[ImagePart, ...]:
            return tuple(replace(p, max_tiles=chosen.tiles[f"{prefix}{i}"]) for i, p in enumerate(parts)
                         if chosen.tiles[f"{prefix}{i}"] > 0)

        messages = [system]
        for age, (user_msg, reply) in reversed(list(enumerate(kept, start=1))):
            shown = tiles(f"h{age}.", user_msg.images)
            dropped += len(user_msg.images) - len(shown)
            messages += [replace(user_msg, images=shown), reply]
        messages.append(replace(current, images=tiles("c", current.images)))
        reduced = sum(1 for key in chosen.reduced if key.startswith("c"))
        return messages, reduced, dropped

    async def _history_message(self, row: StoredMessage) -> ChatMessage:
        images: list[ImagePart] = []
        videos: list[VideoPart] = []
        texts: list[str] = [row.text.strip()] if row.text.strip() else []
        for att in row.attachments:
            if not att.sha256:
                continue
            cached = self._images.get((att.sha256, self.settings.media.max_image_pixels))
            if cached is not None and not self.engine.info.wants_source:  # decoded already: no need to read the file
                images.append(ImagePart(image=cached, max_tiles=self.settings.media.history_max_tiles,
                                        sha256=att.sha256))
                continue
            try:
                data = await self.store.attachment_data(att.sha256)
            except FileNotFoundError:
                continue
            kind = sniff(data, att.filename, att.mime)
            if kind.kind == "image":
                try:
                    image = await self._decode(att.sha256, data, att.filename)
                except InputError:
                    continue
                images.append(ImagePart(image=image, max_tiles=self.settings.media.history_max_tiles,
                                        sha256=att.sha256, source=data if self.engine.info.wants_source else None))
            elif kind.kind == "video":
                try:
                    videos.append(await self._video(att.sha256, data, att.filename, None, "en"))
                except InputError:
                    continue
            elif kind.kind == "document":
                try:
                    pages, text, _ = await self._document(att.sha256, data, att.filename)
                except InputError:
                    continue
                images.extend(replace(p, max_tiles=self.settings.media.history_max_tiles) for p in pages)
                if text:
                    texts.append(text)
            elif kind.kind == "text":
                texts.append(f"[{att.filename or 'file'}]\n{decode_text(data)[0]}")
        return ChatMessage("user", "\n\n".join(texts), tuple(images[: self.settings.media.max_images_per_turn]),
                           tuple(videos))

    async def _purge_forever(self) -> None:
        while True:
            cutoff = time.time() - self.settings.store.retention_days * 86400
            try:
                report = await self.store.purge(cutoff)
                if report.messages:
                    log.info("retention: deleted %d message(s), %d file(s)", report.messages,
                             report.attachment_files)
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(3600)


class _MeteredSink:
    """Counts what reaches the user and times the answer (first token, complete) from the message's arrival."""

    def __init__(self, sink: ReplySink, metrics: Metrics, adapter: str, arrived: float) -> None:
        self.sink = sink
        self.metrics = metrics
        self.adapter = adapter
        self.arrived = arrived
        self.first = True

    async def emit(self, event: ReplyEvent) -> str | None:
        result = await self.sink.emit(event)
        m = self.metrics
        if isinstance(event, TextChunk) and self.first:
            self.first = False
            m.ttft_seconds.labels(self.adapter).observe(time.monotonic() - self.arrived)
        elif isinstance(event, AnswerDone):
            m.messages_out.labels(self.adapter, "answer").inc()
            if not event.interrupted:
                m.answer_seconds.labels(self.adapter).observe(time.monotonic() - self.arrived)
        elif isinstance(event, Notice):
            m.messages_out.labels(self.adapter, "error" if event.kind == "error" else "notice").inc()
        elif isinstance(event, FileReply):
            m.messages_out.labels(self.adapter, "file").inc()
        return result


async def _emit(sink: ReplySink, event: ReplyEvent) -> str | None:
    """Emit an event whose loss must not fail the message (status, notices); log the failure."""
    try:
        return await sink.emit(event)
    except Exception:
        log.exception("the reply sink failed on %s", type(event).__name__)
        return None


__all__: Sequence[str] = ["COMMANDS", "ConversationManager", "Ticket", "parse_command"]
