from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import ImageTooLarge, UnreadableImage
from bot.media import decode_image, decode_text, grid_for, sniff, tile_count
from tests.conftest import image_bytes


@pytest.mark.parametrize(
    ("data", "name", "kind", "label"),
    [
        (image_bytes(fmt="JPEG"), "x", "image", "JPEG image"),
        (image_bytes(fmt="PNG"), "x.dat", "image", "PNG image"),
        (image_bytes(fmt="WEBP"), "", "image", "WebP image"),
        (image_bytes(fmt="GIF"), "", "image", "GIF image"),
        (image_bytes(fmt="BMP"), "", "image", "BMP image"),
        (image_bytes(fmt="TIFF"), "", "image", "TIFF image"),
        (image_bytes(fmt="JPEG"), "invoice.pdf", "image", "JPEG image"),  # bytes win over the name
        (b"%PDF-1.4 ...", "a.pdf", "unsupported", "PDF document"),
        (b"OggS\x00\x02rest", "voice.oga", "unsupported", "audio or voice note"),
        (b"\x00\x00\x00\x18ftypmp42rest", "clip.mp4", "unsupported", "video"),
        (b"PK\x03\x04rest", "report.docx", "unsupported", "archive or office document"),
        ("Hello, ünïcode text\n".encode(), "notes.txt", "text", "text file"),
        (b"\x00\x01\x02garbage", "x.bin", "unsupported", "unknown format"),
        (b"\x00\x01\x02garbage", "x.jpg", "image", "image"),
    ],
)
def test_sniff_recognises_files_by_content(data: bytes, name: str, kind: str, label: str) -> None:
    found = sniff(data, name)
    assert (found.kind, found.label) == (kind, label)


def test_decode_applies_exif_orientation() -> None:
    im = Image.new("RGB", (400, 200), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue(), max_pixels=10**8).size == (200, 400)


def test_decode_flattens_transparency_on_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(buffer, "PNG")
    out = decode_image(buffer.getvalue(), max_pixels=10**8)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["P", "CMYK", "I;16", "L", "LA"])
def test_decode_other_modes_to_rgb(mode: str) -> None:
    buffer = io.BytesIO()
    Image.new(mode, (32, 16)).save(buffer, "TIFF" if mode == "CMYK" else "PNG")
    assert decode_image(buffer.getvalue(), max_pixels=10**8).mode == "RGB"


def test_bomb_refused_from_the_header() -> None:
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(ImageTooLarge) as err:
        decode_image(buffer.getvalue(), name="bomb.png", max_pixels=40_000_000)
    assert err.value.params["pixels"] == 900.0


@pytest.mark.parametrize("data", [b"", b"\xff\xd8\xff\xe0garbage", image_bytes(600, 400)[:300], b"GIF89a\x00"])
def test_broken_images_are_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableImage):
        decode_image(data, name="x.jpg", max_pixels=10**8)


def test_decode_text_truncates() -> None:
    assert decode_text(b"abcdef", limit=3) == ("abc", True)
    assert decode_text(b"ok", limit=3) == ("ok", False)


def test_tile_arithmetic_reference_cases() -> None:
    assert tile_count(448, 448) == 1
    assert grid_for(4032, 3024) == (4, 3)
    assert tile_count(4032, 3024) == 13
    assert tile_count(1, 1) == 1
    assert grid_for(4096, 16) == (12, 1)
    assert tile_count(4096, 16, max_num=6) == 7


@pytest.mark.slow
def test_tile_count_matches_the_checkpoint_image_processor(demo_model: Path) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(demo_model, backend="pil")
    rng = random.Random(7)
    sizes = [(1, 1), (4096, 16), (16, 4096), (4032, 3024), (3024, 4032), (448, 448), (896, 448)]
    sizes += [(rng.randint(1, 5000), rng.randint(1, 5000)) for _ in range(400)]
    for width, height in sizes:
        for max_num in (1, 6, 12):
            expected = processor.get_number_of_image_patches(height, width, {"max_patches": max_num})
            assert tile_count(width, height, max_num=max_num) == expected, (width, height, max_num)
