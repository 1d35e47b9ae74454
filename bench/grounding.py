"""Drawing InternVL's grounding boxes on a 12 MP photo and encoding the result to send (bot/media/grounding.py).

The photo is decoded first, as the turn has it (the resolver's decoded pixels): what is timed is what the
framework adds once the model has answered — 5 labelled boxes (Latin, Cyrillic, CJK and Arabic labels) drawn on a
copy, then the JPEG sent back. Fonts are loaded once before timing (they stay loaded in a running service). Peak
RSS is sampled while drawing and encoding, above the RSS with the decoded photo in memory. Target (issue 22):
draw + encode ≤ 150 ms on 2 cores, ≤ 200 MB above base. Ends with one RESULT line.

    python bench/grounding.py [--rounds 5] [--width 4000 --height 3000]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.media.grounding import draw_regions, encode_jpeg, font_path, parse_regions  # noqa: E402
from bot.media.images import decode_pixels  # noqa: E402

ANSWER = ("<ref>crack</ref><box>[[100, 120, 380, 460]]</box> <ref>трещина</ref><box>[[420, 80, 700, 300]]</box> "
          "<ref>裂缝</ref><box>[[60, 520, 330, 930]]</box> <ref>ひび割れ</ref><box>[[480, 560, 760, 880]]</box> "
          "<ref>شق</ref><box>[[800, 300, 980, 700]]</box>")


def photo_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth shapes plus sensor-like noise (encodes like a real photo, not a flat image)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples this process's RSS every millisecond while in use."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()

    data = photo_jpeg(args.width, args.height)
    pixels = decode_pixels(data, name="photo.jpg", max_pixels=100_000_000)
    regions = parse_regions(ANSWER)
    assert len(regions) == 5
    print(f"photo: {args.width}x{args.height} ({len(data) / 1e6:.1f} MB JPEG), {os.cpu_count()} CPUs; fonts: "
          + ", ".join(sorted({font_path(r.label, 'en')[0].name for r in regions if font_path(r.label, 'en')[0]})))
    draw_regions(pixels[:300, :400], regions)  # fonts loaded once, as in a running service

    base = rss_mb()
    draws: list[float] = []
    encodes: list[float] = []
    size = 0
    with PeakRSS() as peak:
        for _ in range(args.rounds):
            start = time.perf_counter()
            drawn = draw_regions(pixels, regions)
            middle = time.perf_counter()
            out = encode_jpeg(drawn)
            end = time.perf_counter()
            draws.append((middle - start) * 1000)
            encodes.append((end - middle) * 1000)
            size = len(out)
            del drawn, out
    draw_ms, encode_ms = statistics.median(draws), statistics.median(encodes)
    print(f"draw: median {draw_ms:.1f} ms (min {min(draws):.1f}); encode: median {encode_ms:.1f} ms "
          f"(min {min(encodes):.1f}); JPEG sent: {size / 1e6:.1f} MB; peak RSS {peak.peak - base:.0f} MB above base")
    print(f"RESULT draw_ms={draw_ms:.1f} encode_ms={encode_ms:.1f} rss_mb={peak.peak - base:.0f}")


if __name__ == "__main__":
    main()
