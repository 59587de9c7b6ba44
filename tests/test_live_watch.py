"""``edgevid watch`` end to end: the real CLI, a real exported tiny model, a real stream on loopback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from clips import write_clip
from mjpeg_server import MJPEGServer

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def model_dir(demo_model):
    return demo_model


def watch_command(source, model_dir, *args):
    return [sys.executable, "-m", "edgevid", "watch", str(source), "-m", str(model_dir),
            "-i", "What happens?", "--max-tokens", "4", *args]


def test_watch_a_live_mjpeg_stream_writes_one_json_line_per_window(model_dir, tmp_path):
    out = tmp_path / "watch.jsonl"
    with MJPEGServer(fps=10) as cam:
        run = subprocess.run(watch_command(cam.url, model_dir, "--every", "1s", "--window", "2s",
                                           "--num-frames", "4", "--max-windows", "3", "--jsonl", str(out)),
                             capture_output=True, text=True, timeout=90, env=ENV)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    windows = [r for r in records if "window" in r]
    events = [r["event"] for r in records if "event" in r]
    assert events[0] == "connected" and events[-1] == "stopped"
    assert set(events) <= {"connected", "windows_skipped", "stopped"}     # skips only on a very busy machine
    assert len(windows) == 3 and records[-1]["reason"] == "max_windows"
    for record in windows:
        assert set(record) >= {"window_start", "window_end", "frames", "text", "latency_s", "gaps"}
        assert record["window_start"] < record["window_end"] and 1 <= record["frames"] <= 4
        assert isinstance(record["text"], str) and record["latency_s"] > 0
    assert windows[-1]["frames"] == 4
    lines = run.stdout.splitlines()                       # the readable lines go to the terminal
    assert sum(line.startswith("[") for line in lines) == 3 and "stopped (max_windows)" in lines[-1]


@pytest.mark.skipif(os.name == "nt", reason="signals are sent differently on Windows")
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_current_window_and_exits_cleanly(model_dir, tmp_path, signum):
    clip = write_clip(tmp_path / "long.mp4", frames=240, fps=24)          # 10 s, played in real time
    proc = subprocess.Popen(watch_command(clip, model_dir, "--every", "0.5s", "--window", "1s",
                                          "--num-frames", "2", "--jsonl", "-"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        records = []
        for line in proc.stdout:
            records.append(json.loads(line))
            if "window" in records[-1]:
                proc.send_signal(getattr(signal, signum))
                break
        rest, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    records += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 0, err
    assert records[-1]["event"] == "stopped" and records[-1]["reason"] == "stopped"
    assert records[-1]["windows"] <= 3                                    # stopped long before the clip ends
    assert "stopping after the current window" in err and "Traceback" not in err


def test_bad_sources_are_one_readable_line_and_exit_1(model_dir, tmp_path):
    missing = subprocess.run(watch_command(tmp_path / "nope.mp4", model_dir), capture_output=True, text=True,
                             timeout=60, env=ENV)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: no such file")
    with MJPEGServer() as cam:
        cam.drop()
        started = time.monotonic()
        down = subprocess.run(watch_command(cam.url, model_dir, "--connect-timeout", "1s"),
                              capture_output=True, text=True, timeout=60, env=ENV)
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "error: no frames from the stream within 1 s" in down.stderr
    assert time.monotonic() - started < 30
    usage = subprocess.run(watch_command(tmp_path, model_dir, "--every", "soon"), capture_output=True,
                           text=True, timeout=60, env=ENV)
    assert usage.returncode == 2 and "not a duration" in usage.stderr
