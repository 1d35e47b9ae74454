"""Media preprocessing speed against InternVL's documented reference, in the same process.

Reference = the model card's ``load_image`` (PIL + torch ops, ``tests/reference_internvl.py``) and,
for video, its ``get_index`` + decord ``get_batch``. Each of our paths is checked against it
(bit-identical, or within the stated tolerance) before it is timed. Ends with one RESULT line.

    python bench/media.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.media.images import PixelCache, decode_pixels, preprocess, preprocess_many
from tests import reference_internvl as ref

MAX_PIXELS = 100_000_000


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth shapes plus sensor-like noise (compresses like a real photo)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    noisy = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def reference_image(data: bytes, max_num: int = 12):
    return ref.load_image(Image.open(io.BytesIO(data)), max_num=max_num)


def ours_image(data: bytes, fast: bool = False, max_num: int = 12):
    return preprocess(data, max_num=max_num, fast=fast, max_pixels=MAX_PIXELS)


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_child(path: str, queue: multiprocessing.Queue, go: multiprocessing.Event) -> None:
    # Make RSS follow live memory: fixed mmap threshold (big blocks go back to the OS when freed)
    # and trimming, instead of glibc keeping freed blocks of the set-up for reuse.
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    data = photo_jpeg(3840, 2160, seed=1)
    run = {"reference": lambda: reference_image(data), "exact": lambda: ours_image(data),
           "fast": lambda: ours_image(data, fast=True)}[path]
    small = photo_jpeg(64, 48)  # warm imports and thread pools up outside the measurement
    reference_image(small), ours_image(small), ours_image(small, fast=True)
    libc.malloc_trim(0)
    queue.put("ready")
    go.wait()
    result = run()
    queue.put("done")
    del result
    go.clear()
    go.wait(timeout=5)


def peak_mb(path: str) -> float:
    """Peak resident memory one 4K image adds on ``path``: a fresh process, watched from outside (MB).

    Sampling from another process sees the peak even while the worker holds the GIL.
    """
    ctx = multiprocessing.get_context("spawn")
    queue, go = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_peak_child, args=(path, queue, go))
    proc.start()
    assert queue.get() == "ready"
    page = resource.getpagesize()

    def rss() -> int:
        with open(f"/proc/{proc.pid}/statm") as f:
            return int(f.read().split()[1]) * page

    before = peak = rss()
    go.set()
    while queue.empty():
        peak = max(peak, rss())
    queue.get()
    go.set()
    proc.join()
    return (peak - before) / 2**20


def bench_images(repeat: int, results: dict[str, str]) -> None:
    photo = photo_jpeg(4032, 3024)
    expected = reference_image(photo)
    exact = ours_image(photo)
    identical = exact.dtype == expected.dtype and exact.shape == expected.shape and bool((exact == expected).all())
    fast = ours_image(photo, fast=True)
    fast_err = float((fast - expected).abs().max()) * 255 * min(ref.IMAGENET_STD)
    t_ref = best_of(lambda: reference_image(photo), repeat)
    t_exact = best_of(lambda: ours_image(photo), repeat)
    t_fast = best_of(lambda: ours_image(photo, fast=True), repeat)
    print(f"12 MP JPEG -> {tuple(expected.shape)}: reference {t_ref * 1000:.0f} ms, exact {t_exact * 1000:.0f} ms "
          f"({t_ref / t_exact:.2f}x, identical={identical}), fast {t_fast * 1000:.0f} ms ({t_ref / t_fast:.2f}x, "
          f"max error {fast_err:.2f} levels)")
    results["image_exact_ratio"] = f"{t_ref / t_exact:.2f}"
    results["image_fast_ratio"] = f"{t_ref / t_fast:.2f}"
    results["identical"] = "yes" if identical else "no"
    results["fast_max_levels"] = f"{fast_err:.2f}"

    full_mb = 3840 * 2160 * 3 / 2**20
    out_mb = 13 * 3 * 448 * 448 * 4 / 2**20
    for name in ("reference", "exact", "fast"):
        mb = peak_mb(name)
        copies = (mb - out_mb) / full_mb
        print(f"4K image peak memory, {name}: {mb:.0f} MB (the {out_mb:.0f} MB output plus {copies:.1f} "
              f"full-size RGB copies of {full_mb:.0f} MB)")
        results[f"peak_{name}_copies"] = f"{copies:.1f}"
        results[f"peak_{name}_mb"] = f"{mb:.0f}"


def bench_album(repeat: int, results: dict[str, str]) -> None:
    sizes = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 960), (4000, 1800), (800, 600), (2048, 1536),
             (1080, 1920), (3264, 2448), (640, 480)]
    album = [photo_jpeg(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    expected = [reference_image(data) for data in album]
    got = preprocess_many(album, max_pixels=MAX_PIXELS)
    same = all(bool((a == b).all()) and a.shape == b.shape for a, b in zip(got, expected, strict=True))
    t_ref = best_of(lambda: [reference_image(data) for data in album], repeat)
    t_ours = best_of(lambda: preprocess_many(album, max_pixels=MAX_PIXELS), repeat)
    print(f"album of 10 photos: reference {t_ref * 1000:.0f} ms, ours {t_ours * 1000:.0f} ms "
          f"({t_ref / t_ours:.2f}x, identical={same})")
    results["album_ratio"] = f"{t_ref / t_ours:.2f}"
    if not same:
        results["identical"] = "no"


def bench_cached(repeat: int, results: dict[str, str]) -> None:
    photo = photo_jpeg(4032, 3024, seed=3)
    sha = hashlib.sha256(photo).hexdigest()
    cache = PixelCache()

    def ask() -> object:
        # What the engine does for an image it is given: decoded pixels come from the manager's cache
        # by SHA-256, pixel values from the engine's; a miss decodes and preprocesses.
        found = cache.get((sha, 12, False))
        if found is not None:
            return found
        return cache.pixels(decode_pixels(photo, max_pixels=MAX_PIXELS), sha256=sha, max_num=12)

    t_first = best_of(lambda: reference_image(photo), repeat)
    ask()
    t_again = best_of(ask, repeat * 20)
    print(f"same photo asked about again: {t_again * 1e6:.2f} us vs {t_first * 1000:.0f} ms for the reference "
          f"({t_first / t_again:,.0f}x)")
    results["cached_ratio"] = f"{t_first / t_again:.0f}"


def bench_video(repeat: int, results: dict[str, str]) -> None:
    import decord

    from bot.media.video import reference_indices, sample_frames_fast
    from tests.media_corpus import FFMPEG, ffmpeg

    if FFMPEG is None:
        print("video: skipped (ffmpeg is not installed)")
        return
    folder = Path(tempfile.mkdtemp())
    src = ["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", "30"]
    clips = {
        "video_ratio": ffmpeg(folder / "long_gop.mp4", *src, "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        "phone_video_ratio": ffmpeg(folder / "phone.mp4", *src, "-c:v", "libx264", "-g", "30", "-pix_fmt",
                                    "yuv420p"),
    }
    for key, path in clips.items():
        data = path.read_bytes()

        def reference(data: bytes = data) -> list[int]:
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            indices = ref.get_index(None, reader.get_avg_fps(), len(reader) - 1, first_idx=0, num_segments=8)
            reader.get_batch(list(indices)).asnumpy()
            return [int(i) for i in indices]

        expected = reference()
        frames, info, picks = sample_frames_fast(data, num_segments=8)
        seg = (info.frames - 1) / 8
        ok = (picks == sorted(set(picks)) and len(frames) == 8
              and all(abs(p - r) <= seg / 2 for p, r in zip(picks, expected, strict=True))
              and reference_indices(info.frames, info.fps, 8) == expected)
        t_ref = best_of(reference, repeat)
        t_ours = best_of(lambda data=data: sample_frames_fast(data, num_segments=8), repeat)
        print(f"{path.name}: reference get_index + get_batch {t_ref * 1000:.0f} ms, fast {t_ours * 1000:.0f} ms "
              f"({t_ref / t_ours:.2f}x; frames distinct, in order, within half a segment: {ok})")
        results[key] = f"{t_ref / t_ours:.2f}"
        if not ok:
            results["identical"] = "no"


def bench_pdf(repeat: int, results: dict[str, str]) -> None:
    from bot.media.documents import read_pdf
    from tests.test_documents import invoice_pdf

    data = invoice_pdf(20)
    doc = read_pdf(data, max_pages=20, max_tiles=24)
    assert len(doc.pages) == 20
    t = best_of(lambda: read_pdf(data, max_pages=20, max_tiles=24), repeat)
    h, w = doc.pages[0].image.shape[:2]
    print(f"20-page PDF -> page images ({w}x{h}) + text layers: {t * 1000:.0f} ms, {20 / t:.0f} pages/s")
    results["pdf_pages_per_s"] = f"{20 / t:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    results: dict[str, str] = {}
    bench_images(args.repeat, results)
    bench_album(args.repeat, results)
    bench_cached(args.repeat, results)
    bench_video(args.repeat, results)
    bench_pdf(args.repeat, results)
    order = ["image_exact_ratio", "image_fast_ratio", "album_ratio", "cached_ratio", "video_ratio",
             "phone_video_ratio", "pdf_pages_per_s", "identical"]
    fields = [f"{k}={results[k]}" for k in order if k in results]
    fields += [f"{k}={v}" for k, v in results.items() if k not in order]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    _ = statistics
    main()
