"""InternVL's grounding: the ``<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`` it writes, taken out of the text
the user reads and drawn on the image it refers to.

InternVL localises what it talks about with integer coordinates 0–1000 relative to the image's width and height
(its RefCOCO evaluation asks :data:`GROUNDING_PROMPT` and multiplies the parsed numbers by width/1000 and
height/1000). Several boxes may follow one ``<ref>`` (``[[…],[…]]``) and points (``[[x, y]]``) occur.

- :class:`TagFilter` filters a streamed answer: ``<ref>label</ref>`` becomes ``label``, ``<box>…</box>`` goes,
  and a tag split across chunks is held back until it is complete, so no fragment is ever shown.
- :func:`parse_regions` reads the regions of a whole answer (what is out of range is clamped, reversed corners
  are put in order, garbage is ignored: never an error).
- :func:`annotate` draws them — one colour per label, the label written at its box in a font that has the
  label's script (:func:`font_for`) — and encodes the result as a JPEG to send.

Fonts: Noto Sans CJK (Debian's ``fonts-noto-cjk``: Latin, Greek, Cyrillic, Chinese, Japanese, Korean) and, for
Arabic, Hebrew, Devanagari and Thai labels, Noto Sans of that script (``fonts-noto-core``). Both are installed by
``.ci/run`` and listed in README; without them labels fall back to DejaVu Sans (no CJK), then to Pillow's own font.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

log = logging.getLogger(__name__)

#: InternVL's grounding question (internvl_chat/eval/refcoco/evaluate_grounding.py).
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
#: The coordinate range InternVL uses for both axes.
SCALE = 1000.0
#: Images larger than this on their longest side are reduced (by a whole factor) before drawing: what is sent
#: stays within every platform's photo limits (Telegram: width + height ≤ 10000) and the drawing cheap.
MAX_SIDE = 4096
#: A ``<box>`` that has not closed after this many characters is garbage, not coordinates: it is dropped.
MAX_BOX_CHARS = 4000
JPEG_QUALITY = 85

_TAGS = ("<ref>", "</ref>", "<box>", "</box>")
_REGION = re.compile(r"(?:<ref>(?P<label>(?:(?!<ref>).)*?)</ref>\s*)?<box>(?P<coords>.*?)</box>", re.S)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_LIST = re.compile(r"\[" + _NUMBER + "," + _NUMBER + r"(?:," + _NUMBER + "," + _NUMBER + r")?\]")
_NAMED_IMAGE = re.compile(r"\b((?:Image|Page)-\d+)\b")
_TAG_OR_NAME = re.compile(r"</?(?:ref|box)>")


class TagFilter:
    """Takes InternVL's grounding tags out of a streamed answer (see the module docstring). ``raw`` is the whole
    answer as the model wrote it, tags included, for :func:`parse_regions`."""

    def __init__(self) -> None:
        self._raw: list[str] = []
        self._held = ""
        self._tagged = False  # a "<" came: the answer may hold tags

    @property
    def raw(self) -> str:
        return "".join(self._raw)

    def feed(self, chunk: str) -> str:
        """The text of ``chunk`` the user may see now; a tag not yet complete is held back."""
        self._raw.append(chunk)
        if not self._held and "<" not in chunk:
            return chunk  # the common case: no tag anywhere near
        self._tagged = True
        text = self._held + chunk
        self._held = ""
        out: list[str] = []
        while text:
            at = text.find("<")
            if at < 0:
                out.append(text)
                break
            out.append(text[:at])
            text = text[at:]
            if text.startswith(("<ref>", "</ref>", "</box>")):
                text = text[text.index(">") + 1:]  # a label's tags go, the label stays; a stray </box> goes
            elif text.startswith("<box>"):
                end = text.find("</box>")
                if end < 0:
                    if len(text) <= MAX_BOX_CHARS:
                        self._held = text  # coordinates still coming: nothing of them is shown
                    break
                text = text[end + len("</box>"):]
            elif any(tag.startswith(text) for tag in _TAGS):
                self._held = text  # "<bo" at the end of a chunk: may be a tag, wait for the rest
                break
            else:
                out.append("<")
                text = text[1:]
        return "".join(out)

    def rest(self) -> str:
        """What was held back when the stream ends: a tag's beginning that never completed is text after all;
        an unclosed ``<box>`` is dropped (coordinates are never shown)."""
        held, self._held = self._held, ""
        return "" if held.startswith("<box>") else held

    @property
    def grounded(self) -> bool:
        """The answer so far has at least one complete box."""
        return self._tagged and "</box>" in self.raw


def strip_tags(text: str) -> str:
    """``text`` as the user reads it: labels without their tags, boxes gone."""
    tags = TagFilter()
    return tags.feed(text) + tags.rest()


@dataclass(frozen=True, slots=True)
class Region:
    """What the model located: a label, its boxes ``(x1, y1, x2, y2)`` and points ``(x, y)`` as fractions of the
    image's width and height (0–1, corners in order), and the image it named (``Image-2``; "" for the default)."""

    label: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    image: str = ""


def _clamp(value: str) -> float:
    return min(max(float(value), 0.0), SCALE) / SCALE


def _coordinates(text: str) -> tuple[list[tuple[float, float, float, float]], list[tuple[float, float]]]:
    boxes: list[tuple[float, float, float, float]] = []
    points: list[tuple[float, float]] = []
    for m in _LIST.finditer(text):
        if m.group(3) is None:
            points.append((_clamp(m.group(1)), _clamp(m.group(2))))
            continue
        x1, y1, x2, y2 = (_clamp(m.group(k)) for k in range(1, 5))
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 > x1 and y2 > y1:  # a box squashed to a line (both ends past one edge) shows nothing: left out
            boxes.append((x1, y1, x2, y2))
    return boxes, points


def parse_regions(text: str, *, default_label: str = "", bare: bool = False) -> list[Region]:
    """The regions of an answer, in order, those with the same label and image merged. ``bare``: with no
    ``<box>`` tag at all, coordinate lists anywhere in ``text`` count (InternVL's answer to
    :data:`GROUNDING_PROMPT` is sometimes just ``[[x1, y1, x2, y2]]``), labelled ``default_label``."""
    found: dict[tuple[str, str], tuple[list[tuple[float, float, float, float]], list[tuple[float, float]]]] = {}
    for m in _REGION.finditer(text):
        label = _TAG_OR_NAME.sub("", m.group("label") or "").strip() or default_label
        named = _NAMED_IMAGE.findall(text, 0, m.start())
        boxes, points = _coordinates(m.group("coords"))
        if boxes or points:
            mine = found.setdefault((label, named[-1] if named else ""), ([], []))
            mine[0].extend(boxes)
            mine[1].extend(points)
    if not found and bare:
        boxes, points = _coordinates(_TAG_OR_NAME.sub("", text))
        if boxes or points:
            found[(default_label, "")] = (boxes, points)
    return [Region(label, tuple(b), tuple(p), image) for (label, image), (b, p) in found.items()]


# -- drawing ---------------------------------------------------------------------------------------------------

#: Distinct, saturated colours (one per label, in order): readable on photos, told apart from each other.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180),
    (0, 200, 200), (240, 50, 230), (170, 110, 40), (128, 0, 0), (0, 0, 128),
)

_FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
_CJK = "NotoSansCJK-Bold.ttc"
#: the face of the collection for each language (Noto Sans CJK's order: JP, KR, SC, TC, HK): the same
#: character is drawn the way its readers expect
_CJK_FACE = {"ja": 0, "ko": 1, "zh": 2}
_SCRIPTS: tuple[tuple[str, str], ...] = (
    (r"[\u0590-\u05ff]", "NotoSansHebrew-Bold.ttf"),
    (r"[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]", "NotoSansArabic-Bold.ttf"),
    (r"[\u0900-\u097f]", "NotoSansDevanagari-Bold.ttf"),
    (r"[\u0e00-\u0e7f]", "NotoSansThai-Bold.ttf"),
)
_FALLBACK = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _find_font(name: str) -> Path | None:
    for folder in _FONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    return None


def font_path(label: str, language: str = "en") -> tuple[Path | None, int]:
    """The font file (and face index) that writes ``label``: its script's Noto Sans, else Noto Sans CJK (which
    covers Latin and Cyrillic too), else DejaVu Sans; None when none is installed."""
    for pattern, name in _SCRIPTS:
        if re.search(pattern, label):
            found = _find_font(name) or _find_font(name.replace("-Bold", "-Regular"))
            if found is not None:
                return found, 0
    cjk = _find_font(_CJK) or _find_font(_CJK.replace("-Bold", "-Regular"))
    if cjk is not None:
        return cjk, _CJK_FACE.get(language, 0)
    return (_FALLBACK, 0) if _FALLBACK.is_file() else (None, 0)


@lru_cache(maxsize=32)
def font_for(label: str, language: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font of ``size`` pixels for ``label`` (see :func:`font_path`), shaped with Raqm where Pillow has it
    (Arabic joins its letters and runs right to left)."""
    path, index = font_path(label, language)
    if path is None:
        log.warning("no font for grounding labels: install fonts-noto-cjk and fonts-noto-core (see README)")
        return ImageFont.load_default(size)
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    return ImageFont.truetype(str(path), size, index=index, layout_engine=layout)


def line_width(width: int, height: int) -> int:
    """Box lines: about 1/400 of the image's longest side, at least 2 pixels."""
    return max(2, round(max(width, height) / 400))


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A writable H x W x 3 uint8 copy (the caller's pixels — the resolver's cache — stay untouched), reduced by
    a whole factor when larger than :data:`MAX_SIDE`."""
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
        factor = math.ceil(max(array.shape[:2]) / MAX_SIDE)
        if factor > 1:
            return np.asarray(Image.fromarray(np.ascontiguousarray(array[..., :3])).reduce(factor)).copy()
        return np.array(array[..., :3], dtype=np.uint8, copy=True)
    rgb = image.convert("RGB")
    factor = math.ceil(max(rgb.size) / MAX_SIDE)
    return np.array(rgb.reduce(factor) if factor > 1 else rgb)


def _contrast(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _label(array: np.ndarray, text: str, colour: tuple[int, int, int], x: int, y_top: int, y_inside: int,
           language: str, size: int) -> None:
    """Write ``text`` on a tag of ``colour``: above ``y_top`` when there is room, else from ``y_inside`` down;
    kept inside the image."""
    height, width = array.shape[:2]
    font = font_for(text, language, size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size // 6)
    tag_w, tag_h = min(width, right - left + 2 * pad), min(height, bottom - top + 2 * pad)
    tag = Image.new("RGB", (tag_w, tag_h), colour)
    ImageDraw.Draw(tag).text((pad - left, pad - top), text, font=font, fill=_contrast(colour))
    y = y_top - tag_h if y_top - tag_h >= 0 else y_inside
    y = min(max(0, y), height - tag_h)
    x = min(max(0, x), width - tag_w)
    array[y:y + tag_h, x:x + tag_w] = np.asarray(tag)


def _rectangle(array: np.ndarray, box: tuple[int, int, int, int], colour: tuple[int, int, int], lw: int) -> None:
    """The outline of ``box`` (x1, y1 inclusive; x2, y2 exclusive), ``lw`` wide, drawn inwards: its outer edge is
    exactly where the coordinates say."""
    x1, y1, x2, y2 = box
    lw = max(1, min(lw, (x2 - x1 + 1) // 2, (y2 - y1 + 1) // 2))
    array[y1:y1 + lw, x1:x2] = colour
    array[y2 - lw:y2, x1:x2] = colour
    array[y1:y2, x1:x1 + lw] = colour
    array[y1:y2, x2 - lw:x2] = colour


def _marker(array: np.ndarray, cx: int, cy: int, colour: tuple[int, int, int], lw: int) -> None:
    """A point: a disc of ``colour`` in a ring of its contrast colour, centred on (cx, cy)."""
    height, width = array.shape[:2]
    radius = 3 * lw
    ring = radius + max(1, lw // 2)
    y0, y1, x0, x1 = max(0, cy - ring), min(height, cy + ring + 1), max(0, cx - ring), min(width, cx + ring + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    distance = (yy - cy) ** 2 + (xx - cx) ** 2
    patch = array[y0:y1, x0:x1]
    patch[distance <= ring * ring] = _contrast(colour)
    patch[distance <= radius * radius] = colour


def draw_regions(image: Image.Image | np.ndarray, regions: Sequence[Region], *, language: str = "en") -> np.ndarray:
    """A copy of ``image`` with ``regions`` drawn: each label's boxes (and points, as markers) in its own colour,
    the label written at its first box or point, line width and lettering scaled to the image."""
    array = _as_array(image)
    height, width = array.shape[:2]
    lw = line_width(width, height)
    size = max(14, round(max(width, height) / 60))
    colours: dict[str, tuple[int, int, int]] = {}
    for region in regions:
        colour = colours.setdefault(region.label, PALETTE[len(colours) % len(PALETTE)])
        labelled = False
        for fx1, fy1, fx2, fy2 in region.boxes:
            x1, y1 = min(round(fx1 * width), width - 1), min(round(fy1 * height), height - 1)
            x2, y2 = max(round(fx2 * width), x1 + 1), max(round(fy2 * height), y1 + 1)
            _rectangle(array, (x1, y1, x2, y2), colour, lw)
            if region.label and not labelled:
                _label(array, region.label, colour, x1, y1, y1 + lw, language, size)
                labelled = True
        for fx, fy in region.points:
            cx, cy = min(round(fx * width), width - 1), min(round(fy * height), height - 1)
            _marker(array, cx, cy, colour, lw)
            if region.label and not labelled:
                _label(array, region.label, colour, cx + 4 * lw, cy - 2 * lw, cy + 4 * lw, language, size)
                labelled = True
    return array


def encode_jpeg(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB array as a JPEG to send (libjpeg-turbo through simplejpeg; Pillow where it is missing)."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - simplejpeg is a dependency; stay correct without it
        import io

        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()
    return simplejpeg.encode_jpeg(np.ascontiguousarray(array), quality=quality, colorspace="RGB",
                                  colorsubsampling="420")


@dataclass(frozen=True, slots=True)
class Annotated:
    """An image with its regions drawn, ready to send."""

    data: bytes
    width: int
    height: int
    labels: tuple[str, ...]


def annotate(image: Image.Image | np.ndarray, regions: Sequence[Region], *, language: str = "en") -> Annotated:
    """:func:`draw_regions`, then :func:`encode_jpeg`."""
    array = draw_regions(image, regions, language=language)
    labels = tuple(dict.fromkeys(r.label for r in regions if r.label))
    return Annotated(encode_jpeg(array), array.shape[1], array.shape[0], labels)


__all__ = ["GROUNDING_PROMPT", "Annotated", "Region", "TagFilter", "annotate", "draw_regions", "encode_jpeg",
           "font_for", "font_path", "parse_regions", "strip_tags"]
