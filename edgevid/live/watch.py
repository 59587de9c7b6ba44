"""The watch loop: every ``every`` seconds, sample the last ``window`` of a live source and ask the model.

    reader, ring = start_reader("rtsp://cam/stream", WatchOptions(every=10, window=30, num_frames=16))
    WatchLoop(reader, ring, ask=lambda video: pipeline.chat(...).text, emit=print_record, options=...).run()

The model runs on the calling thread while a :class:`StreamReader` thread keeps the ring filled and a pump
thread passes the reader's events on as they happen. A window closes when a frame stamped at or after its
end has arrived, or when the source's usual delivery time has passed without one: then the window is
inside a gap, says so (``gaps`` with an open end, ``in_outage``) and is answered only from the real frames
before it, or skipped under ``min_frames``. When an answer takes longer than ``every``, the ticks that
passed are skipped and reported (the latest one runs at once) instead of queueing. ``stop`` (an Event, set
by a signal handler) ends the loop after the current window; the reader is never waited for. Records are
plain dicts handed to ``emit``: windows and events, with wall-clock ISO times.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from edgevid.errors import InvalidRequestError, StreamUnavailableError, UnreadableMediaError
from edgevid.live.probe import diagnose
from edgevid.live.reader import Gap, ReaderOptions, StreamEvent, StreamReader
from edgevid.live.ring import FrameRing
from edgevid.live.source import parse_source
from edgevid.live.window import sample_window

log = logging.getLogger(__name__)
POLL = 0.05         # seconds between checks of stop / end of file while waiting
ABANDON = 0.1       # seconds the loop waits for the reader thread at the end before leaving it behind


@dataclass
class WatchOptions:
    every: float = 10.0            # seconds between windows
    window: float = 30.0           # seconds of video per window
    num_frames: int = 16           # frames sampled per window
    max_windows: int | None = None # stop after this many answered windows
    fps: float | None = None       # frames kept per second in the ring; None = enough for num_frames
    connect_timeout: float = 30.0  # give up when the source delivers no first frame in this time
    stall_timeout: float = 5.0     # a live source without a new frame this long is lost and reopened
    min_frames: int = 1            # windows with fewer real frames are skipped (and reported)

    def validate(self) -> "WatchOptions":
        if not self.every > 0 or not self.window > 0:
            raise InvalidRequestError(f"--every and --window must be > 0 (got {self.every}, {self.window})")
        if self.num_frames < 1:
            raise InvalidRequestError(f"--num-frames must be >= 1 (got {self.num_frames})")
        if self.max_windows is not None and self.max_windows < 1:
            raise InvalidRequestError(f"--max-windows must be >= 1 (got {self.max_windows})")
        if not self.connect_timeout > 0 or not self.stall_timeout > 0:
            raise InvalidRequestError(f"--connect-timeout and --stall-timeout must be > 0 "
                                      f"(got {self.connect_timeout}, {self.stall_timeout})")
        if not 1 <= self.min_frames <= self.num_frames:
            raise InvalidRequestError(f"--min-frames must be between 1 and --num-frames {self.num_frames} "
                                      f"(got {self.min_frames})")
        return self

    def ring_fps(self) -> float:
        """A few frames per second: twice what ``num_frames`` over ``window`` needs, 2..15 fps."""
        return self.fps or min(max(2.0, 2.0 * self.num_frames / self.window), 15.0)


@dataclass(frozen=True)
class WatchSummary:
    windows: int            # answered
    skipped_busy: int       # ticks skipped because the model was still answering
    skipped_few_frames: int # windows skipped because they held fewer than min_frames real frames
    reason: str             # "stopped" | "max_windows" | "ended"

    @property
    def skipped(self) -> int:
        return self.skipped_busy + self.skipped_few_frames


def start_reader(source: str, options: WatchOptions, reader_options: ReaderOptions | None = None,
                 *, clock=time.monotonic) -> tuple[StreamReader, FrameRing]:
    """A (not yet started) reader for ``source`` and the ring it fills, sized for one window."""
    options.validate()
    live = parse_source(source)
    reader_options = reader_options or ReaderOptions(stall_timeout=options.stall_timeout)
    reader_options.fps = options.ring_fps()
    reader_options.open_timeout = min(reader_options.open_timeout, options.connect_timeout)
    max_age = options.window * 1.05 + 0.1         # the window is [now - window, now] and now >= newest
    ring = FrameRing(max_age=max_age, max_frames=math.ceil(max_age * reader_options.fps) + 2)
    return StreamReader(live, ring, reader_options, clock=clock), ring


class WatchLoop:
    def __init__(self, reader: StreamReader, ring: FrameRing, *, ask: Callable, emit: Callable[[dict], None],
                 options: WatchOptions, stop: threading.Event | None = None, clock=time.monotonic):
        self.reader, self.ring, self.ask = reader, ring, ask
        self.options = options.validate()
        self.stop = stop or threading.Event()
        self.clock = clock
        self._emit, self._emit_lock = emit, threading.Lock()
        self._wall_offset = time.time() - clock()
        self._origin = 0.0
        self._last_end = float("-inf")
        self.windows = self.skipped_busy = self.skipped_few_frames = 0

    def iso(self, t: float) -> str:
        return datetime.fromtimestamp(t + self._wall_offset).astimezone().isoformat(timespec="milliseconds")

    def emit(self, record: dict) -> None:
        with self._emit_lock:
            self._flush_events()                    # events that happened before this record come first
            self._emit(record)

    # ---- loop ---------------------------------------------------------------------------------------
    def run(self) -> WatchSummary:
        if not self.reader.is_alive() and not self.reader.finished.is_set():
            self.reader.start()
        done = threading.Event()
        pump = threading.Thread(target=self._pump, args=(done,), name="edgevid-events", daemon=True)
        pump.start()
        try:
            reason = self._loop() if self._wait_connected() else "stopped"
        finally:
            self.reader.stop()
            self.reader.join(timeout=ABANDON)       # a reader blocked in FFmpeg is left behind (daemon)
            done.set()
            pump.join()
            with self._emit_lock:
                self._flush_events()
        summary = WatchSummary(self.windows, self.skipped_busy, self.skipped_few_frames, reason)
        self.emit({"event": "stopped", "time": self.iso(self.clock()), "reason": reason,
                   "windows": summary.windows, "skipped": summary.skipped, "skipped_busy": summary.skipped_busy,
                   "skipped_few_frames": summary.skipped_few_frames})
        return summary

    def _pump(self, done: threading.Event) -> None:
        while not done.wait(POLL):
            with self._emit_lock:
                self._flush_events()

    def _wait_connected(self) -> bool:
        deadline = self.clock() + self.options.connect_timeout
        while not self.reader.connected_once.wait(POLL):
            if self.stop.is_set():
                return False
            if self.reader.finished.is_set() or self.clock() > deadline:
                self._raise_unavailable()
        self._origin = self.clock()
        return True

    def _raise_unavailable(self):
        source = self.reader.source
        if source.paced:
            raise UnreadableMediaError(f"cannot read video frames ({self.reader.failure or 'no frames'})",
                                       source=source.text)
        if self.reader.failure:
            raise StreamUnavailableError(self.reader.failure, source=source.text)
        reason = self.reader.last_reason or diagnose(source, timeout=0.5).reason
        raise StreamUnavailableError(
            f"no frames from the {source.kind} within {self.options.connect_timeout:g} s: {reason}",
            source=source.text)

    def _loop(self) -> str:
        every = self.options.every
        tick = self._origin + every
        while True:
            ended = self._wait_until(tick)
            if self.stop.is_set():
                return "stopped"
            if ended and self.reader.failure:
                raise StreamUnavailableError(self.reader.failure, source=self.reader.source.text)
            latest = self.ring.latest()
            if ended and (latest is None or latest.t <= self._last_end):
                return "ended"
            if not self._run_window():
                return "stopped"
            if self.options.max_windows and self.windows >= self.options.max_windows:
                return "max_windows"
            tick = self._next_tick(tick)

    def _wait_until(self, tick: float) -> bool:
        """Sleep until ``tick``, a stop, or the end of a file; returns whether the source ended."""
        while True:
            if self.reader.finished.is_set():
                return True
            remaining = tick - self.clock()
            if remaining <= 0 or self.stop.wait(min(remaining, POLL)):
                return self.reader.finished.is_set()

    def _wait_for_frame(self, end: float) -> bool:
        """Wait until a frame stamped at or after ``end`` came, or the source's usual delivery time passed;
        returns False when stopped meanwhile."""
        deadline = self.clock() + self.reader.gap_threshold()
        while not self.reader.finished.is_set():
            if self.stop.is_set():
                return False
            remaining = deadline - self.clock()
            if remaining <= 0 or self.reader.wait_for_frame(end, min(remaining, POLL)):
                break
        return not self.stop.is_set()

    def _next_tick(self, tick: float) -> float:
        now, every = self.clock(), self.options.every
        due = int((now - tick) // every)          # ticks that came while the model was busy
        if self.reader.finished.is_set():
            return now                             # a file ended: its last window runs at once
        if due < 1:
            return tick + every
        if due > 1:
            self.skipped_busy += due - 1
            self.emit({"event": "windows_skipped", "time": self.iso(now), "count": due - 1,
                       "reason": f"the model took longer than --every {every:g} s"})
        return tick + due * every                  # the latest due tick, run at once

    def _run_window(self) -> bool:
        end = self.clock()
        if not self._wait_for_frame(end):
            return False
        start = max(end - self.options.window, self._origin)
        frames = self.ring.window(start, end)
        gaps = self.reader.gaps_between(start, end)
        where = {"window_start": self.iso(start), "window_end": self.iso(end),
                 "in_outage": any(g.end is None for g in gaps), "gaps": [self._gap_record(g, end) for g in gaps]}
        self._last_end = end
        if len(frames) < self.options.min_frames:
            self.skipped_few_frames += 1
            self.emit({"event": "window_skipped", "time": self.iso(self.clock()),
                       "reason": f"{len(frames)} real frame(s) in the window, --min-frames is "
                                 f"{self.options.min_frames}", "frames": len(frames), **where})
            return True
        video = sample_window(frames, start, end, self.options.num_frames, source=self.reader.source.text)
        began = time.perf_counter()
        text = self.ask(video)
        latency = time.perf_counter() - began
        self.windows += 1
        self.emit({"window": self.windows, **where, "frames": int(len(video.frames)),
                   "first_frame": self.iso(frames[0].t), "last_frame": self.iso(frames[-1].t),
                   "text": text, "latency_s": round(latency, 3)})
        return True

    def _gap_record(self, gap: Gap, window_end: float) -> dict:
        ongoing = gap.end is None
        return {"start": self.iso(gap.start), "end": None if ongoing else self.iso(gap.end),
                "seconds": round((window_end if ongoing else gap.end) - gap.start, 3),
                "ongoing": ongoing, "outage": gap.outage}

    def _flush_events(self) -> None:
        for event in self.reader.drain_events():
            self._emit(self._event_record(event))

    def _event_record(self, event: StreamEvent) -> dict:
        record = {"event": event.kind, "time": self.iso(event.t)}
        for name, value in event.detail.items():
            if name.endswith("_t"):
                record[name[:-2]] = None if value is None else self.iso(value)
            else:
                record[name] = value
        return record
