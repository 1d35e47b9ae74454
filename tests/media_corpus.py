"""Test files made on the spot: videos with ffmpeg, images with Pillow, PDFs with fpdf2."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (.ci/run installs it)")


def ffmpeg(out: Path, *args: str) -> Path:
    assert FFMPEG is not None
    subprocess.run([FFMPEG, "-v", "error", "-y", *args, str(out)], check=True, timeout=300)
    return out


def make_videos(folder: Path) -> dict[str, Path]:
    src = ["-f", "lavfi", "-i"]
    videos = {
        # 30 s 720p H.264 with libx264's defaults (GOP 250), and a phone-style clip (GOP 30).
        "long_gop": ffmpeg(folder / "long_gop.mp4", *src, "testsrc=size=1280x720:rate=30", "-t", "30",
                           "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        "phone": ffmpeg(folder / "phone.mp4", *src, "testsrc=size=1280x720:rate=30", "-t", "30", "-c:v",
                        "libx264", "-g", "30", "-pix_fmt", "yuv420p"),
        "webm": ffmpeg(folder / "clip.webm", *src, "testsrc=size=640x360:rate=25", "-t", "4", "-c:v",
                       "libvpx-vp9", "-b:v", "200k"),
        "hevc": ffmpeg(folder / "clip.mov", *src, "testsrc=size=640x360:rate=25", "-t", "4", "-c:v", "libx265",
                       "-tag:v", "hvc1", "-x265-params", "log-level=error"),
        "landscape": ffmpeg(folder / "landscape.mp4", *src, "testsrc=size=640x360:rate=30", "-t", "3", "-c:v",
                            "libx264", "-g", "30"),
        "hour": ffmpeg(folder / "hour.mp4", *src, "color=c=gray:size=32x32:rate=1", "-t", "3700", "-c:v",
                       "libx264", "-g", "600"),
    }
    # A phone's portrait video: landscape frames plus a display matrix turning them a quarter.
    videos["rotated"] = ffmpeg(folder / "rotated.mov", "-i", str(videos["landscape"]), "-c", "copy",
                               "-metadata:s:v:0", "rotate=90")
    data = videos["phone"].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "empty.mp4").write_bytes(b"")
    videos["truncated"] = folder / "truncated.mp4"
    videos["empty"] = folder / "empty.mp4"
    return videos
