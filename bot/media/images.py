"""Media: recognising what a user sent, decoding images safely, and InternVL's image preprocessing.

Images are decoded with Pillow. Unlike InternVL's reference ``load_image`` (which only calls
``convert('RGB')``), EXIF orientation is applied: phone photos are stored sideways with an
orientation tag, and the model should see them the way the user does. Transparent images are
flattened onto white. Oversized images are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import itertools
import logging
import os
import re
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import ImageTooLarge, UnreadableImage

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_U = TypeVar("_U")

IMAGE_SIZE = 448
TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".log", ".yaml", ".yml", ".xml", ".ini")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif")
MAX_TEXT_FILE_CHARS = 20000


@dataclass(frozen=True, slots=True)
class MediaKind:
    kind: Literal["image", "video", "document", "text", "unsupported"]
    mime: str
    label: str  # human-readable kind, used in messages ("audio", "PDF document", ...)


_MAGIC: list[tuple[bytes, int, str, str, str]] = [
    # (signature, offset, kind, mime, label)
    (b"\xff\xd8\xff", 0, "image", "image/jpeg", "JPEG image"),
    (b"\x89PNG\r\n\x1a\n", 0, "image", "image/png", "PNG image"),
    (b"GIF87a", 0, "image", "image/gif", "GIF image"),
    (b"GIF89a", 0, "image", "image/gif", "GIF image"),
    (b"BM", 0, "image", "image/bmp", "BMP image"),
    (b"II*\x00", 0, "image", "image/tiff", "TIFF image"),
    (b"MM\x00*", 0, "image", "image/tiff", "TIFF image"),
    (b"%PDF", 0, "document", "application/pdf", "PDF document"),
    (b"PK\x03\x04", 0, "unsupported", "application/zip", "archive or office document"),
    (b"Rar!", 0, "unsupported", "application/vnd.rar", "archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "unsupported", "application/x-7z-compressed", "archive"),
    (b"\x1f\x8b", 0, "unsupported", "application/gzip", "archive"),
    (b"OggS", 0, "unsupported", "audio/ogg", "audio or voice note"),
    (b"ID3", 0, "unsupported", "audio/mpeg", "audio"),
    (b"fLaC", 0, "unsupported", "audio/flac", "audio"),
    (b"\x1aE\xdf\xa3", 0, "video", "video/webm", "video"),
    (b"\xd0\xcf\x11\xe0", 0, "unsupported", "application/msword", "office document"),
]


def sniff(data: bytes, filename: str = "", declared_mime: str = "") -> MediaKind:
    """Recognise a file from its bytes (never from its name alone: names lie)."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaKind("image", "image/webp", "WebP image")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return MediaKind("unsupported", "audio/wav", "audio")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaKind("video", "video/x-msvideo", "video")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"hevc", b"hevx"):
            return MediaKind("image" if _heif_available() else "unsupported", "image/heic", "HEIC image")
        if brand == b"avif":
            return MediaKind("unsupported", "image/avif", "AVIF image")
        if brand in (b"M4A ", b"M4B "):
            return MediaKind("unsupported", "audio/mp4", "audio")
        return MediaKind("video", "video/quicktime" if brand == b"qt  " else "video/mp4", "video")
    for sig, off, kind, mime, label in _MAGIC:
        if head[off:off + len(sig)] == sig:
            return MediaKind(kind, mime, label)  # type: ignore[arg-type]
    if filename.lower().endswith(IMAGE_EXTENSIONS) or declared_mime.startswith("image/"):
        # Claims to be an image but has no image signature: decoding will say it is unreadable.
        return MediaKind("image", declared_mime or "image/unknown", "image")
    if _looks_like_text(data) and (
        filename.lower().endswith(TEXT_EXTENSIONS) or declared_mime.startswith("text/") or not filename
        or "." not in filename
    ):
        return MediaKind("text", declared_mime or "text/plain", "text file")
    if not data:
        return MediaKind("unsupported", declared_mime or "application/octet-stream", "empty file")
    return MediaKind("unsupported", declared_mime or "application/octet-stream", "unknown format")


@lru_cache(maxsize=1)
def _heif_available() -> bool:
    """Register pillow-heif's opener once (HEIC photos from iPhones); False when it is not installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _looks_like_text(data: bytes) -> bool:
    if not data:
        return False
    try:
        sample = data[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data[:4096]) - 4:  # not just a multi-byte char cut at the sample's end
            return False
        sample = data[: exc.start].decode("utf-8")
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    return controls <= len(sample) // 100


def decode_text(data: bytes, limit: int = MAX_TEXT_FILE_CHARS) -> tuple[str, bool]:
    """Text content of a text file, cut at ``limit`` characters; returns (text, truncated)."""
    content = data.decode("utf-8", errors="replace")
    return content[:limit], len(content) > limit


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse oversized canvases before any pixel is decoded."""
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1"):
        _heif_available()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    width, height = im.size
    if width * height > max_pixels or width < 1 or height < 1:
        raise ImageTooLarge(
            f"{width}x{height}", name=name, pixels=round(width * height / 1e6, 1), limit=round(max_pixels / 1e6, 1)
        )
    return im


#: EXIF orientation -> numpy ops turning the stored pixels the way the photo is displayed.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _guard(name: str, fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except (ImageTooLarge, UnreadableImage):
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses far larger canvases itself, at open; its message carries the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = round(int(found.group(1)) / 1e6, 1) if found else "?"
        raise ImageTooLarge(str(exc), name=name, pixels=pixels, limit="?") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # Pillow names the in-memory buffer ("<_io.BytesIO object at 0x7f…>"): say which file instead
        reason = _BUFFER.sub(repr(name or "file"), str(exc))
        log.info("unreadable image %r: %s", name, reason)
        raise UnreadableImage(reason, name=name) from None


_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def decode_pixels(data: bytes, *, name: str = "", max_pixels: int) -> np.ndarray:
    """Decode to an H x W x 3 uint8 RGB array, EXIF orientation applied. See :func:`decode_image`.

    Baseline and progressive JPEG (most photos) are decoded by libjpeg-turbo straight into numpy
    (simplejpeg): the same bits as Pillow's decoder, without Pillow's 4-byte-per-pixel image and
    the copy out of it. Everything else goes through Pillow.
    """

    def run() -> np.ndarray:
        im = _open_checked(data, name, max_pixels)
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            try:
                import simplejpeg
            except ImportError:  # pragma: no cover - simplejpeg is a dependency; stay correct without it
                simplejpeg = None
            if simplejpeg is not None:
                array = simplejpeg.decode_jpeg(data, colorspace="RGB")
                orientation = im.getexif().get(0x0112, 1)
                if orientation in _ORIENT:
                    array = np.ascontiguousarray(_ORIENT[orientation](array))
                return array
        if im.mode in ("1", "L") and not (im.mode == "L" and "transparency" in im.info):
            return _grey_to_rgb(im)
        return np.asarray(_decode_pil(im))

    return _guard(name, run)


def _grey_to_rgb(im: Image.Image) -> np.ndarray:
    """A bilevel or greyscale image as RGB, the same bits as Pillow's ``convert("RGB")`` but without its
    4-byte-per-pixel copy: a scanned page of 36 MP peaks at 144 MB here instead of 252 MB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        bilevel = im.mode == "1"
        grey = np.asarray(im)
    if bilevel:  # 0/1 (bool or uint8, depending on how Pillow loaded it) -> 0/255
        grey = (grey != 0).view(np.uint8) * np.uint8(255)
    rgb = np.empty((*grey.shape, 3), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = grey
    return rgb


#: Blocks from this size up are mmapped (returned to the system when freed): glibc's own ceiling for its
#: moving threshold. A decoded photo of 11 MP and up is one such block.
MMAP_THRESHOLD = 32 << 20
#: Free memory past this at the top of a heap goes back to the system at once.
TRIM_THRESHOLD = 1 << 20


def tune_allocator() -> None:
    """Let memory freed after a large decode go back to the system (glibc only; elsewhere nothing).

    glibc raises its mmap threshold after the first large free and its trim threshold with it, so memory
    freed in heap arenas stays with the process: a server that once decoded a few huge images keeps it.
    Fixed thresholds stop that: decoded images of 32 MB and up are mmapped and unmapped when freed, free heap
    tops are trimmed past 1 MB, and :func:`give_back_memory` returns the rest after a large turn. Below 32 MB
    (Pillow's 16 MB blocks, resize bands, tiles) blocks stay in the heap and are reused: with a 1 MB
    threshold every one of them was a fresh mapping, page-faulted and zeroed on each use (12 MP photo,
    exact tiles: 176 ms instead of 149)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD: fixed (it also stops the dynamic raising)
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


def give_back_memory() -> None:
    """Return free heap memory to the system (glibc's malloc_trim) after a turn that decoded a lot."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@lru_cache(maxsize=1)
def _libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc has it; musl does not
        return libc
    except (OSError, AttributeError):
        return None


def decode_image(data: bytes, *, name: str = "", max_pixels: int) -> Image.Image:
    """Decode an image into RGB with EXIF orientation applied and transparency flattened on white.

    Raises :class:`ImageTooLarge` from the header alone when the canvas exceeds ``max_pixels``
    (a "decompression bomb" never gets decoded), :class:`UnreadableImage` for anything broken.
    """
    return _guard(name, lambda: _decode_pil(_open_checked(data, name, max_pixels)))


def _decode_pil(im: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # no copy when there is nothing to turn
        return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping.
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# InternVL dynamic tiling arithmetic (the reference ``dynamic_preprocess`` grid choice).


@lru_cache(maxsize=64)
def target_ratios(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """The candidate grids, in the reference order (a set sorted by tile count)."""
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return tuple(sorted(ratios, key=lambda x: x[0] * x[1]))


def grid_for(width: int, height: int, *, min_num: int = 1, max_num: int = 12,
             image_size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(columns, rows) InternVL picks for an image of ``width`` x ``height``."""
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for ratio in target_ratios(min_num, max_num):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def tile_count(width: int, height: int, *, max_num: int = 12, min_num: int = 1,
               use_thumbnail: bool = True) -> int:
    """Tiles InternVL feeds the vision encoder for one image (grid plus the thumbnail, if any)."""
    cols, rows = grid_for(width, height, min_num=min_num, max_num=max_num)
    blocks = cols * rows
    return blocks + 1 if use_thumbnail and blocks != 1 else blocks


# ---------------------------------------------------------------------------------------------
# InternVL dynamic high-resolution preprocessing, bit-exact with the reference ``load_image``.
#
# The reference: resize the whole image to the chosen grid with PIL bicubic, crop 448x448 tiles
# row-major, add a 448x448 thumbnail resized from the original when there is more than one tile,
# then per tile ToTensor (uint8 / 255 in float32) and Normalize (ImageNet mean/std, float32).
# Ours produces the same bits faster:
# - each resize runs as Pillow does it (one separable pass, then the other, in Pillow's own order),
#   but each pass is split into bands that run on all cores: a pass on whole rows (horizontal) or
#   whole columns (vertical) of a band computes exactly what the full pass computes for them;
# - normalisation is a 256-entry float32 table per channel, filled with the reference arithmetic,
#   so a tile is normalised by one gather instead of three float passes.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class _Inline:
    """Runs "parallel" work in the calling thread: inside an album job, where the images themselves
    already run in parallel and bands would only queue behind each other."""

    @staticmethod
    def map(fn: Callable[[_T], _U], items: Iterable[_T]) -> Iterator[_U]:
        return map(fn, items)


_INLINE = _Inline()
_album_thread = threading.local()


def _executor() -> ThreadPoolExecutor | _Inline:
    global _pool
    if getattr(_album_thread, "inline", False):
        return _INLINE
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="media")
    return _pool


def _bands(length: int, count: int) -> list[tuple[int, int]]:
    edges = [length * i // count for i in range(count + 1)]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _pass(image: Image.Image, size: tuple[int, int], horizontal: bool) -> Image.Image:
    """One separable resize pass, split into bands of rows (horizontal) or columns (vertical)."""
    width, height = image.size
    bands = _bands(height if horizontal else width, _workers())
    if len(bands) == 1:
        return image.resize(size, Image.Resampling.BICUBIC)

    def band(span: tuple[int, int]) -> Image.Image:
        a, b = span
        if horizontal:
            return image.crop((0, a, width, b)).resize((size[0], b - a), Image.Resampling.BICUBIC)
        return image.crop((a, 0, b, height)).resize((b - a, size[1]), Image.Resampling.BICUBIC)

    out = Image.new(image.mode, size)
    for (a, _), part in zip(bands, _executor().map(band, bands), strict=True):
        out.paste(part, (0, a) if horizontal else (a, 0))
    return out


def resize_exact(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image.resize(size, BICUBIC)``, bit for bit, using every core.

    Pillow resizes in two passes, horizontal first unless the height shrinks more than twice as much
    as the width; the same passes in the same order, band by band, give the same bytes.
    """
    width, height = image.size
    target_w, target_h = size
    if (width, height) == size:
        return image.copy()
    if image.mode not in ("RGB", "L"):
        return image.resize(size, Image.Resampling.BICUBIC)
    horizontal_first = not (height - target_h > 0 and height - target_h > (width - target_w) * 2)
    if target_h == height:
        return _pass(image, size, horizontal=True)
    if target_w == width:
        return _pass(image, size, horizontal=False)
    if horizontal_first:
        return _pass(_pass(image, (target_w, height), True), size, False)
    return _pass(_pass(image, (width, target_h), False), size, True)


def dynamic_tiles(image: Image.Image, *, min_num: int = 1, max_num: int = 12, image_size: int = IMAGE_SIZE,
                  use_thumbnail: bool = True) -> list[Image.Image]:
    """InternVL's ``dynamic_preprocess``: the grid tiles, row-major, then the thumbnail (if more than one)."""
    cols, rows = grid_for(image.width, image.height, min_num=min_num, max_num=max_num, image_size=image_size)
    resized = resize_exact(image, (image_size * cols, image_size * rows))
    tiles = [
        resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) != 1:
        tiles.append(resize_exact(image, (image_size, image_size)))
    return tiles


def _normalise_into(out: np.ndarray, tiles: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> None:
    """uint8 NHWC tiles -> float32 NCHW ``((v / 255) - mean) / std``: the reference's ToTensor + Normalize,
    the same float32 operations in the same order, each correctly rounded, so the same bits. numpy's
    ufuncs release the GIL (a lookup table with ``np.take`` holds it), so bands and album images run
    in parallel threads."""
    out.transpose(0, 2, 3, 1)[...] = tiles  # uint8 -> float32 is exact
    _normalise(out, mean, std)


def _normalise(out: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> None:
    """In place, on float32 NCHW values 0-255: see :func:`_normalise_into`."""
    np.divide(out, np.float32(255), out=out)
    np.subtract(out, np.asarray(mean, dtype=np.float32)[:, None, None], out=out)
    np.divide(out, np.asarray(std, dtype=np.float32)[:, None, None], out=out)


def pixel_values(tiles: Sequence[Image.Image], *, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Float32 N x 3 x H x W tensor of normalised tiles, equal to the reference transform's output."""
    import torch

    if not tiles:
        return torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
    arrays = np.stack([np.asarray(t.convert("RGB") if t.mode != "RGB" else t) for t in tiles])
    out = np.empty((arrays.shape[0], 3, arrays.shape[1], arrays.shape[2]), dtype=np.float32)
    _normalise_into(out, arrays, mean, std)
    return torch.from_numpy(out)


def _resize_fast(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch's antialiased bicubic on uint8, channels-last: within a couple of levels of PIL's, ~5x faster.
    Returns 3 x H x W planes, as torch lays its result out (an H x W x 3 view of them is strided: every
    copy out of it gathers bytes one at a time)."""
    import torch

    with warnings.catch_warnings():  # read-only source: torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(tensor, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return out[0].numpy()


def _horizontal_first(width: int, height: int, size: tuple[int, int]) -> bool:
    return not (height - size[1] > 0 and height - size[1] > (width - size[0]) * 2)


def _resize_exact_many(image: Image.Image | np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """``[np.asarray(image.resize(s, BICUBIC)) for s in sizes]``, bit for bit, on every core.

    Resizes that start with the same pass share its source bands: each band of the image becomes a
    Pillow image once, in its own thread, for all of them. From an array this skips converting the
    whole image to Pillow's 4-byte pixels, and keeps the peak below two full-size copies.
    """
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
        array = image

        def band_image(a: int, b: int, rows: bool) -> Image.Image:
            return Image.fromarray(array[a:b] if rows else np.ascontiguousarray(array[:, a:b]))
    else:
        width, height = image.size
        pil = image

        def band_image(a: int, b: int, rows: bool) -> Image.Image:
            return pil.crop((0, a, width, b) if rows else (a, 0, b, height))

    results: list[np.ndarray | None] = [None] * len(sizes)
    two_pass: dict[bool, list[int]] = {True: [], False: []}
    for i, size in enumerate(sizes):
        if size[0] == width or size[1] == height:
            whole = Image.fromarray(image) if isinstance(image, np.ndarray) else image
            results[i] = np.asarray(resize_exact(whole, size))
        else:
            two_pass[_horizontal_first(width, height, size)].append(i)
    for horizontal, members in two_pass.items():
        if members:
            outs = _two_passes(band_image, (width, height), [sizes[i] for i in members], horizontal)
            for i, out in zip(members, outs, strict=True):
                results[i] = out
    return [r for r in results if r is not None]


def _two_passes(band_image: Callable[[int, int, bool], Image.Image], source: tuple[int, int],
                sizes: Sequence[tuple[int, int]], horizontal: bool) -> list[np.ndarray]:
    """The resizes of :func:`_resize_exact_many` that start with the same pass (``horizontal``: along rows)."""
    width, height = source
    pool = _executor()
    # First pass, shared: bands of rows (horizontal first) or of columns (vertical first), each pasted into
    # its place by the thread that made it (Pillow lets the GIL go while pasting) once its band of the source
    # is freed (the peak stays where it was). The middle images are not cleared first: the bands cover them.
    middles = [Image.new("RGB", (w, height) if horizontal else (width, h), None) for w, h in sizes]

    def first(span: tuple[int, int]) -> None:
        a, b = span
        part = band_image(a, b, horizontal)
        pieces = [part.resize((w, b - a) if horizontal else (b - a, h), Image.Resampling.BICUBIC) for w, h in sizes]
        del part
        for piece, middle in zip(pieces, middles, strict=True):
            middle.paste(piece, (0, a) if horizontal else (a, 0))

    list(pool.map(first, _bands(height if horizontal else width, _workers())))
    # Second pass, per size, in bands across the other axis, straight into numpy.
    outs = [np.empty((h, w, 3), dtype=np.uint8) for w, h in sizes]
    jobs = [(middle, out, a, b) for middle, out, (w, h) in zip(middles, outs, sizes, strict=True)
            for a, b in _bands(w if horizontal else h, _workers())]

    def second(job: tuple[Image.Image, np.ndarray, int, int]) -> None:
        middle, out, a, b = job
        mw, mh = middle.size
        if horizontal:  # vertical pass on columns a..b
            out[:, a:b] = np.asarray(middle.crop((a, 0, b, mh)).resize((b - a, out.shape[0]), Image.Resampling.BICUBIC))
        else:  # horizontal pass on rows a..b
            out[a:b] = np.asarray(middle.crop((0, a, mw, b)).resize((out.shape[1], b - a), Image.Resampling.BICUBIC))

    list(pool.map(second, jobs))
    return outs


def image_pixels(image: Image.Image | np.ndarray, *, max_num: int = 12, min_num: int = 1,
                 use_thumbnail: bool = True, fast: bool = False, image_size: int = IMAGE_SIZE,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``pixel_values(dynamic_tiles(image, ...))`` in one step, without intermediate tile images.

    ``image`` is a PIL image or an H x W x 3 uint8 array (:func:`decode_pixels`). ``fast=True``
    resizes with torch (every pixel within 2 levels of the reference) instead of PIL.
    """
    import torch

    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
    cols, rows = grid_for(width, height, min_num=min_num, max_num=max_num, image_size=image_size)
    blocks = cols * rows
    sizes = [(image_size * cols, image_size * rows)]
    if use_thumbnail and blocks != 1:
        sizes.append((image_size, image_size))
    if fast:
        array = image if isinstance(image, np.ndarray) else np.asarray(image)
        # 3 x H x W each; the grid and the thumbnail at once (torch's uint8 antialiased resize runs on one
        # core and lets the GIL go: 18 ms for both instead of 25 on two cores)
        planes = list(_executor().map(lambda size: _resize_fast(array, size), sizes))

        def tile(k: int) -> np.ndarray:
            if k == blocks:
                return planes[1]
            r, c = divmod(k, cols)
            return planes[0][:, r * image_size:(r + 1) * image_size, c * image_size:(c + 1) * image_size]
    else:
        resized = _resize_exact_many(image, sizes)  # H x W x 3

        def tile(k: int) -> np.ndarray:
            if k == blocks:
                return resized[1].transpose(2, 0, 1)
            r, c = divmod(k, cols)
            cut = resized[0][r * image_size:(r + 1) * image_size, c * image_size:(c + 1) * image_size]
            return cut.transpose(2, 0, 1)

    # Each tile goes straight from the resized image into its place in the output (uint8 -> float32 is exact),
    # then is normalised there: no stack of uint8 tiles in between.
    out = np.empty((len(sizes) - 1 + blocks, 3, image_size, image_size), dtype=np.float32)

    def fill(span: tuple[int, int]) -> None:
        for k in range(*span):
            out[k] = tile(k)
        _normalise(out[span[0]:span[1]], mean, std)

    list(_executor().map(fill, _bands(out.shape[0], _workers())))
    return torch.from_numpy(out)


def preprocess(data: bytes, *, max_num: int = 12, fast: bool = False, max_pixels: int = 40_000_000,
               name: str = "") -> torch.Tensor:
    """Bytes of an image -> InternVL pixel values (decode, orientation, tiles, normalisation)."""
    return image_pixels(decode_pixels(data, name=name, max_pixels=max_pixels), max_num=max_num, fast=fast)


def canvas_pixels(data: bytes, *, name: str = "", max_pixels: int) -> int:
    """Width x height of an image from its header alone (nothing decoded); ImageTooLarge past ``max_pixels``,
    UnreadableImage when it is not an image."""
    return _guard(name, lambda: _pixels_of(_open_checked(data, name, max_pixels)))


def _pixels_of(im: Image.Image) -> int:
    width, height = im.size
    im.close()
    return width * height


class PixelBudget:
    """Decoded pixels held at once, across every conversation: a turn takes what it decodes and gives it back
    when it ends. A request waits (it never fails) until there is room; one larger than the whole budget
    waits until nothing else is held, then goes alone. Hostile input — many small files that decode huge —
    waits its turn instead of growing memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.waits = 0
        self._changed = asyncio.Condition()

    async def acquire(self, pixels: int) -> None:
        async with self._changed:
            if not (self.used == 0 or self.used + pixels <= self.capacity):
                self.waits += 1
                await self._changed.wait_for(lambda: self.used == 0 or self.used + pixels <= self.capacity)
            self.used += pixels
            self.peak = max(self.peak, self.used)

    async def release(self, pixels: int) -> None:
        async with self._changed:
            self.used -= pixels
            self._changed.notify_all()


@dataclass(eq=False)
class PixelLease:
    """What one turn holds of a :class:`PixelBudget`, up to its own ``limit`` (the per-message cap)."""

    budget: PixelBudget
    limit: int
    held: int = 0

    async def take(self, pixels: int) -> bool:
        """Hold ``pixels`` more (waiting for room); False, holding nothing more, past the turn's limit."""
        if self.held + pixels > self.limit:
            return False
        await self.budget.acquire(pixels)
        self.held += pixels
        return True

    async def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            await self.budget.release(held)


class ByteLRU:
    """A least-recently-used map bounded by the bytes of its values (arrays and tensors), thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(value: object) -> int:
        nbytes = getattr(value, "nbytes", None)
        if nbytes is None and hasattr(value, "element_size"):
            nbytes = value.element_size() * value.nelement()  # type: ignore[attr-defined]
        return int(nbytes or 0)

    def get(self, key: object) -> object | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: object, value: object) -> None:
        size = self._size(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed

    def __len__(self) -> int:
        return len(self._items)


class PixelCache(ByteLRU):
    """Preprocessed images (pixel values) by (SHA-256 of the file, max tiles, resize mode).

    Asking again about the same photo — a follow-up question, or the same file sent again — does no
    decoding or resizing work. Bounded by bytes: 13 tiles of a 12 MP photo are 31 MB.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        super().__init__(max_bytes)

    def pixels(self, image: Image.Image | np.ndarray, *, sha256: str, max_num: int, fast: bool = False,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
        key = (sha256, max_num, fast)
        found = self.get(key) if sha256 else None
        if found is not None:
            return found  # type: ignore[return-value]
        result = image_pixels(image, max_num=max_num, fast=fast, mean=mean, std=std)
        if sha256:
            self.put(key, result)
        return result


_album_pool: ThreadPoolExecutor | None = None


def _mark_album_thread() -> None:
    _album_thread.inline = True


def _album_executor() -> ThreadPoolExecutor:
    """Image-level parallelism: each image runs whole in one thread of this pool (its resize bands and
    normalisation inline), several images at once. Measured on 2 cores, this beats splitting every
    image into bands on a shared pool (1.96x against 1.66x the serial reference for 10 photos)."""
    global _album_pool
    if _album_pool is None:
        _album_pool = ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="album",
                                         initializer=_mark_album_thread)
    return _album_pool


def preprocess_many(files: Sequence[bytes], *, max_num: int = 12, fast: bool = False,
                    max_pixels: int = 40_000_000) -> list[torch.Tensor]:
    """:func:`preprocess` for several images at once (an album), images in parallel, largest first."""
    return map_images(lambda data: preprocess(data, max_num=max_num, fast=fast, max_pixels=max_pixels), files,
                      weight=len)


def map_images(fn: Callable[[_T], _U], items: Sequence[_T], *,
               weight: Callable[[_T], float] | None = None) -> list[_U]:
    """Apply ``fn`` to several images in parallel (image-level pool), in order of results.

    ``weight`` (bytes, pixels) starts the heaviest first, so that the pool does not end on one big image
    while the other thread idles. A single image keeps the band-level parallelism inside ``fn``.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = _album_executor()
    order = sorted(range(len(items)), key=lambda i: -weight(items[i])) if weight else range(len(items))
    futures = {i: pool.submit(fn, items[i]) for i in order}
    return [futures[i].result() for i in range(len(items))]


def _reset_pool_after_fork() -> None:
    global _pool, _album_pool
    _pool = None
    _album_pool = None


os.register_at_fork(after_in_child=_reset_pool_after_fork)
