"""How cost grows with the work: per-turn latency as conversations get long, and memory as traffic flows.

1. Added latency of one turn (submit -> answered, the echo engine, a real SQLite store) in conversations
   that already have 1, 100 and 1,000 turns. History is re-read and re-fitted to the context every
   turn; reading stops once the budget is full, so a long conversation costs about what one that
   fills the context costs. Turns of the three lengths are measured interleaved; medians are reported.
2. Resident memory while 100,000 messages flow through 10,000 conversations (10 each, 64 at a time):
   RSS after the run against RSS after the first 10,000 messages.

Goals: turn_ms_1000 <= 2 x turn_ms_1; rss_ratio <= 1.1.

    python bench/growth.py [--conversations 10000] [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine
from bot.seams import Channel
from bot.store import NewMessage, SQLiteStore
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import ConversationKey, IncomingMessage, Sender

QUESTION = "My dishwasher shows error E15 and does not drain after the cycle; what should I check first?"
ANSWER = ("E15 usually means water in the base pan, which the leak sensor sees. Switch the machine off, tilt it "
          "slightly back, dry the base with a towel and check the hoses and the door seal for drips. If it "
          "comes back, the drain pump or its non-return valve may be stuck: clean the filter and the pump "
          "chamber under it, then run a short rinse cycle and watch the floor under the door.")


class QuietSink(CollectingSink):
    """Keeps nothing: the bench measures the framework, not a growing list of events."""

    async def emit(self, event: object) -> str | None:  # type: ignore[override]
        return None


def rss_mb() -> float:
    """Current resident set size in MB (from /proc; ru_maxrss is the peak, not the current)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _manager(data: Path) -> tuple[ConversationManager, SQLiteStore]:
    settings = Settings(data_dir=str(data))
    store = SQLiteStore(settings.store_path)
    await store.open()
    manager = ConversationManager(settings, store, EchoEngine(max_concurrency=64))
    manager.register(Channel("bench", MemoryFetcher(), lambda context: QuietSink()))
    await manager.start()
    return manager, store


async def turn_latency(data: Path, lengths: tuple[int, ...], per_length: int, rounds: int) -> dict[int, float]:
    """Median ms of one turn in conversations of each length."""
    manager, store = await _manager(data)
    for length in lengths:
        for c in range(per_length):
            key = ConversationKey("bench", f"len{length}-{c}")
            for _ in range(length):
                mid = await store.add_message(key, NewMessage(role="user", text=QUESTION, sender_id="u"))
                await store.finish(mid, "answered", reply=ANSWER)
    samples: dict[int, list[float]] = {length: [] for length in lengths}
    for r in range(rounds + 1):
        for c in range(per_length):
            for length in lengths:
                key = ConversationKey("bench", f"len{length}-{c}")
                start = time.perf_counter()
                ticket = await manager.submit(IncomingMessage(key, Sender("u"), QUESTION, locale="en"))
                assert ticket is not None
                assert await ticket.done == "answered"
                if r:  # the first round warms caches
                    samples[length].append((time.perf_counter() - start) * 1000)
    await manager.stop()
    await store.close()
    return {length: statistics.median(values) for length, values in samples.items()}


async def memory(data: Path, conversations: int, messages: int) -> tuple[float, float, float]:
    """RSS (MB) after the first 10% of the messages and after all of them, and messages/s."""
    manager, store = await _manager(data)
    each = messages // conversations
    sent = 0
    first_mark = 0.0
    begin = time.perf_counter()

    async def client(c: int) -> None:
        nonlocal sent
        key = ConversationKey("bench", f"c{c}")
        for m in range(each):
            ticket = await manager.submit(IncomingMessage(key, Sender(f"user{c}"), f"{QUESTION} #{m}", locale="en"))
            assert ticket is not None
            assert await ticket.done == "answered"
            sent += 1

    pending = list(range(conversations))
    workers = 64

    async def worker() -> None:
        nonlocal first_mark
        while pending:
            await client(pending.pop())
            if not first_mark and sent >= messages // 10:
                gc.collect()
                first_mark = rss_mb()

    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - begin
    gc.collect()
    last = rss_mb()
    await manager.stop()
    await store.close()
    return first_mark, last, messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-length", type=int, default=10, help="conversations of each length")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ms = asyncio.run(turn_latency(Path(tmp) / "turns", (1, 100, 1000), args.per_length, args.rounds))
        first, last, rate = asyncio.run(memory(Path(tmp) / "flow", args.conversations, args.messages))
    growth = ms[1000] / ms[1]
    print(f"one turn, median: {ms[1]:.2f} ms at 1 turn, {ms[100]:.2f} ms at 100, {ms[1000]:.2f} ms at 1,000 "
          f"(x{growth:.2f}; goal <= 2)")
    print(f"{args.messages:,} messages over {args.conversations:,} conversations at {rate:,.0f} msgs/s: "
          f"RSS {first:.0f} MB after the first 10%, {last:.0f} MB at the end (x{last / first:.3f}; goal <= 1.1)")
    print(f"RESULT turn_ms_1={ms[1]:.2f} turn_ms_100={ms[100]:.2f} turn_ms_1000={ms[1000]:.2f} "
          f"growth_ratio={growth:.2f} rss_ratio={last / first:.3f}")


if __name__ == "__main__":
    main()
