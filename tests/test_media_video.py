"""sample_video on real clips: the RIGHT frames (frame ids + times checked against PyAV), every container,
VFR, rotation, short/one-frame clips, lying frame counts, broken inputs, GIF, stills, fast mode."""
from __future__ import annotations

import logging

import av
import numpy as np
import pytest
from clips import (frame_id, probe_frames, truncate, write_audio_only, write_clip, write_gif, write_image)

from edgevid.errors import (EmptyMediaError, InvalidRequestError, NoVideoStreamError, UnreadableMediaError,
                            UnsupportedMediaError)
from edgevid.media import load_image, sample_indices, sample_video


def expected_indices(total: int, n: int) -> list[int]:
    return [i * total // n for i in range(n)] if total > n else list(range(total))


def assert_right_frames(video, path, total: int, n: int = 32):
    """Indices are floor(i*total/n); the frames shown and their times are those PyAV decodes there."""
    reference = probe_frames(path)
    assert len(reference) == total
    assert video.frame_count == total
    assert list(video.indices) == expected_indices(total, n)
    assert [frame_id(f) for f in video.frames] == [reference[i][0] for i in video.indices]
    np.testing.assert_allclose(video.timestamps, [reference[i][1] for i in video.indices], atol=2e-3)


def test_sample_indices_match_transformers_formula():
    assert list(sample_indices(100, 32)) == list(np.arange(32) * 100 // 32)
    assert list(sample_indices(20, 32)) == list(range(20))
    assert list(sample_indices(64, 32)) == list(range(0, 64, 2))
    assert list(sample_indices(1, 32)) == [0]


@pytest.mark.parametrize("name, codec", [
    ("h264.mp4", "libx264"), ("vp9.webm", "libvpx-vp9"), ("h264.mov", "libx264"), ("h264.mkv", "libx264"),
    ("mjpeg.avi", "mjpeg"), ("mpeg2.mpg", "mpeg2video"),
])
def test_containers(tmp_path, name, codec):
    path = write_clip(tmp_path / name, frames=75, fps=25, codec=codec)
    video = sample_video(str(path))
    assert_right_frames(video, path, 75)
    assert video.frames.shape == (32, 120, 160, 3) and video.frames.dtype == np.uint8
    assert (video.width, video.height) == (160, 120)
    assert video.fps == pytest.approx(25.0)
    assert video.duration == pytest.approx(3.0, abs=0.05)


def test_colours_are_rgb(tmp_path):
    path = write_clip(tmp_path / "c.mp4", frames=3)
    frame = sample_video(path).frames[0]
    assert frame[..., 2].mean() > frame[..., 0].mean() + 20       # the fixture tints blue, not red


def test_vfr_timestamps_are_container_times(tmp_path):
    rng = np.random.default_rng(3)
    pts = np.round(np.cumsum(rng.choice([0.01, 0.04, 0.2, 0.5], size=90)), 3).tolist()
    path = write_clip(tmp_path / "vfr.mp4", pts=pts)
    video = sample_video(path, num_frames=16)
    assert_right_frames(video, path, 90, 16)
    np.testing.assert_allclose(video.timestamps, [pts[i] - pts[0] for i in video.indices], atol=2e-3)


def test_vfr_clip_long_enough_to_tempt_seeking(tmp_path, caplog):
    pts = [i / 25 + (0.6 if i >= 150 else 0.0) for i in range(400)]      # a 0.6 s gap half-way
    path = write_clip(tmp_path / "gap.mkv", pts=pts, gop=50)
    with caplog.at_level(logging.INFO, logger="edgevid.media.video"):
        video = sample_video(path, num_frames=8)
    assert_right_frames(video, path, 400, 8)
    assert "variable frame rate" in caplog.text


def test_long_clip_seeks_and_stays_exact(tmp_path, caplog):
    """The OpenCV reader (no MP4 index here): seeks across long gaps, verified, still exact."""
    path = write_clip(tmp_path / "long.mkv", frames=1200, fps=30, gop=30)
    with caplog.at_level(logging.DEBUG, logger="edgevid.media.video"):
        video = sample_video(path, num_frames=8)
    assert_right_frames(video, path, 1200, 8)
    seeks = int(caplog.text.split(" seeks")[0].rsplit(" ", 1)[-1])
    grabs = int(caplog.text.split(" grabs")[0].rsplit(" ", 1)[-1])
    assert seeks > 0 and grabs < 600                      # it did not decode the whole clip


@pytest.mark.parametrize("rotation, k", [(90, 3), (180, 2), (270, 1)])
def test_rotation_metadata_is_applied(tmp_path, rotation, k):
    path = write_clip(tmp_path / f"r{rotation}.mp4", frames=40, rotation=rotation)
    with av.open(str(path)) as container:                 # the metadata is really in the file
        assert next(container.decode(video=0)).rotation % 360 == rotation
    video = sample_video(path, num_frames=8)
    size = (120, 160) if rotation in (90, 270) else (160, 120)
    assert (video.width, video.height) == size and video.frames.shape[1:3] == (size[1], size[0])
    assert [frame_id(np.rot90(f, k)) for f in video.frames] == expected_indices(40, 8)


def test_short_and_single_frame_clips(tmp_path):
    short = write_clip(tmp_path / "short.mp4", frames=10)
    assert_right_frames(sample_video(short), short, 10)
    one = write_clip(tmp_path / "one.mp4", frames=1)
    video = sample_video(one)
    assert list(video.indices) == [0] and frame_id(video.frames[0]) == 0 and video.frame_count == 1


@pytest.mark.parametrize("name, faststart", [("cut.mp4", True), ("cut.mkv", False)])
def test_truncated_file_is_resampled_on_its_true_count(tmp_path, name, faststart, caplog):
    path = truncate(write_clip(tmp_path / name, frames=300, faststart=faststart), 0.5)
    true_total = len(probe_frames(path))
    assert 32 < true_total < 300
    with caplog.at_level(logging.WARNING, logger="edgevid.media.video"):
        video = sample_video(path)
    assert "claims 300 frames" in caplog.text
    assert_right_frames(video, path, true_total)
    assert video.indices[-1] > 32                          # never just "the first 32 frames"


def test_count_too_low_in_header_is_corrected(tmp_path):
    path = write_clip(tmp_path / "ps.mpg", frames=60)       # MPEG-PS: count estimated from the header
    assert_right_frames(sample_video(path), path, 60)


def test_broken_inputs(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(EmptyMediaError):
        sample_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("just some text that is named like a video\n" * 4)
    with pytest.raises(UnsupportedMediaError, match="text"):
        sample_video(tmp_path / "text.mp4")
    with pytest.raises(NoVideoStreamError, match="audio"):
        sample_video(write_audio_only(tmp_path / "sound.mp4"))
    garbage = bytearray(write_clip(tmp_path / "g.mp4", frames=5).read_bytes())
    garbage[4:8] = b"ftyp"
    garbage[8:] = bytes(len(garbage) - 8)
    (tmp_path / "garbage.mp4").write_bytes(bytes(garbage))
    with pytest.raises(UnreadableMediaError):
        sample_video(tmp_path / "garbage.mp4")
    not_faststart = truncate(write_clip(tmp_path / "cut.mp4", frames=50), 0.5)     # index lost
    with pytest.raises(UnreadableMediaError):
        sample_video(not_faststart)
    with pytest.raises(InvalidRequestError):
        sample_video(not_faststart, num_frames=0)
    with pytest.raises(InvalidRequestError):
        sample_video(not_faststart, mode="quick")


def test_gif_frames_and_durations(tmp_path):
    durations = [100, 200, 50, 70, 300] * 4
    path = write_gif(tmp_path / "a.gif", frames=20, durations_ms=durations)
    video = sample_video(path, num_frames=8)
    starts = np.concatenate([[0], np.cumsum(durations)]) / 1000
    assert list(video.indices) == expected_indices(20, 8)
    assert [frame_id(f) for f in video.frames] == list(video.indices)
    np.testing.assert_allclose(video.timestamps, starts[video.indices])
    assert video.duration == pytest.approx(starts[-1]) and video.frame_count == 20


def test_gif_is_not_decoded_by_opencv(tmp_path, monkeypatch):
    import cv2
    monkeypatch.setattr(cv2, "VideoCapture", None)
    video = sample_video(write_gif(tmp_path / "b.gif", frames=3), num_frames=32)
    assert [frame_id(f) for f in video.frames] == [0, 1, 2]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_load_image(tmp_path, suffix):
    image = load_image(write_image(tmp_path / f"a{suffix}", index=777, size=(96, 64)))
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8 and frame_id(image) == 777


def test_load_image_honours_exif_orientation(tmp_path):
    path = write_image(tmp_path / "phone.jpg", index=4660, size=(160, 120), exif_orientation=6)
    image = load_image(path)
    assert image.shape == (160, 120, 3)                          # turned upright (90 degrees)
    assert frame_id(np.rot90(image, 1)) == 4660
    gif = load_image(write_gif(tmp_path / "c.gif", frames=4))
    assert frame_id(gif) == 0
    with pytest.raises(UnsupportedMediaError):
        load_image(write_clip(tmp_path / "v.mp4", frames=2))


def test_still_image_as_video(tmp_path):
    video = sample_video(write_image(tmp_path / "s.png", index=9))
    assert video.frame_count == 1 and frame_id(video.frames[0]) == 9


# ---- fast mode ----------------------------------------------------------------------------------------
def keyframes_of(path) -> list[int]:
    with av.open(str(path)) as container:
        return [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]


@pytest.mark.parametrize("options", [None, {"preset": "fast", "bf": "3"}])
def test_fast_mode_snaps_to_preceding_keyframes(tmp_path, options):
    path = write_clip(tmp_path / "k.mp4", frames=240, fps=24, gop=24, options=options)
    keys = keyframes_of(path)
    reference = probe_frames(path)
    video = sample_video(path, num_frames=16, mode="fast")
    wanted = sorted({max(k for k in keys if k <= t) for t in expected_indices(240, 16)})
    assert list(video.indices) == wanted
    assert [frame_id(f) for f in video.frames] == wanted
    np.testing.assert_allclose(video.timestamps, [reference[i][1] for i in wanted], atol=2e-3)
    assert video.frame_count == 240 and video.fps == pytest.approx(24.0)


def test_fast_mode_on_a_short_clip_gives_every_frame(tmp_path):
    path = write_clip(tmp_path / "short.mp4", frames=20, gop=10)
    assert_right_frames(sample_video(path, mode="fast"), path, 20)


def test_fast_mode_rotation_matches_accurate(tmp_path):
    path = write_clip(tmp_path / "rk.mp4", frames=100, gop=10, rotation=90)
    fast, accurate = sample_video(path, 8, mode="fast"), sample_video(path, 100)
    assert fast.frames.shape[1:] == accurate.frames.shape[1:]
    for index, frame in zip(fast.indices, fast.frames):
        assert np.array_equal(frame, accurate.frames[index])


def test_fast_mode_falls_back_to_accurate(tmp_path, caplog):
    webm = write_clip(tmp_path / "w.webm", frames=100, gop=10)
    with caplog.at_level(logging.INFO, logger="edgevid.media.indexed"):
        video = sample_video(webm, 8, mode="fast")
    assert "reading through OpenCV" in caplog.text
    assert_right_frames(video, webm, 100, 8)
    cut = truncate(write_clip(tmp_path / "c.mp4", frames=300, gop=30, faststart=True), 0.5)
    assert_right_frames(sample_video(cut, 8, mode="fast"), cut, len(probe_frames(cut)), 8)


def test_times_when_opencv_loses_the_start_time(tmp_path):
    """H.264 in Matroska at 1 fps: packets without DTS make OpenCV's POS_MSEC run backwards."""
    path = write_clip(tmp_path / "slow.mkv", frames=90, fps=1)
    assert_right_frames(sample_video(path, num_frames=8), path, 90, 8)


# ---- the MP4 index path ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [None, {"preset": "fast", "bf": "3"}])
def test_index_path_equals_opencv_reader(tmp_path, options):
    """Same pixels, indices and times as OpenCV's own reader on the same file, B-frames included."""
    from edgevid.media import open_source
    from edgevid.media.video import _sample_opencv

    path = write_clip(tmp_path / "ix.mp4", frames=300, fps=30, gop=45, options=options)
    indexed = sample_video(path, num_frames=12)
    with open_source(path) as media:
        reader = _sample_opencv(media, 12)
    assert list(indexed.indices) == list(reader.indices) == expected_indices(300, 12)
    assert np.array_equal(indexed.frames, reader.frames)
    np.testing.assert_allclose(indexed.timestamps, reader.timestamps, atol=1e-3)
    assert_right_frames(indexed, path, 300, 12)


def test_index_plan_decodes_only_from_the_previous_keyframe(tmp_path):
    from edgevid.media import mp4
    from edgevid.media.indexed import plan

    path = write_clip(tmp_path / "plan.mp4", frames=900, fps=30, gop=100)
    index = mp4.video_index(str(path))
    targets = np.array(expected_indices(900, 8))              # 0, 112, 225, ... 787
    segments = plan(index, targets)
    decoded = sum(s.last - s.first + 1 for s in segments)
    floor = sum(t - (t // 100) * 100 + 1 for t in targets)    # PyAV: keyframe before each target, forward
    assert decoded == floor
    assert all(s.first % 100 == 0 for s in segments)


def test_vfr_mp4_through_the_index(tmp_path):
    pts = [round(i * 0.04 + (0.5 if i > 120 else 0) + (0.013 if i % 7 == 0 else 0), 3) for i in range(300)]
    path = write_clip(tmp_path / "vfr_ix.mp4", pts=pts, gop=40)
    video = sample_video(path, num_frames=10)
    assert_right_frames(video, path, 300, 10)


X265 = "keyint=24:min-keyint=24:scenecut=0:log-level=error"


@pytest.mark.parametrize("name, codec, params, through_index", [
    ("hevc_closed.mp4", "libx265", X265 + ":open-gop=0", True),
    ("hevc_open.mp4", "libx265", X265, False),                                     # CRA keyframes
    ("h264_open.mp4", "libx264", "keyint=24:min-keyint=24:scenecut=0:open-gop=1:bframes=3:b-adapt=0", False),
])
def test_hevc_and_open_gop(tmp_path, caplog, name, codec, params, through_index):
    option = "x265-params" if codec == "libx265" else "x264-params"
    path = write_clip(tmp_path / name, frames=240, gop=24, codec=codec,
                      options={"preset": "ultrafast" if codec == "libx265" else "fast", option: params})
    with caplog.at_level(logging.INFO, logger="edgevid.media.indexed"):
        accurate = sample_video(path, num_frames=8)
        fast = sample_video(path, num_frames=8, mode="fast")
    assert_right_frames(accurate, path, 240, 8)
    assert ("reading through OpenCV" not in caplog.text) == through_index
    if through_index:
        assert list(fast.indices) == [t // 24 * 24 for t in expected_indices(240, 8)]
        assert [frame_id(f) for f in fast.frames] == list(fast.indices)
    else:                                                     # open GOP: fast mode is accurate
        assert_right_frames(fast, path, 240, 8)
