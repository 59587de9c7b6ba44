"""Window sampling, skipping when the model is slow, file pacing, and flat memory over many windows."""
from __future__ import annotations

import gc
import time
from datetime import datetime

import numpy as np
import psutil
import pytest

from edgevid.live import Frame, ReaderOptions, Stamp, StreamClock, WatchLoop, WatchOptions, pick_uniform, sample_window, start_reader
from live_fixtures import join_readers  # noqa: F401 - autouse
from clips import frame_id, write_clip
from mjpeg_server import MJPEGServer


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_pick_uniform_spreads_targets_and_never_repeats_a_frame():
    times = np.arange(0, 10, 0.5)                                # 20 frames over 10 s
    assert pick_uniform(times, 0.0, 10.0, 5).tolist() == [2, 6, 10, 14, 18]   # 1, 3, 5, 7, 9 s
    assert pick_uniform(times, 0.0, 10.0, 40).tolist() == list(range(20))    # fewer frames than asked
    holey = np.array([0.0, 0.5, 1.0, 9.0, 9.5])                  # an outage from 1 s to 9 s
    assert pick_uniform(holey, 0.0, 10.0, 4).tolist() == [0, 1, 2, 3]     # by index, no repeats


def test_sample_window_timestamps_count_from_the_window_start():
    frames = [Frame(t=100.0 + 0.25 * i, seq=10 + i, rgb=np.full((6, 8, 3), i, np.uint8)) for i in range(16)]
    video = sample_window(frames, 100.0, 104.0, 4, source="cam")
    assert video.frames.shape == (4, 6, 8, 3) and video.frames.dtype == np.uint8
    assert video.timestamps.tolist() == [0.5, 1.5, 2.5, 3.5]
    assert video.indices.tolist() == [12, 16, 20, 24]
    assert video.frames[:, 0, 0, 0].tolist() == [2, 6, 10, 14]
    assert (video.width, video.height, video.frame_count, video.duration) == (8, 6, 16, 4.0)
    assert video.fps == 4.0 and video.source == "cam"
    assert sample_window([], 0, 1, 4, source="cam") is None


def test_sample_window_brings_frames_of_another_size_to_the_newest_size():
    frames = [Frame(0.0, 0, np.zeros((12, 16, 3), np.uint8)), Frame(1.0, 1, np.zeros((6, 8, 3), np.uint8))]
    assert sample_window(frames, 0, 2, 2, source="cam").frames.shape == (2, 6, 8, 3)


def test_file_is_played_at_its_own_speed_and_the_last_window_covers_its_end(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=48, fps=24)           # 2 s
    options = WatchOptions(every=0.5, window=1.0, num_frames=4)
    reader, ring = start_reader(str(clip), options)
    records, ids = [], []
    started = time.monotonic()
    summary = WatchLoop(reader, ring, ask=lambda v: ids.append([frame_id(f) for f in v.frames]) or "ok",
                        emit=records.append, options=options).run()
    elapsed = time.monotonic() - started
    assert summary.reason == "ended" and 1.8 < elapsed < 4.0                # real time, not as fast as decoding
    assert any(r.get("event") == "ended" for r in records) and records[-1]["event"] == "stopped"
    assert 3 <= summary.windows <= 5
    assert frame_id(ring.latest().rgb) >= 45 and ids[-1][-1] >= 40          # the end of the clip was seen
    flat = [i for window in ids for i in window]
    assert all(b >= a for window in ids for a, b in zip(window, window[1:])) and min(flat) < 12


def test_a_file_stopped_by_max_windows_did_not_end(tmp_path):
    clip = write_clip(tmp_path / "long.mp4", frames=240, fps=24)          # 10 s
    options = WatchOptions(every=0.5, window=1.0, num_frames=2, max_windows=2)
    reader, ring = start_reader(str(clip), options)
    records = []
    summary = WatchLoop(reader, ring, ask=lambda v: "ok", emit=records.append, options=options).run()
    assert summary.reason == "max_windows"
    assert [r["event"] for r in records if "event" in r] == ["connected", "stopped"]   # no "ended"
    assert records[-1]["reason"] == "max_windows"


def test_the_ended_event_says_where_the_file_ended(tmp_path):
    clip = write_clip(tmp_path / "short.mp4", frames=24, fps=24)          # 1 s
    options = WatchOptions(every=0.4, window=1.0, num_frames=2)
    reader, ring = start_reader(str(clip), options)
    records = []
    assert WatchLoop(reader, ring, ask=lambda v: "ok", emit=records.append, options=options).run().reason == "ended"
    (ended,) = [r for r in records if r.get("event") == "ended"]
    assert ended["reason"] == "end of file" and ended["frames"] == 24 and abs(ended["position_s"] - 23 / 24) < 0.01


def test_stream_clock_keeps_true_times_for_late_frames_and_drops_repeats():
    clock = StreamClock()
    assert clock.stamp(0.0, 100.0) == Stamp(100.0, True, 0.0)
    assert clock.stamp(0.1, 100.1).t == pytest.approx(100.1)
    assert clock.stamp(0.2, 100.25).t == pytest.approx(100.2)          # 50 ms late: keeps its stream time
    assert clock.stamp(0.2, 100.4).new is False                         # the timestamp did not advance
    late = clock.stamp(0.3, 105.3)                                      # a decoder hands it back 5 s later
    assert late.new and late.t == pytest.approx(100.3) and late.lag == pytest.approx(5.0)
    assert clock.stamp(0.4, 100.35).t == pytest.approx(100.35)         # never placed after its arrival


def test_stream_clock_settles_on_the_best_delivered_frame_after_a_burst():
    clock = StreamClock()
    burst = [clock.stamp(k / 10, 10.0 + k * 0.001) for k in range(30)]   # 3 s buffered while opening
    assert clock.anchor == pytest.approx(10.029 - 2.9)
    assert [s.t for s in burst] == sorted(s.t for s in burst)
    assert clock.stamp(3.0, 10.13).t == pytest.approx(10.129)


def test_stream_clock_falls_back_to_arrival_times_when_the_stream_clock_is_not_real_time():
    clock = StreamClock(check_seconds=2.0)
    clock.stamp(0.0, 0.0)
    clock.begin_rate_check()
    for k in range(1, 40):                          # FFmpeg's 25 fps numbering of a 10 fps MJPEG camera
        stamp = clock.stamp(k * 0.04, k * 0.1)
    assert clock.mode == "arrival" and clock.rate == pytest.approx(0.4)
    assert stamp.t == pytest.approx(3.9)
    real = StreamClock()
    real.stamp(0.0, 0.0)
    real.begin_rate_check()
    for k in range(1, 40):
        real.stamp(k * 0.1, k * 0.1 + (0.03 if k % 3 else 0.0))
    assert real.mode == "stream"


def test_stream_clock_restarts_when_the_source_rewinds():
    clock = StreamClock()
    clock.stamp(50.0, 100.0)
    restarted = clock.stamp(0.0, 101.0)
    assert restarted.new and restarted.t == pytest.approx(101.0)


def test_a_model_slower_than_every_skips_windows_instead_of_queueing(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=96, fps=24)           # 4 s
    options = WatchOptions(every=0.3, window=0.6, num_frames=3)
    reader, ring = start_reader(str(clip), options)
    records = []

    def slow(video):
        time.sleep(0.8)                                                     # ~2.7 ticks per answer
        return "slow"

    summary = WatchLoop(reader, ring, ask=slow, emit=records.append, options=options).run()
    windows = [r for r in records if "window" in r]
    skips = [r for r in records if r.get("event") == "windows_skipped"]
    assert skips and all(r["count"] >= 1 for r in skips)
    assert summary.skipped == sum(r["count"] for r in skips)
    assert len(windows) <= 7                                               # 4 s / 0.8 s (+ the last)
    ends = [seconds(r["window_end"]) for r in windows]
    assert all(b - a >= 0.79 for a, b in zip(ends, ends[1:])), [b - a for a, b in zip(ends, ends[1:])]  # no queue
    assert all(b - a < 1.3 for a, b in zip(ends, ends[1:]))                # the next due tick runs at once


def test_memory_stays_flat_over_hundreds_of_windows():
    """The reader, ring and window sampler alone on a fast stream, 300 windows."""
    with MJPEGServer(fps=60, size=(320, 240), quality=70) as cam:
        options = WatchOptions(every=0.02, window=0.25, num_frames=4, max_windows=300, fps=30)
        reader, ring = start_reader(cam.url, options, ReaderOptions(stall_timeout=2.0))
        process = psutil.Process()
        rss, sizes, count = [], [], [0]

        def ask(video):
            count[0] += 1
            sizes.append(len(ring))
            if count[0] in (60, 300):
                gc.collect()
                rss.append(process.memory_info().rss)
            return str(frame_id(video.frames[-1]))

        summary = WatchLoop(reader, ring, ask=ask, emit=lambda r: None, options=options).run()
    assert summary.windows == 300
    assert max(sizes) <= ring.max_frames <= 14                      # ~0.36 s at 30 fps, however long it runs
    assert ring.pushed > 5 * ring.max_frames                       # frames really flowed through the ring
    growth = rss[1] - rss[0]
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB between window 60 and 300"
