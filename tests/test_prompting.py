"""Prompt building: the turns kept between turns give exactly the prompt a fresh read gives."""

from __future__ import annotations

import random

import pytest

from bot.conversation.prompting import PromptBuilder
from bot.engines import ChatMessage, EchoEngine
from bot.media.attachments import AttachmentResolver
from bot.store import MemoryStore, NewMessage, SQLiteStore, Store
from bot.types import ConversationKey
from tests.conftest import make_settings

KEY = ConversationKey("test", "c1")


def _builder(store: Store, engine: EchoEngine, tmp_path) -> PromptBuilder:  # type: ignore[no-untyped-def]
    return PromptBuilder(store, engine, AttachmentResolver(make_settings(tmp_path), store, engine))


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", range(4))
async def test_the_kept_window_gives_the_same_prompt_as_a_fresh_read(tmp_path, store_kind: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    store: Store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "s.sqlite3")
    await store.open()
    engine = EchoEngine(context_length=1200)
    kept = _builder(store, engine, tmp_path)
    system = ChatMessage("system", "You help.")
    waiting: list[int] = []  # questions asked while an earlier one is being answered
    for step in range(120):
        text = "q" * rng.choice([5, 40, 200, 700]) + f" {step}"
        mid = await store.add_message(KEY, NewMessage(role="user", text=text))
        waiting.append(mid)
        if rng.random() < 0.3 and len(waiting) < 3:
            continue  # the next question arrives before this one is answered
        conv = await store.conversation(KEY)
        if rng.random() < 0.03:
            conv = await store.update_conversation(KEY, context_start=mid)  # /reset
        for question in waiting:
            msg = await store.message(question)
            current = ChatMessage("user", msg.text)
            got = await kept.fit(msg, conv, system, current, 900)
            fresh = await _builder(store, engine, tmp_path).fit(msg, conv, system, current, 900)
            assert [(m.role, m.text) for m in got.messages] == [(m.role, m.text) for m in fresh.messages], step
            await store.finish(question, "answered" if rng.random() < 0.9 else "failed",
                               reply="a" * rng.choice([10, 100, 400]) + f" {question}")
        waiting = []
    window = kept._windows[KEY]
    assert len(window.turns) < 40  # only the turns that fit (and one more) are kept
    await store.close()
