"""``edgevid watch SOURCE -m MODEL -i PROMPT``: ask about a live stream (or a file played in real time)
every ``--every``, over the last ``--window``; one JSON line per window with ``--jsonl``."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading

import click

from edgevid.live import WatchLoop, WatchOptions, start_reader

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"10s"``, ``"500ms"``, ``"2m"``, ``"1h"`` or plain seconds -> seconds (> 0)."""
    match = _DURATION.match(str(text))
    seconds = float(match.group(1)) * _UNIT[(match.group(2) or "s").lower()] if match else 0.0
    if seconds <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 10s, 500ms, 2m or 1h")
    return seconds


def _duration(ctx, param, value):
    return None if value is None else parse_duration(value)


@click.command("watch")
@click.argument("source")
@click.option("-m", "--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Model folder made by `edgevid export`.")
@click.option("-i", "--prompt", required=True, help="The question asked about every window.")
@click.option("--every", default="10s", show_default=True, callback=_duration, help="Time between windows.")
@click.option("--window", default="30s", show_default=True, callback=_duration, help="Video per window.")
@click.option("--num-frames", default=16, show_default=True, type=click.IntRange(1, 64), help="Frames per window.")
@click.option("--max-windows", type=click.IntRange(1), help="Stop after this many answered windows.")
@click.option("--jsonl", type=click.Path(dir_okay=False, allow_dash=True),
              help="Append one JSON line per window/event to FILE ('-' = stdout; the readable lines go to stderr).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, dml or openvino.")
@click.option("--precision", default="fp32", show_default=True, help="Graph precision from the model folder.")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(1), help="Answer length cap.")
@click.option("--fps", type=click.FloatRange(0.1, 60), help="Frames kept per second (default: a few, enough for --num-frames).")
@click.option("--connect-timeout", default="30s", show_default=True, callback=_duration,
              help="Give up when the source delivers no first frame in this time.")
def watch(source, model_dir, prompt, every, window, num_frames, max_windows, jsonl, device, precision,
          max_tokens, fps, connect_timeout):
    """Ask PROMPT about SOURCE every --every seconds, over its last --window.

    SOURCE: rtsp:// or http(s):// stream (MJPEG, HLS, ...), a camera index (0) or /dev/videoN, or a video
    file (played at its own speed). Ctrl-C finishes the current window and stops.
    """
    from edgevid.model.generate import GenerationOptions
    from edgevid.pipeline import Pipeline

    _quiet_decoder_logs()
    options = WatchOptions(every=every, window=window, num_frames=num_frames, max_windows=max_windows,
                           fps=fps, connect_timeout=connect_timeout).validate()
    reader, ring = start_reader(source, options)
    # every window is new video: the media reuse cache would only hash and hold frames nobody asks again
    pipeline = Pipeline.load(model_dir, device=device, precision=precision, cache_bytes=0)
    generation = GenerationOptions(max_tokens=max_tokens, num_frames=num_frames)

    def ask(video):
        content = [{"type": "video", "video": video}, {"type": "text", "text": prompt}]
        return pipeline.chat([{"role": "user", "content": content}], generation).text.strip()

    stop = threading.Event()
    with _records(jsonl) as emit, _stop_on_signals(stop):
        WatchLoop(reader, ring, ask=ask, emit=emit, options=options, stop=stop).run()


def _quiet_decoder_logs() -> None:
    """Drops and reconnects are reported as events; FFmpeg's and OpenCV's own lines about them are noise
    unless -v. (FFmpeg's level is read when the first capture opens, so this is early enough.)"""
    if logging.getLogger().getEffectiveLevel() <= logging.INFO:
        return
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


@contextlib.contextmanager
def _records(jsonl: str | None):
    """``emit(record)``: a JSON line to --jsonl (flushed per line) and a readable line to the terminal."""
    human = sys.stderr if jsonl == "-" else sys.stdout
    stream = None if jsonl is None else sys.stdout if jsonl == "-" else open(jsonl, "a", encoding="utf-8")

    def emit(record: dict) -> None:
        if stream is not None:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()
        human.write(readable(record) + "\n")
        human.flush()

    try:
        yield emit
    finally:
        if stream is not None and stream is not sys.stdout:
            stream.close()


def readable(record: dict) -> str:
    """One terminal line for a window or event record."""
    if "event" not in record:
        text = " ".join(record["text"].split())
        gaps = f" (gap {sum(g['seconds'] for g in record['gaps']):.1f} s)" if record["gaps"] else ""
        return (f"[{_clock(record['window_start'])}-{_clock(record['window_end'])}] {record['frames']} frames, "
                f"{record['latency_s']:.2f} s{gaps}: {text}")
    kind, at = record["event"], _clock(record["time"])
    if kind == "connected":
        return f"-- {at} connected ({record['width']}x{record['height']})"
    if kind == "stream_lost":
        return f"-- {at} stream lost ({record['reason']}); reconnecting"
    if kind == "reconnected":
        return f"-- {at} stream back after a {record['gap_s']:.1f} s gap ({record['attempts']} attempt(s))"
    if kind == "windows_skipped":
        return f"-- {at} skipped {record['count']} window(s): {record['reason']}"
    if kind == "stopped":
        return f"-- {at} stopped ({record['reason']}): {record['windows']} window(s), {record['skipped']} skipped"
    details = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "time"))
    return f"-- {at} {kind.replace('_', ' ')}" + (f" ({details})" if details else "")


def _clock(iso: str) -> str:
    return iso[11:19]


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """Ctrl-C / SIGTERM set ``stop`` (the current window finishes); a second Ctrl-C interrupts at once.
    Handlers are installed only on the main thread and only for signals this platform has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [name for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name)]   # SIGBREAK: Windows Ctrl-Break
    previous = {}

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        click.echo("-- stopping after the current window (Ctrl-C again to abort)", err=True)
        stop.set()

    for name in names:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
