from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest
from PIL import Image

from bot.errors import ImageTooLarge, UnreadableImage
from bot.media.images import decode_image, decode_pixels, decode_text, grid_for, sniff, tile_count
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
        (b"%PDF-1.4 ...", "a.pdf", "document", "PDF document"),
        (b"OggS\x00\x02rest", "voice.oga", "unsupported", "audio or voice note"),
        (b"\x00\x00\x00\x18ftypmp42rest", "clip.mp4", "video", "video"),
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


# -- InternVL preprocessing, bit for bit against the reference -------------------------------

from bot.media.images import dynamic_tiles, image_pixels, pixel_values  # noqa: E402
from tests import reference_internvl as ref  # noqa: E402


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    smooth = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(smooth).astype(int) + noise, 0, 255).astype(np.uint8))


import numpy as np  # noqa: E402

SIZES = [(1, 1), (4096, 16), (16, 4096), (4032, 3024), (3024, 4032), (448, 448), (449, 447), (1000, 700),
         (700, 2000), (2000, 300), (1280, 720), (333, 1999), (5, 900), (2560, 2560)]


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("max_num", [1, 6, 12])
def test_pixels_equal_the_reference_bit_for_bit(width: int, height: int, max_num: int) -> None:
    image = _photo(width, height, seed=width * 7 + height)
    expected = ref.load_image(image, max_num=max_num)
    assert torch_equal(image_pixels(image, max_num=max_num), expected)


def test_tiles_and_pixel_values_api_equal_the_reference_on_random_sizes() -> None:
    rng = random.Random(3)
    for _ in range(25):
        width, height = rng.randint(1, 3000), rng.randint(1, 3000)
        image = _photo(width, height, seed=width + height)
        max_num = rng.choice([1, 2, 4, 6, 12])
        tiles = dynamic_tiles(image, max_num=max_num)
        reference = ref.dynamic_preprocess(image, max_num=max_num, use_thumbnail=True)
        assert [t.size for t in tiles] == [t.size for t in reference]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(tiles, reference, strict=True))
        assert torch_equal(pixel_values(tiles), ref.load_image(image, max_num=max_num))


@pytest.mark.parametrize(("width", "height"), [(4032, 3024), (900, 3000), (3000, 200), (640, 641)])
def test_array_input_equals_the_reference(width: int, height: int) -> None:
    image = _photo(width, height, seed=11)
    assert torch_equal(image_pixels(np.asarray(image)), ref.load_image(image))


def test_jpeg_bytes_through_preprocess_equal_the_reference() -> None:
    from bot.media.images import preprocess

    buffer = io.BytesIO()
    _photo(2000, 1500, seed=2).save(buffer, "JPEG", quality=88)
    expected = ref.load_image(Image.open(io.BytesIO(buffer.getvalue())), max_num=6)
    assert torch_equal(preprocess(buffer.getvalue(), max_num=6), expected)


def test_fast_mode_is_within_two_levels() -> None:
    image = _photo(4032, 3024, seed=5)
    fast = image_pixels(image, fast=True)
    exact = image_pixels(image)
    assert fast.shape == exact.shape
    # Two 8-bit levels, in normalised units: 2 / 255 / std.
    assert float((fast - exact).abs().max()) <= 2 / 255 / min(ref.IMAGENET_STD) + 1e-6


@pytest.mark.parametrize(("width", "height", "max_num"), [(1500, 1000, 6), (900, 3000, 12), (640, 480, 1)])
def test_fast_mode_is_torchs_resize_cut_into_tiles(width: int, height: int, max_num: int) -> None:
    import torch

    from bot.media.images import grid_for

    image = np.asarray(_photo(width, height, seed=9))
    cols, rows = grid_for(width, height, max_num=max_num)
    source = torch.from_numpy(image).permute(2, 0, 1)[None]  # channels-last, as the fast path hands it over

    def resized(w: int, h: int) -> torch.Tensor:
        return torch.nn.functional.interpolate(source, size=(h, w), mode="bicubic", antialias=True)[0]

    grid = resized(448 * cols, 448 * rows)
    tiles = [grid[:, r * 448:(r + 1) * 448, c * 448:(c + 1) * 448] for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(resized(448, 448))
    mean = torch.tensor(ref.IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(ref.IMAGENET_STD, dtype=torch.float32)[:, None, None]
    expected = torch.stack([(t.to(torch.float32).div(255) - mean) / std for t in tiles])
    assert torch_equal(image_pixels(image, fast=True, max_num=max_num), expected)


def test_the_allocator_maps_decoded_images_and_keeps_smaller_blocks_in_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.media import images as media

    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(media, "_libc", lambda: Libc())
    media.tune_allocator()
    # a 12 MP photo (36 MB decoded) is mapped, returned when freed; resize bands, Pillow's 16 MB blocks and tiles
    # are reused from the heap, not mapped and faulted in anew each time; free heap tops go back past 1 MB
    assert calls == [(-3, 32 << 20), (-1, 1 << 20)]
    assert 4032 * 3024 * 3 > media.MMAP_THRESHOLD > 16 << 20


def torch_equal(a: object, b: object) -> bool:
    import torch

    assert isinstance(a, torch.Tensor)
    assert isinstance(b, torch.Tensor)
    return a.dtype == b.dtype == torch.float32 and a.shape == b.shape and torch.equal(a, b)


def test_caches_are_bounded_by_bytes_and_keep_the_recent() -> None:
    from bot.media.images import ByteLRU, PixelCache

    lru = ByteLRU(max_bytes=3000)
    for k in range(5):
        lru.put(k, np.zeros(1000, dtype=np.uint8))
    assert len(lru) == 3
    assert lru.bytes == 3000
    assert lru.get(0) is None
    assert lru.get(4) is not None
    cache = PixelCache()
    image = _photo(900, 600)
    first = cache.pixels(image, sha256="abc", max_num=6)
    assert cache.pixels(image, sha256="abc", max_num=6) is first
    assert cache.pixels(image, sha256="abc", max_num=2) is not first
    assert cache.hits == 1


def test_an_unreadable_image_is_named_not_shown_as_a_buffer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.media.images")
    with pytest.raises(UnreadableImage) as raised:
        decode_pixels(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, name="kettle.png", max_pixels=10**6)
    shown = str(raised.value) + " ".join(r.getMessage() for r in caplog.records)
    assert "BytesIO" not in shown and "0x" not in shown and "kettle.png" in shown


@pytest.mark.parametrize("mode", ["1", "L"])
def test_greyscale_decodes_to_the_same_rgb_bits_as_pillow(mode: str) -> None:
    rng = random.Random(7)
    image = Image.new(mode, (301, 207))
    image.putdata([rng.randrange(2) * 255 if mode == "1" else rng.randrange(256) for _ in range(301 * 207)])
    out = io.BytesIO()
    image.save(out, "PNG")
    data = out.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(decode_pixels(data, max_pixels=10**6), expected)
