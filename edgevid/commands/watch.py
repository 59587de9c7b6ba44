"""``edgevid watch SOURCE -m MODEL -i PROMPT``: ask about a live stream (or a file played in real time)
every ``--every``, over the last ``--window``; one JSON line per window with ``--jsonl``."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import threading

import click

from edgevid.commands.options import device_options, generation_options, model_options
from edgevid.commands.signals import on_stop_signals
from edgevid.errors import EdgevidError
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
@model_options
@click.option("-i", "--prompt", required=True, help="The question asked about every window.")
@click.option("--every", default="10s", show_default=True, callback=_duration, help="Time between windows.")
@click.option("--window", default="30s", show_default=True, callback=_duration, help="Video per window.")
@click.option("--num-frames", default=16, show_default=True, type=click.IntRange(1, 64), help="Frames per window.")
@click.option("--max-windows", type=click.IntRange(1), help="Stop after this many answered windows.")
@click.option("--jsonl", type=click.Path(dir_okay=False, allow_dash=True),
              help="Append one JSON line per window/event to FILE ('-' = stdout; the readable lines go to stderr).")
@generation_options
@device_options
@click.option("--fps", type=click.FloatRange(0.1, 60), help="Frames kept per second (default: a few, enough for --num-frames).")
@click.option("--connect-timeout", default="30s", show_default=True, callback=_duration,
              help="Give up when the source delivers no first frame in this time.")
@click.option("--stall-timeout", default="5s", show_default=True, callback=_duration,
              help="A live source without a new frame this long is lost and reopened.")
@click.option("--min-frames", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Skip (and report) windows holding fewer real frames than this, e.g. during an outage.")
def watch(source, model_dir, demo, prompt, every, window, num_frames, max_windows, jsonl, generation, device,
          precision, fps, connect_timeout, stall_timeout, min_frames):
    """Ask PROMPT about SOURCE every --every seconds, over its last --window.

    SOURCE: rtsp:// or http(s):// stream (MJPEG, HLS, ...), a camera index (0) or /dev/videoN, or a video
    file (played at its own speed). Ctrl-C finishes the current window and stops. Every event and field
    is described in docs/watch.md.
    """
    from edgevid.messages import user_message
    from edgevid.pipeline import Pipeline

    _quiet_decoder_logs()
    options = WatchOptions(every=every, window=window, num_frames=num_frames, max_windows=max_windows,
                           fps=fps, connect_timeout=connect_timeout, stall_timeout=stall_timeout,
                           min_frames=min_frames).validate()
    reader, ring = start_reader(source, options)
    # every window is new video: the media reuse cache would only hash and hold frames nobody asks again
    # (and the KV prefix cache would keep every window's prompt; only the text before the video repeats)
    pipeline = Pipeline.load(model_dir, device=device, precision=precision, cache_bytes=0, prefix_cache_bytes=0)
    generation = dataclasses.replace(generation, num_frames=num_frames)

    def ask(video):
        return pipeline.chat([user_message(prompt, videos=[video])], generation).text.strip()

    stop = threading.Event()

    def finish_window(signum):
        if stop.is_set() and signum == signal.SIGINT:      # a second Ctrl-C interrupts at once
            raise KeyboardInterrupt
        click.echo("-- stopping after the current window (Ctrl-C again to abort)", err=True)
        stop.set()

    code = 0
    try:
        with _records(jsonl) as emit, on_stop_signals(finish_window):
            WatchLoop(reader, ring, ask=ask, emit=emit, options=options, stop=stop).run()
    except EdgevidError as exc:
        if not reader.is_alive():
            raise
        click.echo(f"error: {exc}", err=True)
        code = 1
    if reader.is_alive():
        _exit_leaving_the_reader(code)


def _exit_leaving_the_reader(code: int) -> None:
    """The reader thread is still inside FFmpeg (bounded by its own timeouts, not waited for). Python 3.11 ends
    such a thread at interpreter exit with ``pthread_exit``, which aborts through OpenCV's C++ frames
    ("terminate called without an active exception"): flush what was written and leave without finalizing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
        return (f"[{_clock(record['window_start'])}-{_clock(record['window_end'])}] {record['frames']} frames, "
                f"{record['latency_s']:.2f} s{_gaps(record)}: {text}")
    kind, at = record["event"], _clock(record["time"])
    if kind == "connected":
        return f"-- {at} connected ({record['width']}x{record['height']})"
    if kind == "open_failed":
        retry = f"; retrying in {record['retry_in_s']:g} s" if record.get("retry_in_s") is not None else ""
        return f"-- {at} cannot open the stream: {record['reason']}{retry}"
    if kind == "stream_lost":
        return f"-- {at} stream lost ({record['reason']}; last frame {_clock(record['last_frame'])}); reconnecting"
    if kind == "reconnected":
        return (f"-- {at} stream back after a {record['gap_s']:.1f} s gap "
                f"({record['attempts']} attempt(s), last wait {record['backoff_s']:g} s)")
    if kind == "windows_skipped":
        return f"-- {at} skipped {record['count']} window(s): {record['reason']}"
    if kind == "window_skipped":
        return (f"-- {at} skipped the window {_clock(record['window_start'])}-{_clock(record['window_end'])}: "
                f"{record['reason']}{_gaps(record)}")
    if kind == "ended":
        return f"-- {at} the file ended ({record['frames']} frames, {record['position_s']:.1f} s)"
    if kind == "stopped":
        return (f"-- {at} stopped ({record['reason']}): {record['windows']} window(s), "
                f"{record['skipped_busy']} skipped while the model was busy, "
                f"{record['skipped_few_frames']} with too few frames")
    details = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "time"))
    return f"-- {at} {kind.replace('_', ' ')}" + (f" ({details})" if details else "")


def _gaps(record: dict) -> str:
    if record.get("in_outage"):
        return f" (no frames since {_clock(record['gaps'][-1]['start'])})"
    if record.get("gaps"):
        return f" (gap {sum(g['seconds'] for g in record['gaps']):.1f} s)"
    return ""


def _clock(iso: str) -> str:
    return iso[11:19]
