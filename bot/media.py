"""Media: recognising what a user sent, decoding images safely, and InternVL's tile arithmetic.

Images are decoded with Pillow. Unlike InternVL's reference ``load_image`` (which only calls
``convert('RGB')``), EXIF orientation is applied: phone photos are stored sideways with an
orientation tag, and the model should see them the way the user does. Transparent images are
flattened onto white. Oversized images are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import ImageTooLarge, UnreadableImage

log = logging.getLogger(__name__)

IMAGE_SIZE = 448
TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".csv", ".tsv", ".json", ".log", ".yaml", ".yml", ".xml", ".ini")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif")
MAX_TEXT_FILE_CHARS = 20000


@dataclass(frozen=True, slots=True)
class MediaKind:
    kind: Literal["image", "text", "unsupported"]
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
    (b"%PDF", 0, "unsupported", "application/pdf", "PDF document"),
    (b"PK\x03\x04", 0, "unsupported", "application/zip", "archive or office document"),
    (b"Rar!", 0, "unsupported", "application/vnd.rar", "archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "unsupported", "application/x-7z-compressed", "archive"),
    (b"\x1f\x8b", 0, "unsupported", "application/gzip", "archive"),
    (b"OggS", 0, "unsupported", "audio/ogg", "audio or voice note"),
    (b"ID3", 0, "unsupported", "audio/mpeg", "audio"),
    (b"fLaC", 0, "unsupported", "audio/flac", "audio"),
    (b"\x1aE\xdf\xa3", 0, "unsupported", "video/webm", "video"),
    (b"\xd0\xcf\x11\xe0", 0, "unsupported", "application/msword", "office document"),
]


def sniff(data: bytes, filename: str = "", declared_mime: str = "") -> MediaKind:
    """Recognise a file from its bytes (never from its name alone: names lie)."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaKind("image", "image/webp", "WebP image")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return MediaKind("unsupported", "audio/wav", "audio")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis", b"avif"):
            return MediaKind("unsupported", "image/heic", "HEIC/AVIF image")
        if brand in (b"M4A ", b"M4B "):
            return MediaKind("unsupported", "audio/mp4", "audio")
        return MediaKind("unsupported", "video/mp4", "video")
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


def decode_image(data: bytes, *, name: str = "", max_pixels: int) -> Image.Image:
    """Decode an image into RGB with EXIF orientation applied and transparency flattened on white.

    Raises :class:`ImageTooLarge` from the header alone when the canvas exceeds ``max_pixels``
    (a "decompression bomb" never gets decoded), :class:`UnreadableImage` for anything broken.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels or width < 1 or height < 1:
                raise ImageTooLarge(
                    f"{width}x{height}", name=name, pixels=round(width * height / 1e6, 1),
                    limit=round(max_pixels / 1e6, 1),
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            return _to_rgb(im)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses far larger canvases itself, at open; its message carries the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = round(int(found.group(1)) / 1e6, 1) if found else "?"
        raise ImageTooLarge(str(exc), name=name, pixels=pixels, limit=round(max_pixels / 1e6, 1)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        log.info("unreadable image %r: %s", name, exc)
        raise UnreadableImage(str(exc), name=name) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping.
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")


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
