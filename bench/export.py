"""How fast ``internvl-bot export sft`` is: 100,000 stored turns rated up (10 % with a photo carrying EXIF/GPS),
exported from a SQLite store, timed, with the resident memory it adds.

The store is filled with SQL in one transaction (filling is not what is measured), then a child process opens
it and exports: seconds of the export, and its RSS high-water mark above the RSS it had before exporting.

Goals: seconds <= 60 on 2 cores, rss_mb <= 300.

    python bench/export.py [--turns 100000] [--image-share 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from bot.store import SQLiteStore, sha256_of

QUESTION = "My dishwasher shows error E15 and does not drain; I'm Ana Lima, ana@example.com, +351 912 345 678."
ANSWER = ("E15 usually means water in the base pan, which the leak sensor sees. Switch the machine off, dry the "
          "base and check the hoses and the door seal. If it comes back, clean the drain pump's filter.")


def photo(n: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = f"photo {n}"  # each photo its own bytes: every one is copied
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0)}
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (n % 256, 80, 160)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


async def fill(folder: Path, turns: int, image_share: float) -> None:
    store = SQLiteStore(folder / "data" / "internvl-bot.sqlite3")
    await store.open()
    conn = store.db.conn
    every = round(1 / image_share) if image_share else 0
    now = time.time() - 3600
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO conversations (id, platform, chat, thread, context_start, created_at, number)"
                     " VALUES (?, 'telegram', ?, '', 0, ?, ?)",
                     [(f"telegram:{c}", str(c), now, c) for c in range(turns // 10 + 1)])
    messages, atts, blobs, feedback, meta = [], [], [], [], []
    for t in range(turns):
        q, a = 2 * t + 1, 2 * t + 2
        cid = f"telegram:{t // 10}"
        messages.append((q, cid, "user", QUESTION, "u1", "Ana Lima", None, now + t * 1e-3))
        messages.append((a, cid, "assistant", ANSWER, "", "", q, now + t * 1e-3))
        meta.append((a, "support", "internvl3-1b"))
        feedback.append((a, cid, "up", f"e{t}", now + t * 1e-3))
        if every and t % every == 0:
            data = photo(t)
            sha = store._write_blob(data)
            blobs.append((sha, "image/jpeg", len(data), f"{sha[:2]}/{sha[2:4]}/{sha}", now))
            atts.append((q, 0, f"p{t}", "photo.jpg", "image/jpeg", len(data), sha))
            assert sha == sha256_of(data)
    conn.executemany("INSERT INTO messages (id, conversation_id, role, kind, text, state, sender_id, sender_name,"
                     " reply_to, created_at) VALUES (?, ?, ?, 'chat', ?, 'answered', ?, ?, ?, ?)", messages)
    conn.executemany("INSERT INTO attachments (sha256, mime, size, path, created_at) VALUES (?, ?, ?, ?, ?)", blobs)
    conn.executemany("INSERT INTO message_attachments (message_id, position, ref, filename, mime, size, sha256)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", atts)
    conn.executemany("INSERT INTO answer_meta (message_id, persona, model) VALUES (?, ?, ?)", meta)
    conn.executemany("INSERT INTO feedback (message_id, conversation_id, platform, kind, signal, event_id, persona,"
                     " created_at) VALUES (?, ?, 'telegram', 'up', 'explicit', ?, 'support', ?)",
                     [(a, cid, e, at) for a, cid, _, e, at in feedback])
    conn.execute("COMMIT")
    await store.close()
    (folder / "personas").mkdir()
    (folder / "personas" / "support.yaml").write_text(
        "name: support\ntitle: Support\nsystem: You help.\ntraining_export: allowed\n", encoding="utf-8")


async def export(folder: Path) -> None:
    from bot.l10n.personas import load_personas
    from bot.training.export import ExportOptions, export_sft
    from tests.conftest import make_settings

    settings = make_settings(folder, conversation={"personas_dir": str(folder / "personas")},
                             adapters={"telegram": {"training_export": "allowed"}})
    personas = load_personas(folder / "personas")
    store = SQLiteStore(folder / "data" / "internvl-bot.sqlite3")
    await store.open()
    base = _rss_mb()
    started = time.perf_counter()
    report = await export_sft(store, settings, personas, ExportOptions(folder / "sft"))
    seconds = time.perf_counter() - started
    await store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples": report.samples, "images": report.images, "seconds": seconds,
                      "rss_mb": max(0.0, peak - base)}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--image-share", type=float, default=0.1)
    parser.add_argument("--export-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_only:
        asyncio.run(export(args.export_only))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        asyncio.run(fill(folder, args.turns, args.image_share))
        print(f"filled {args.turns} turns in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        run = subprocess.run([sys.executable, __file__, "--export-only", str(folder)], capture_output=True, text=True,
                             check=False)
        if run.returncode != 0:
            print(run.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["samples"] == args.turns, result
    print(f"RESULT turns={args.turns} seconds={result['seconds']:.1f} rss_mb={result['rss_mb']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
