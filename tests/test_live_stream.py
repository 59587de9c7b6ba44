"""The stream reader against a real MJPEG-over-HTTP camera on loopback (OpenCV's bundled FFmpeg)."""
from __future__ import annotations

import time
from datetime import datetime

import cv2
import pytest

from edgevid.errors import MediaNotFoundError, StreamUnavailableError
from edgevid.live import (FrameRing, ReaderOptions, StreamReader, WatchLoop, WatchOptions, parse_source,
                          start_reader)
from live_fixtures import join_readers  # noqa: F401 - autouse
from clips import frame_id, write_clip
from mjpeg_server import MJPEGServer

FAST = dict(open_timeout=1.0, stall_timeout=0.8, backoff_initial=0.1, backoff_max=0.4)


def wait_for(predicate, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


@pytest.fixture
def camera():
    with MJPEGServer(fps=20) as cam:
        yield cam


def test_opencv_reads_the_loopback_mjpeg_stream(camera):
    capture = cv2.VideoCapture(camera.url, cv2.CAP_FFMPEG)
    try:
        assert capture.isOpened()
        ids = []
        for _ in range(5):
            ok, bgr = capture.read()
            assert ok and bgr.shape == (120, 160, 3)
            ids.append(frame_id(bgr))
        assert ids == sorted(ids) and len(set(ids)) == 5      # live frames, in order, each new
    finally:
        capture.release()


def test_parse_source_kinds(tmp_path):
    assert parse_source("0").kind == "camera" and parse_source("0").target == 0
    assert parse_source("rtsp://cam.local/live").kind == "stream"
    assert parse_source("https://example.com/live.m3u8").kind == "stream"
    clip = write_clip(tmp_path / "a.mp4", frames=4)
    assert parse_source(str(clip)).kind == "file" and parse_source(str(clip)).paced
    assert parse_source(clip.as_uri()).target == str(clip)
    with pytest.raises(MediaNotFoundError, match="nope.mp4"):
        parse_source(str(tmp_path / "nope.mp4"))


def test_reader_keeps_a_decimated_bounded_ring_with_capture_times(camera):
    ring = FrameRing(max_age=1.0, max_frames=50)
    reader = StreamReader(parse_source(camera.url), ring, ReaderOptions(fps=5, **FAST))
    reader.start()
    try:
        assert wait_for(lambda: ring.pushed >= 8)
        frames = ring.window(float("-inf"), float("inf"))
        gaps = [b.t - a.t for a, b in zip(frames, frames[1:])]
        assert all(0.1 < g < 0.45 for g in gaps), gaps          # ~5 of the 20 fps kept
        assert [frame_id(f.rgb) for f in frames] == sorted(frame_id(f.rgb) for f in frames)
        assert abs(frames[-1].t - time.monotonic()) < 0.5        # stamped when captured
        time.sleep(1.5)
        assert frames[-1].t - ring.window(float("-inf"), float("inf"))[0].t <= 1.0 + 1e-6
        assert len(ring) <= 7                                   # 1 s at 5 fps (+ edge)
    finally:
        reader.stop()
        reader.join(5)
    assert reader.drain_events()[0].kind == "connected"


def test_stream_that_drops_and_comes_back_is_reopened_and_the_gap_reported(camera):
    ring = FrameRing(max_age=5.0, max_frames=100)
    reader = StreamReader(parse_source(camera.url), ring, ReaderOptions(fps=10, **FAST))
    reader.start()
    try:
        assert wait_for(lambda: ring.pushed >= 3)
        camera.drop()
        dropped = time.monotonic()
        assert wait_for(lambda: any(e.kind == "stream_lost" for e in list(reader._events)), 5)
        time.sleep(1.0)
        camera.restore()
        assert wait_for(lambda: any(e.kind == "reconnected" for e in list(reader._events)), 10)
        after = ring.pushed
        assert wait_for(lambda: ring.pushed > after + 3)         # frames flow again
    finally:
        reader.stop()
        reader.join(5)
    events = reader.drain_events()
    kinds = [e.kind for e in events if e.kind != "open_failed"]      # attempts while the camera was away
    assert kinds[:3] == ["connected", "stream_lost", "reconnected"]
    assert all("closed connection" in e.detail["reason"] for e in events if e.kind == "open_failed")
    (gap,) = reader.gaps_between(float("-inf"), float("inf"))
    assert 1.0 <= gap.seconds < 6.0 and gap.start <= dropped + 0.2
    assert camera.connections >= 2


def test_stalled_stream_counts_as_lost_after_the_stall_timeout(camera):
    ring = FrameRing(max_age=5.0, max_frames=100)
    reader = StreamReader(parse_source(camera.url), ring, ReaderOptions(fps=10, **FAST))
    reader.start()
    try:
        assert wait_for(lambda: ring.pushed >= 3)
        camera.stall()
        stalled = time.monotonic()
        assert wait_for(lambda: any(e.kind == "stream_lost" for e in list(reader._events)), 6)
        assert time.monotonic() - stalled >= FAST["stall_timeout"] * 0.8
        camera.restore()
        assert wait_for(lambda: any(e.kind == "reconnected" for e in list(reader._events)), 10)
    finally:
        reader.stop()
        reader.join(5)


def test_watch_windows_come_on_time_with_the_requested_frames(camera):
    options = WatchOptions(every=0.6, window=1.2, num_frames=6, max_windows=5)
    reader, ring = start_reader(camera.url, options, ReaderOptions(**FAST))
    records, seen = [], []

    def ask(video):
        seen.append(video)
        return f"frames {[frame_id(f) for f in video.frames]}"

    summary = WatchLoop(reader, ring, ask=ask, emit=records.append, options=options).run()
    assert summary.windows == 5 and summary.reason == "max_windows"
    windows = [r for r in records if "window" in r]
    assert [r["event"] for r in records if "event" in r] == ["connected", "stopped"]
    end_times = [datetime.fromisoformat(r["window_end"]).timestamp() for r in windows]
    intervals = [b - a for a, b in zip(end_times, end_times[1:])]
    assert all(abs(i - 0.6) < 0.15 for i in intervals), intervals
    for record, video in zip(windows[2:], seen[2:]):          # full windows once 1.2 s have passed
        span = datetime.fromisoformat(record["window_end"]).timestamp() - \
            datetime.fromisoformat(record["window_start"]).timestamp()
        assert abs(span - 1.2) < 0.01
        assert record["frames"] == 6 == len(video.frames)
        assert 0 <= video.timestamps[0] and video.timestamps[-1] <= 1.2 + 1e-6
        assert list(video.timestamps) == sorted(video.timestamps)
        ids = [frame_id(f) for f in video.frames]
        assert ids == sorted(ids) and len(set(ids)) == 6


def test_watch_reports_the_gap_when_the_stream_drops(camera):
    options = WatchOptions(every=0.5, window=2.0, num_frames=4)
    reader, ring = start_reader(camera.url, options, ReaderOptions(**FAST))
    records = []

    def closed(record):
        return [g for g in record.get("gaps", ()) if not g["ongoing"]]

    def emit(record):
        records.append(record)
        windows = [r for r in records if "window" in r]
        if len(windows) == 2 and not camera._down.is_set() and camera.connections == 1:
            camera.drop()
        if any(r.get("event") == "stream_lost" for r in records) and camera._down.is_set():
            time.sleep(0.6)
            camera.restore()
        if any(closed(r) for r in windows):
            loop.stop.set()

    loop = WatchLoop(reader, ring, ask=lambda v: "ok", emit=emit, options=options)
    summary = loop.run()
    kinds = [r.get("event") for r in records if r.get("event") not in (None, "open_failed", "windows_skipped")]
    assert kinds[:3] == ["connected", "stream_lost", "reconnected"] and kinds[-1] == "stopped"
    reconnected = next(r for r in records if r.get("event") == "reconnected")
    assert reconnected["gap_s"] >= 0.5 and reconnected["gap_start"] < reconnected["gap_end"]
    gap_window = next(r for r in records if "window" in r and closed(r))
    assert closed(gap_window)[0]["seconds"] == reconnected["gap_s"] and closed(gap_window)[0]["outage"]
    lost_at = next(r["time"] for r in records if r.get("event") == "stream_lost")
    during = [r for r in records if "window" in r and reconnected["gap_start"] < r["window_end"] < lost_at]
    assert all(r["gaps"] and r["gaps"][-1]["ongoing"] and r["in_outage"] for r in during)
    assert summary.reason == "stopped"


def test_a_stream_that_never_answers_is_a_typed_error():
    with MJPEGServer() as cam:
        cam.drop()
        options = WatchOptions(every=0.5, window=1.0, connect_timeout=1.5)
        reader, ring = start_reader(cam.url, options, ReaderOptions(**FAST))
        started = time.monotonic()
        with pytest.raises(StreamUnavailableError, match="127.0.0.1"):
            WatchLoop(reader, ring, ask=lambda v: "", emit=lambda r: None, options=options).run()
        assert time.monotonic() - started < 6


def test_a_live_hls_stream_is_watched_like_any_other():
    from hls_server import HLSServer

    with HLSServer(fps=10) as hls:
        options = WatchOptions(every=1.0, window=3.0, num_frames=4, max_windows=3)
        reader, ring = start_reader(hls.url, options, ReaderOptions(open_timeout=5, stall_timeout=5))
        seen = []
        summary = WatchLoop(reader, ring, ask=lambda v: seen.append([frame_id(f) for f in v.frames]) or "ok",
                            emit=lambda r: None, options=options).run()
    assert summary.windows == 3
    flat = [i for window in seen for i in window]
    assert all(window == sorted(window) for window in seen) and flat[-1] > flat[0]   # a live, advancing stream
    assert max(flat) >= 30                                      # segments beyond the first playlist arrived


def test_a_wrong_http_path_is_reported_as_a_404():
    with MJPEGServer() as cam:
        options = WatchOptions(every=0.5, window=1.0, connect_timeout=10)
        reader, ring = start_reader(cam.url.replace("stream.mjpg", "nope.mjpg"), options, ReaderOptions(**FAST))
        started = time.monotonic()
        with pytest.raises(StreamUnavailableError, match=r"HTTP GET answered 404 .*no stream at path '/nope.mjpg'"):
            WatchLoop(reader, ring, ask=lambda v: "", emit=lambda r: None, options=options).run()
        assert time.monotonic() - started < 5                        # a wrong path is final, not retried
