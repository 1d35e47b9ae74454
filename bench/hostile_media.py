"""Memory under hostile media: one message with eight 6000x6000 1-bit PNGs (≈8 KB each, each under
``media.max_image_pixels``, ≈108 MB each decoded), then three such messages at once, through the real
conversation manager (SQLite store, echo engine, the shared pixel budget). Peak RSS is sampled every 5 ms
while each request runs; "after" is measured once the turns have ended. Ends with one RESULT line.

    python bench/hostile_media.py
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import Settings
from bot.conversation.manager import ConversationManager
from bot.engines import EchoEngine
from bot.seams import Channel
from bot.store import SQLiteStore
from bot.testing import CollectingSink, MemoryFetcher
from bot.types import ConversationKey, IncomingMessage, Sender

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class Peak:
    """The highest RSS seen while the block runs, sampled in a thread."""

    def __enter__(self) -> Peak:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def bomb_png(seed: int) -> bytes:
    """A 6000x6000 1-bit PNG: a few KB on the wire, 108 MB as RGB."""
    image = Image.new("1", (6000, 6000), 0)
    image.putpixel((seed % 6000, seed // 6000), 1)  # each file different: no cache shares them
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=tmp)
        store = SQLiteStore(Path(tmp) / "bot.sqlite3")
        await store.open()
        manager = ConversationManager(settings, store, EchoEngine())
        fetcher = MemoryFetcher()
        sinks: dict[ConversationKey, CollectingSink] = {}
        manager.register(Channel("bench", fetcher, lambda c: sinks.setdefault(c.key, CollectingSink())))
        await manager.start()
        n = 0

        async def ask(chat: str, files: list[bytes]) -> str:
            nonlocal n
            n += 1
            attachments = tuple(fetcher.add(data, f"scan{i}.png", "image/png") for i, data in enumerate(files))
            ticket = await manager.submit(IncomingMessage(
                key=ConversationKey("bench", chat), sender=Sender("u", "u"), text="what do these show?",
                attachments=attachments, event_id=f"e{n}"))
            assert ticket is not None
            return await ticket.done

        small = io.BytesIO()
        Image.new("RGB", (640, 480), (200, 40, 40)).save(small, "JPEG")
        await ask("warm", [small.getvalue()])  # imports, caches, the store: the baseline includes them
        gc.collect()
        baseline = rss_mb()
        files = [bomb_png(i) for i in range(8)]
        upload_kb = sum(len(f) for f in files) / 1024

        with Peak() as one:
            state_one = await ask("one", files)
        gc.collect()
        after_one = rss_mb()

        batches = [[bomb_png(100 * b + i) for i in range(8)] for b in range(3)]
        with Peak() as three:
            states = await asyncio.gather(*(ask(f"many{b}", batch) for b, batch in enumerate(batches)))
        gc.collect()
        after_three = rss_mb()
        budget = getattr(getattr(manager, "resolver", None), "pixels", None)  # absent before the budget (A/B)
        waits = budget.waits if budget is not None else 0
        left_out = sum("left out" in n for s in sinks.values() for n in s.notices)
        await manager.stop(5)
        await store.close()

    answered = sum(s == "answered" for s in [state_one, *states])
    print(f"upload of one message: {upload_kb:.0f} KB; baseline {baseline:.0f} MB", file=sys.stderr)
    print(f"one message: peak {one.peak:.0f} MB, after {after_one:.0f} MB", file=sys.stderr)
    print(f"three at once: peak {three.peak:.0f} MB, after {after_three:.0f} MB; budget waits {waits}",
          file=sys.stderr)
    print(f"RESULT baseline_mb={baseline:.0f} one_peak_mb={one.peak:.0f} one_after_mb={after_one:.0f} "
          f"three_peak_mb={three.peak:.0f} three_after_mb={after_three:.0f} answered={answered} "
          f"left_out_notes={left_out} budget_waits={waits}")


if __name__ == "__main__":
    started = time.perf_counter()
    asyncio.run(main())
    print(f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
