"""What leaves the database scrubbed: training exports' text and images, and solved tickets indexed as knowledge.

Text: e-mail addresses, phone numbers, card-like numbers (13-19 digits that pass the Luhn check) and the names
the platform gave us for the people in the conversation are replaced by ``[email]``, ``[phone]``, ``[card]``
and ``[name]`` (:func:`redact`, both); :func:`strip_salutations` (solved tickets) drops the greeting line that
opens a message ("Hi Jane,") and the sign-off that closes it ("Best regards, Ana"), which name people the
platform may not have told us about. Images: metadata is dropped — JPEG APP1 (EXIF, GPS, XMP) and APP13 (IPTC) segments and
comments, PNG text/EXIF/time chunks, losslessly; any other format is re-encoded as PNG, which keeps pixels only.
Videos: remuxed by ffmpeg without re-encoding, keeping only the first video stream that is not cover art and the
audio; container, stream and chapter metadata (creation time, GPS location, device make and model) are dropped,
and so are data streams (a phone's location or telemetry track), subtitles and attached pictures.
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_DIGITS = re.compile(r"(?<![\w+])\+?\d(?:[\d \t().-]*\d)?(?!\w)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _number(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if 13 <= len(digits) <= 19 and _luhn(digits):
        return "[card]"
    if 7 <= len(digits) <= 15 and (text.startswith("+") or re.search(r"[ ().-]", text) or len(digits) >= 9):
        return "[phone]"
    return text  # a year, a price, a model number


def _name_parts(names: Iterable[str]) -> list[str]:
    parts = set()
    for name in names:
        name = name.strip()
        if not name:
            continue
        parts.add(name)
        parts.update(p for p in re.split(r"[^\w]+", name) if len(p) >= 3 and not p.isdigit())
    return sorted(parts, key=len, reverse=True)  # the full name before its parts


def redact(text: str, names: Iterable[str] = ()) -> str:
    """``text`` without e-mail addresses, phone and card-like numbers, and ``names`` (and their words)."""
    text = _EMAIL.sub("[email]", text)
    text = _DIGITS.sub(_number, text)
    for part in _name_parts(names):
        text = re.sub(rf"(?<!\w)@?{re.escape(part)}(?!\w)", "[name]", text, flags=re.IGNORECASE)
    return text


#: A first line that only greets: "Hi Jane,", "Hello!", "Dear Mr Smith,", "Good morning Ana" (three words at most
#: after the greeting: "Hello world is the first program" is content).
_GREETING = re.compile(
    r"^\s*(?:hi|hello|hey|hallo|dear|good (?:morning|afternoon|evening)|greetings|bonjour|hola|ol[aá]|oi)\b"
    r"[,!]?(?:\s+[\w.'-]+){0,3}\s*[,!.:]?\s*$", re.IGNORECASE)
#: A line that starts the sign-off: "Best regards,", "Kind regards, Ana", "Thanks!", "Cheers", "Sincerely", "-- ".
#: The phrase is the whole line (a capitalised name or two may follow a comma): "Best to switch the pump off first." and
#: "Take care not to touch the impeller." are answers, not farewells.
_SIGN_OFF = re.compile(
    r"^\s*(?:(?:(?:best|kind|warm|many)?\s*regards|best(?: wishes)?|thanks?(?: you)?(?: again)?|many thanks|cheers|"
    r"sincerely|yours(?: truly| sincerely)?|all the best|take care|have a (?:nice|great|good) (?:day|week|weekend)|"
    r"atenciosamente|abra[cç]os|obrigad[oa]|saludos|mit freundlichen gr[üu](?:ß|ss)en)"
    r"\s*[,!.]?(?:(?<=,)\s*(?-i:[A-ZÀ-Þ][\w.'-]*)(?:\s+(?-i:[A-ZÀ-Þ][\w.'-]*)){0,2})?|--(?:\s+[^\n]{0,30})?)\s*$",
    re.IGNORECASE)
#: How many lines a sign-off takes at most (the phrase, a name, a title, a company).
_SIGN_OFF_LINES = 4


def strip_salutations(text: str) -> str:
    """``text`` without the greeting line that opens it and the sign-off block that closes it (the phrase and at
    most a few short lines after it): the names people write there are not always names the platform knows."""
    lines = text.strip().split("\n")
    while lines and (not lines[0].strip() or _GREETING.match(lines[0])):
        lines.pop(0)
    for i in range(max(0, len(lines) - _SIGN_OFF_LINES - 1), len(lines)):
        tail = lines[i + 1:]
        if _SIGN_OFF.match(lines[i]) and all(len(line.strip()) <= 60 for line in tail) and i > 0:
            lines = lines[:i]
            break
    return "\n".join(lines).strip()


_JPEG_DROPPED = {0xE1, 0xED, 0xFE}  # APP1 (EXIF, GPS, XMP), APP13 (IPTC), COM
_PNG_DROPPED = {b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"tIME"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg(data: bytes) -> bytes | None:
    out, i = [data[:2]], 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the compressed image follows as it is
            out.append(data[i:])
            return b"".join(out)
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker not in _JPEG_DROPPED:
            out.append(data[i:i + 2 + length])
        i += 2 + length
    return None


def _png(data: bytes) -> bytes | None:
    out, i = [_PNG_SIGNATURE], len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if kind not in _PNG_DROPPED:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)
    return None


def strip_metadata(data: bytes) -> tuple[bytes, str]:
    """The image without its metadata, and its file extension (``jpg``, ``png``)."""
    if data[:2] == b"\xff\xd8" and (kept := _jpeg(data)) is not None:
        return kept, "jpg"
    if data[:8] == _PNG_SIGNATURE and (kept := _png(data)) is not None:
        return kept, "png"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        pixels = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    pixels.save(buffer, "PNG")
    return buffer.getvalue(), "png"


#: The container a video is remuxed into, by the MIME type the bot stored it with: its own, so that ``-c copy``
#: always fits; Matroska (which takes any codec) for the rest.
_VIDEO_EXT = {"video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm", "video/x-msvideo": "avi",
              "video/x-matroska": "mkv"}
#: A remux copies packets, so it is quick; this only bounds a stuck ffmpeg.
REMUX_TIMEOUT = 120.0


def strip_video_metadata(data: bytes, mime: str) -> tuple[bytes, str]:
    """The video without its metadata, and its file extension; raises (``RuntimeError``, ``OSError``,
    ``subprocess`` errors) when ffmpeg is missing or cannot read it."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed")
    ext = _VIDEO_EXT.get(mime, "mkv")
    with tempfile.TemporaryDirectory(prefix="internvl-bot-export-") as tmp:
        # files rather than pipes: an MP4 whose index sits at the end cannot be read from a pipe
        src, dst = Path(tmp) / "in", Path(tmp) / f"out.{ext}"
        src.write_bytes(data)
        subprocess.run(
            [ffmpeg, "-v", "error", "-nostdin", "-y", "-i", str(src),
             # V (not v): video streams that are not cover art, whose JPEG would carry its own EXIF
             "-map", "0:V:0", "-map", "0:a?", "-map_metadata", "-1", "-map_chapters", "-1", "-c", "copy",
             # bitexact: no encoder tag, so the same video gives the same bytes in every export
             "-fflags", "+bitexact", str(dst)],
            check=True, capture_output=True, timeout=REMUX_TIMEOUT)
        out = dst.read_bytes()
    if not out:
        raise RuntimeError("ffmpeg wrote an empty video")
    return out, ext


__all__ = ["redact", "strip_metadata", "strip_salutations", "strip_video_metadata"]
