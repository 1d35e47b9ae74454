"""Framework overhead: N concurrent conversations through the manager and a real SQLite store.

The engine is the echo engine (instant answers), so what is measured is the framework itself:
storing each message before processing, ordering, language choice, history, streaming to a sink,
storing the answer. The reference run streams the same requests straight from the engine in the
same process. Prints messages/s, p50/p99 added latency and lost messages, then one RESULT line.

    python bench/overhead.py [--conversations 1000] [--messages 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.engines import ChatMessage, EchoEngine
from bot.seams import Channel
from bot.store import SQLiteStore
from bot.testing import MemoryFetcher
from bot.types import AnswerDone, ConversationKey, IncomingMessage, Sender, SinkContext

QUESTIONS = [
    "My dishwasher shows error E15 and does not drain, what should I check?",
    "A minha impressora faz um barulho estranho quando liga.",
    "Der Kühlschrank wird nicht mehr kalt, was kann ich tun?",
    "ok",
    "¿Cómo cambio el filtro de la aspiradora?",
]


class CountingSink:
    immediate = True

    def __init__(self, answered: dict[int, float]) -> None:
        self.answered = answered
        self.current = 0

    async def emit(self, event: object) -> str | None:
        if isinstance(event, AnswerDone):
            self.answered[self.current] = time.perf_counter()
        return None


async def reference(conversations: int, messages: int) -> float:
    engine = EchoEngine(max_concurrency=conversations)
    settings = Settings().engine.generation

    async def client(c: int) -> None:
        history: list[ChatMessage] = [ChatMessage("system", "You are helpful.")]
        for m in range(messages):
            history.append(ChatMessage("user", QUESTIONS[(c + m) % len(QUESTIONS)]))
            answer = "".join([chunk async for chunk in engine.stream(history, settings)])
            history.append(ChatMessage("assistant", answer))

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(conversations)))
    return conversations * messages / (time.perf_counter() - start)


async def framework(conversations: int, messages: int, data_dir: Path,
                    rate: float = 0.0) -> tuple[float, list[float], int]:
    """Run ``conversations`` clients, ``messages`` each, through the manager and a SQLite store.

    rate == 0: closed loop, every client sends its next message as soon as the last is answered
    (measures capacity). rate > 0: open loop, messages arrive at ``rate`` per second in total, spread
    over the conversations (measures added latency at that load).
    """
    settings = Settings(data_dir=str(data_dir))
    store = SQLiteStore(settings.store_path)
    await store.open()
    engine = EchoEngine(max_concurrency=settings.conversation.max_parallel_conversations)
    manager = ConversationManager(settings, store, engine)
    answered: dict[int, float] = {}
    sinks: dict[ConversationKey, CountingSink] = {}

    def sink_for(context: SinkContext) -> CountingSink:
        sink = sinks.setdefault(context.key, CountingSink(answered))
        sink.current = int(context.reply_to or 0)
        return sink

    manager.register(Channel("bench", MemoryFetcher(), sink_for))
    await manager.start()
    latencies: list[float] = []
    lost = 0
    counter = iter(range(1, 10**9))
    begin = time.perf_counter()

    async def one(c: int, m: int) -> None:
        nonlocal lost
        n = next(counter)
        sent = time.perf_counter()
        ticket = await manager.submit(IncomingMessage(
            ConversationKey("bench", f"chat{c}"), Sender(f"user{c}"), QUESTIONS[(c + m) % len(QUESTIONS)],
            locale="en", message_id=str(n),
        ))
        state = await ticket.done if ticket else "lost"
        if state != "answered" or n not in answered:
            lost += 1
            return
        latencies.append(answered[n] - sent)

    async def closed_client(c: int) -> None:
        for m in range(messages):
            await one(c, m)

    async def open_client(c: int) -> None:
        # Client c sends message m at (m * conversations + c) / rate seconds after the start.
        tasks = []
        for m in range(messages):
            due = begin + (m * conversations + c) / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(c, m)))
        await asyncio.gather(*tasks)

    client = open_client if rate else closed_client
    await asyncio.gather(*(client(c) for c in range(conversations)))
    elapsed = time.perf_counter() - begin
    await manager.stop()
    stored = store.db.conn.execute("SELECT COUNT(*) FROM messages WHERE role='assistant'").fetchone()[0]
    await store.close()
    lost += conversations * messages - stored
    return conversations * messages / elapsed, latencies, lost


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered load for the latency run, msgs/s")
    args = parser.parse_args()
    raw = asyncio.run(reference(args.conversations, args.messages))
    with tempfile.TemporaryDirectory() as tmp:
        capacity, _, lost_closed = asyncio.run(framework(args.conversations, args.messages, Path(tmp) / "a"))
        offered, latencies, lost_open = asyncio.run(
            framework(args.conversations, args.messages, Path(tmp) / "b", rate=args.rate)
        )
    lost = lost_closed + lost_open
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"conversations={args.conversations} messages_each={args.messages}")
    print(f"reference (engine alone, closed loop): {raw:,.0f} msgs/s")
    print(f"framework capacity (manager + SQLite + engine, closed loop): {capacity:,.0f} msgs/s, "
          f"ratio {capacity / raw:.3f} of the engine alone")
    print(f"at {args.rate:,.0f} msgs/s offered ({offered:,.0f} achieved): added latency p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms")
    print(f"lost messages: {lost}")
    print(f"RESULT msgs_per_s={capacity:.0f} p50_ms={p50:.2f} p99_ms={p99:.2f} lost={lost} "
          f"ratio_vs_engine={capacity / raw:.3f}")


if __name__ == "__main__":
    main()
