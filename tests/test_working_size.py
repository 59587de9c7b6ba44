"""Frames scaled at decode (WorkingSize) give a bit-identical vision input; index bombs and pixel caps.

The working-size scaling *is* the preprocessing's resize moved to decode time, so for every reader
(indexed MP4, OpenCV reader, GIF, still image as video), rotation, aspect ratio and budget, the encoder
input made from scaled frames must equal the one made from source-size frames byte for byte.
"""
from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import edgevid
from clips import write_clip, write_gif, write_image
from edgevid.errors import DecodeTimeoutError, PixelLimitError, UnreadableMediaError
from edgevid.media import SourcePolicy, WorkingSize, sample_video
from edgevid.media.video import _sample_opencv
from edgevid.model.preprocess import preprocess_video

SAMPLE = Path(edgevid.__file__).resolve().parent / "demo" / "sample.mp4"


def vision_of(video, budget: WorkingSize):
    return preprocess_video(video.frames, budget.max_soft_tokens, budget.patch_size, budget.pooling,
                            source_size=(video.height, video.width))


def assert_same_input(path, budget: WorkingSize, num_frames: int = 6, **kwargs):
    full = sample_video(path, num_frames, **kwargs)
    scaled = sample_video(path, num_frames, working_size=budget, **kwargs)
    a, b = vision_of(full, budget), vision_of(scaled, budget)
    assert np.array_equal(a.pixel_values, b.pixel_values) and np.array_equal(a.position_ids, b.position_ids)
    assert (scaled.width, scaled.height) == (full.width, full.height)
    assert np.array_equal(scaled.timestamps, full.timestamps) and np.array_equal(scaled.indices, full.indices)
    return full, scaled


@pytest.mark.parametrize("size, budget", [
    ((1280, 720), WorkingSize()),                  # 288x528: 66 soft tokens
    ((722, 1282), WorkingSize()),                  # portrait, not a multiple of 16
    ((1920, 200), WorkingSize()),                  # elongated
    ((640, 480), WorkingSize(max_soft_tokens=280)),
    ((160, 120), WorkingSize()),                   # smaller than its target: kept as decoded
])
def test_scaled_frames_give_the_identical_encoder_input(tmp_path, size, budget):
    clip = write_clip(tmp_path / "c.mp4", frames=20, size=size, texture=True)
    full, scaled = assert_same_input(clip, budget)
    if budget.shrinks(full.height, full.width):
        assert scaled.frames.shape[1:3] == budget.target(full.height, full.width)
        assert scaled.frames.nbytes < full.frames.nbytes
    else:
        assert np.array_equal(scaled.frames, full.frames)


def test_opencv_reader_rotation_gif_and_image_paths(tmp_path):
    budget = WorkingSize()
    rotated = write_clip(tmp_path / "r.mp4", frames=12, size=(640, 360), rotation=90, texture=True)
    full, _ = assert_same_input(rotated, budget)
    assert (full.width, full.height) == (360, 640)
    webm = write_clip(tmp_path / "w.webm", frames=12, size=(800, 450), texture=True)   # OpenCV reader path
    assert_same_input(webm, budget)
    assert_same_input(write_gif(tmp_path / "g.gif", frames=8, size=(600, 400)), budget)
    assert_same_input(write_image(tmp_path / "i.png", size=(900, 700)), budget, num_frames=1)
    from edgevid.media import open_source
    with open_source(str(webm)) as media:                # the reader below the index path, directly
        a = _sample_opencv(media, 6)
    assert a.frames.shape[1:3] == (450, 800)


def patched(tmp_path, box: bytes, offset: int, value: int, name: str) -> Path:
    data = bytearray(SAMPLE.read_bytes())
    struct.pack_into(">I", data, data.find(box) + offset, value)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("box, offset, value", [
    (b"stts", 12, 10**9), (b"stts", 12, 0xFFFFFFFF), (b"stts", 8, 0xFFFFFFFF), (b"stsz", 12, 0xFFFFFFFF),
    (b"stsc", 16, 0xFFFFFFFF), (b"stss", 8, 0xFFFFFFFF), (b"stco", 8, 0xFFFFFFFF)])
def test_index_bombs_are_refused_without_allocating(tmp_path, box, offset, value):
    path = patched(tmp_path, box, offset, value, "bomb.mp4")
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableMediaError, match="index"):
            sample_video(path, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak


def test_constant_size_stsz_bomb(tmp_path):
    path = patched(tmp_path, b"stsz", 8, 1, "c.mp4")
    data = bytearray(path.read_bytes())
    struct.pack_into(">I", data, data.find(b"stsz") + 12, 2 * 10**8)
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableMediaError, match="stsz claims"):
        sample_video(path, 4)


def test_the_demo_clip_itself_still_reads_through_its_index():
    video = sample_video(SAMPLE, 4)
    assert video.frames.shape[0] == 4


def test_pixel_cap_and_decode_deadline(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", frames=30, size=(640, 480))
    with pytest.raises(PixelLimitError, match="max-pixels"):
        sample_video(clip, 4, policy=SourcePolicy.permissive().with_(max_pixels=640 * 480 - 1))
    gif = write_gif(tmp_path / "g.gif", frames=5, size=(300, 200))
    with pytest.raises(PixelLimitError):
        sample_video(gif, 4, policy=SourcePolicy.permissive().with_(max_pixels=300 * 200 - 1))
    started = time.monotonic()
    with pytest.raises(DecodeTimeoutError):
        sample_video(write_gif(tmp_path / "long.gif", frames=400, size=(64, 48)), 32,
                     policy=SourcePolicy.permissive().with_(decode_timeout=1e-6))
    assert time.monotonic() - started < 10
