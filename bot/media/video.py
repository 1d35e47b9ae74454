"""Video: sampling frames the way InternVL expects, with decord.

Reference mode is the model card's rule (``get_index``: ``num_segments`` frames at the middle of
equal segments of the whole clip, one tile each, laid out as ``Frame1: <image>`` ...), decoded
with decord. Fast mode keeps every frame within half a segment of the reference index, distinct
and in order, but picks the cheapest frame to decode there: a keyframe when the segment has one,
else the first reference frame the window allows; it decodes with PyAV, skipping the frames no
other frame depends on while it runs up to the target, and shares the GOPs out between two cores.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bot.errors import InputError, UnreadableVideo, VideoTooLarge, VideoTooLong

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0


def reference_indices(frames: int, fps: float, num_segments: int) -> list[int]:
    """InternVL's ``get_index(bound=None, fps, max_frame=frames-1, first_idx=0, num_segments)``."""
    max_frame = frames - 1
    start_idx = max(0, round(-100000 * fps))
    end_idx = min(round(100000 * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


def fast_indices(frames: int, fps: float, num_segments: int, keyframes: Sequence[int]) -> list[int]:
    """Cheap-to-decode frames, each within half a segment of the reference index, distinct, in order."""
    reference = reference_indices(frames, fps, num_segments)
    seg = (frames - 1) / num_segments
    keys = sorted(set(keyframes))
    chosen: list[int] = []
    for ref in reference:
        low = max(0, math.ceil(ref - seg / 2), chosen[-1] + 1 if chosen else 0)
        high = min(frames - 1, math.floor(ref + seg / 2))
        if low > high:  # windows narrower than a frame: fall back to the reference frame itself
            pick = max(ref, chosen[-1] + 1 if chosen else 0)
        else:
            inside = [k for k in keys if low <= k <= high]
            pick = min(inside, key=lambda k: abs(k - ref)) if inside else low
        chosen.append(min(pick, frames - 1))
    return chosen


def probe(data: bytes) -> tuple[object, VideoInfo, np.ndarray]:
    """Open a video: its reader, its facts, and its first frame (decoded once, to learn its size)."""
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        count = len(reader)
        if count < 1:
            raise UnreadableVideo("no frames")
        first = reader.get_batch([0]).asnumpy()[0]
        height, width = first.shape[:2]
        return reader, VideoInfo(count, float(reader.get_avg_fps() or 0.0), int(width), int(height)), first
    except InputError:
        raise
    except Exception as exc:  # decord raises RuntimeError / DECORDError for broken files
        raise UnreadableVideo(str(exc).splitlines()[0][:200]) from None


def sample_frames(data: bytes, *, num_segments: int = 8, fast: bool = False, max_seconds: float = 600,
                  max_pixels: int = 8_300_000, name: str = "",
                  progress: Progress | None = None) -> tuple[list[np.ndarray], VideoInfo, list[int]]:
    """Frames (H x W x 3 uint8, rotation applied) of a video file, and which ones were taken."""
    try:
        reader, info, first = probe(data)
    except UnreadableVideo as exc:
        raise UnreadableVideo(str(exc), name=name) from None
    if info.seconds > max_seconds:
        raise VideoTooLong(name=name, minutes=round(info.seconds / 60, 1), limit=round(max_seconds / 60, 1))
    if info.width * info.height > max_pixels:
        raise VideoTooLarge(name=name, width=info.width, height=info.height)
    count = min(num_segments, info.frames)
    try:
        if not fast:
            indices = reference_indices(info.frames, info.fps, count)
            frames = list(reader.get_batch(indices).asnumpy())  # type: ignore[attr-defined]
            if progress:
                progress(len(frames), len(frames))
        else:
            keys = list(reader.get_key_indices())  # type: ignore[attr-defined]
            indices = fast_indices(info.frames, info.fps, count, keys)
            frames = _read_parallel(data, reader, first, indices, keys, progress)
    except InputError:
        raise
    except Exception as exc:
        raise UnreadableVideo(str(exc).splitlines()[0][:200], name=name) from None
    return frames, info, indices


def _probe_av(data: bytes) -> tuple[VideoInfo, list[int]]:
    """Frame count, rate, size and keyframe indices from the container, without decoding a frame."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None and p.size]
    order = sorted(range(len(packets)), key=lambda i: packets[i][0])
    keys = [rank for rank, i in enumerate(order) if packets[i][1]]
    return VideoInfo(len(packets), rate, int(width), int(height)), keys


def sample_frames_fast(data: bytes, *, num_segments: int = 8, max_seconds: float = 600,
                       max_pixels: int = 8_300_000, name: str = "",
                       progress: Progress | None = None) -> tuple[list[np.ndarray], VideoInfo, list[int]]:
    """Fast mode with PyAV (see the module docstring); decord's fast path when PyAV is missing."""
    try:
        import av  # noqa: F401
    except ImportError:
        return sample_frames(data, num_segments=num_segments, fast=True, max_seconds=max_seconds,
                             max_pixels=max_pixels, name=name, progress=progress)
    try:
        info, keys = _probe_av(data)
    except Exception as exc:
        raise UnreadableVideo(str(exc).splitlines()[0][:200], name=name) from None
    if info.frames < 1 or info.fps <= 0:
        raise UnreadableVideo("no frames", name=name)
    if info.seconds > max_seconds:
        raise VideoTooLong(name=name, minutes=round(info.seconds / 60, 1), limit=round(max_seconds / 60, 1))
    if info.width * info.height > max_pixels:
        raise VideoTooLarge(name=name, width=info.width, height=info.height)
    count = min(num_segments, info.frames)
    picks = fast_indices(info.frames, info.fps, count, keys)
    seg = (info.frames - 1) / count
    highs = [min(info.frames - 1, math.floor(r + seg / 2)) for r in reference_indices(info.frames, info.fps, count)]
    windows = {low: high for low, high in zip(picks, highs, strict=True)}
    bins = _share_gops(picks, keys)
    done = [0]

    def run(group: list[int]) -> list[tuple[int, np.ndarray]]:
        out = _grab_av(data, [(low, max(low, windows[low])) for low in sorted(group)])
        done[0] += len(out)
        if progress:
            progress(done[0], count)
        return out

    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="video") as pool:
            found = sorted(x for part in pool.map(run, [b for b in bins if b]) for x in part)
    except InputError:
        raise
    except Exception as exc:
        raise UnreadableVideo(str(exc).splitlines()[0][:200], name=name) from None
    if len(found) != count:
        raise UnreadableVideo(f"decoded {len(found)} of {count} frames", name=name)
    turns = rotation_turns(data)
    frames = [np.ascontiguousarray(np.rot90(f, turns)) if turns else f for _, f in found]
    if turns % 2:
        info = VideoInfo(info.frames, info.fps, info.height, info.width)
    return frames, info, [index for index, _ in found]


def rotation_turns(data: bytes) -> int:
    """Quarter turns counter-clockwise (``np.rot90``'s k) that the MP4/MOV track matrix asks for.

    Phones store portrait video as landscape frames plus this matrix. decord applies it; PyAV does
    not, so the fast path turns its frames with this. Other containers report 0.
    """
    import struct

    at = data.find(b"tkhd")
    while at >= 4:
        size = struct.unpack(">I", data[at - 4:at])[0]
        version = data[at + 4] if at + 4 < len(data) else 0
        offset = at + 8 + (32 if version == 1 else 20) + 16
        if size in (92, 104) and offset + 44 <= len(data):
            a, b = struct.unpack(">ii", data[offset:offset + 8])
            width, height = struct.unpack(">II", data[offset + 36:offset + 44])
            if width and height and (a or b):  # the video track: audio tracks have no size
                return round(-math.degrees(math.atan2(b, a)) / 90) % 4
        at = data.find(b"tkhd", at + 4)
    return 0


def _grab_av(data: bytes, windows: Sequence[tuple[int, int]]) -> list[tuple[int, np.ndarray]]:
    """For each (low, high) window, the first frame at or after ``low``: seek to the keyframe before
    it and run up skipping non-reference frames; a window with no reference frame is decoded fully."""
    import av

    out: list[tuple[int, np.ndarray]] = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        base, rate = stream.time_base, stream.average_rate
        start = stream.start_time or 0
        for low, high in windows:
            for skip in ("NONREF", "DEFAULT"):
                container.seek(start + int(low / rate / base), stream=stream, backward=True, any_frame=False)
                stream.codec_context.skip_frame = skip
                taken = None
                for frame in container.decode(stream):
                    index = round(float((frame.pts - start) * base * rate))
                    if index >= low:
                        if index <= high:
                            taken = (index, frame.to_ndarray(format="rgb24"))
                        break
                if taken is not None:
                    out.append(taken)
                    break
    return out


def _gop_groups(indices: Sequence[int], keys: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Indices grouped by the keyframe they decode from, with the frames each group decodes."""
    keys = sorted(keys) or [0]
    groups: dict[int, list[int]] = {}
    for index in indices:
        key = max((k for k in keys if k <= index), default=0)
        groups.setdefault(key, []).append(index)
    return [(max(members) - key + 1, members) for key, members in groups.items()]


def _share_gops(indices: Sequence[int], keys: Sequence[int]) -> list[list[int]]:
    """Split the frames between two decoders by GOP, the largest decoding jobs first, evening the load."""
    bins: list[list[int]] = [[], []]
    loads = [0, 0]
    for cost, members in sorted(_gop_groups(indices, keys), key=lambda g: -g[0]):
        target = 0 if loads[0] <= loads[1] else 1
        bins[target].extend(members)
        loads[target] += cost
    return bins


def _read_parallel(data: bytes, reader: object, first: np.ndarray, indices: Sequence[int], keys: Sequence[int],
                   progress: Progress | None) -> list[np.ndarray]:
    """Decode the chosen frames on two cores: GOPs are shared out so both do the same decoding work."""
    import decord

    bins = _share_gops(indices, keys)
    frames: dict[int, np.ndarray] = {}
    if 0 in indices:
        frames[0] = first  # decoded already by the probe
    done = [len(frames)]

    def run(job: tuple[object | None, list[int]]) -> None:
        own, group = job
        todo = sorted(i for i in group if i not in frames)
        if not todo:
            return
        use = own or decord.VideoReader(io.BytesIO(data), num_threads=1)
        for index, frame in zip(todo, use.get_batch(todo).asnumpy(), strict=True):  # type: ignore[attr-defined]
            frames[index] = frame
            done[0] += 1
            if progress:
                progress(done[0], len(indices))

    jobs = [(reader, bins[0]), (None, bins[1])]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="video") as pool:
        list(pool.map(run, jobs))
    return [frames[i] for i in indices]

