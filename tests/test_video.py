from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest

from bot.errors import UnreadableVideo, VideoTooLong
from bot.media.video import fast_indices, reference_indices, sample_frames, sample_frames_fast
from tests import reference_internvl as ref


def test_reference_indices_equal_get_index() -> None:
    rng = random.Random(1)
    for _ in range(500):
        frames, fps, n = rng.randint(1, 20000), rng.choice([23.976, 25.0, 29.97, 30.0, 60.0]), rng.randint(1, 32)
        expected = ref.get_index(None, fps, frames - 1, first_idx=0, num_segments=n).tolist()
        assert reference_indices(frames, fps, n) == expected


def test_fast_indices_are_distinct_ordered_and_within_half_a_segment() -> None:
    rng = random.Random(2)
    for _ in range(500):
        frames = rng.randint(16, 20000)
        n = rng.randint(1, min(16, frames))
        gop = rng.choice([1, 12, 30, 60, 250, 1000])
        keys = list(range(0, frames, gop))
        picks = fast_indices(frames, 30.0, n, keys)
        reference = reference_indices(frames, 30.0, n)
        seg = (frames - 1) / n
        assert picks == sorted(set(picks))
        assert all(abs(p - r) <= seg / 2 + 1e-9 for p, r in zip(picks, reference, strict=True))


def test_reference_mode_returns_exactly_the_reference_frames(videos: dict[str, Path]) -> None:
    import decord

    data = videos["long_gop"].read_bytes()
    frames, info, indices = sample_frames(data, num_segments=8)
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    expected_idx = ref.get_index(None, reader.get_avg_fps(), len(reader) - 1, first_idx=0, num_segments=8)
    assert indices == expected_idx.tolist()
    expected = reader.get_batch(list(expected_idx)).asnumpy()
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
    assert (info.frames, info.width, info.height) == (900, 1280, 720)


@pytest.mark.parametrize("clip", ["long_gop", "phone", "webm", "hevc"])
def test_fast_mode_frames_are_close_distinct_and_in_order(videos: dict[str, Path], clip: str) -> None:
    data = videos[clip].read_bytes()
    fast, info, picks = sample_frames_fast(data, num_segments=8)
    _, _, reference = sample_frames(data, num_segments=8)
    seg = (info.frames - 1) / 8
    assert len(fast) == 8
    assert picks == sorted(set(picks))
    assert all(abs(p - r) <= seg / 2 for p, r in zip(picks, reference, strict=True))
    assert all(f.shape == (info.height, info.width, 3) and f.dtype == np.uint8 for f in fast)


def test_progress_is_reported(videos: dict[str, Path]) -> None:
    seen: list[tuple[int, int]] = []
    sample_frames_fast(videos["phone"].read_bytes(), num_segments=8, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (8, 8)


@pytest.mark.parametrize("clip", ["truncated", "empty"])
def test_broken_videos_are_unreadable(videos: dict[str, Path], clip: str) -> None:
    data = videos[clip].read_bytes()
    for sampler in (sample_frames, sample_frames_fast):
        with pytest.raises(UnreadableVideo) as err:
            sampler(data, num_segments=8, name=f"{clip}.mp4")
        assert err.value.params["name"] == f"{clip}.mp4"


def test_hour_long_video_is_refused_before_decoding(videos: dict[str, Path]) -> None:
    for sampler in (sample_frames, sample_frames_fast):
        with pytest.raises(VideoTooLong) as err:
            sampler(videos["hour"].read_bytes(), max_seconds=600, name="hour.mp4")
        assert err.value.params["minutes"] > 60


def test_rotated_phone_video_is_turned_upright_in_both_modes(videos: dict[str, Path]) -> None:
    data = videos["rotated"].read_bytes()
    frames, info, indices = sample_frames(data, num_segments=4)
    assert frames[0].shape[:2] == (640, 360)  # portrait, as a phone shows it
    fast, fast_info, fast_indices_ = sample_frames_fast(data, num_segments=4)
    assert fast[0].shape[:2] == (640, 360)
    assert (fast_info.width, fast_info.height) == (info.width, info.height) == (360, 640)
    import decord

    # decord turns frames by the matrix itself: the fast path's frames match its frames.
    upright = decord.VideoReader(io.BytesIO(data), num_threads=1).get_batch(fast_indices_).asnumpy()
    assert len(indices) == 4
    for ours, theirs in zip(fast, upright, strict=True):
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 3
