"""The stream reader: a thread that keeps a :class:`FrameRing` filled with decimated frames, stamped with
the stream's own timestamps, and keeps the record of when frames did not come.

Every frame the source produces is grabbed (live sources cannot be skipped); ``fps`` of them per second
of stream time are decoded and kept, downscaled so the longer side is at most ``max_side``. A frame's time
comes from ``CAP_PROP_POS_MSEC`` through a :class:`StreamClock` (re-anchored at each connection), so a
picture a decoder hands back late keeps its true time, and a repeated timestamp is not a new frame.
Files are paced by their timestamps (real-time playback) and end.

Live sources: a watchdog declares the stream lost ``stall_timeout`` seconds after the last *new* frame
(``stream_lost``), whatever the reader thread is blocked in; the gap is open from that frame on and every
window that asks meanwhile is told. The stream is reopened with exponential backoff; ``reconnected``
carries the gap from the last real frame to the first new one. Opening is bounded by ``open_timeout``
(FFmpeg's own interrupt), and the thread can be abandoned: ``stop()`` never waits for FFmpeg.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgevid.live.clock import StreamClock
from edgevid.live.probe import Diagnosis, diagnose
from edgevid.live.ring import Frame, FrameRing
from edgevid.live.source import LiveSource, open_capture

log = logging.getLogger(__name__)
WATCHDOG_STEP = 0.05          # seconds between stall checks
SETTLE_SECONDS = 2.0          # at most this long to drain what a stream buffered while opening


@dataclass
class ReaderOptions:
    fps: float = 2.0                 # frames kept per second
    max_side: int = 960              # kept frames are downscaled to this longer side (0 = never)
    open_timeout: float = 10.0       # seconds one attempt to open a network stream may take
    stall_timeout: float = 5.0       # seconds without a new frame before a live stream counts as lost
    backoff_initial: float = 0.5     # first wait before reopening, doubled per failed attempt ...
    backoff_max: float = 15.0        # ... up to this


@dataclass(frozen=True)
class StreamEvent:
    kind: str                        # connected | open_failed | stream_lost | reconnected | ended
    t: float                         # on the watch clock
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    start: float                     # time of the last frame before it (watch clock)
    end: float | None                # first frame after it; None while it goes on
    outage: bool = False             # the stream was declared lost in it (else: frames held up, then resumed)

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


class StreamReader(threading.Thread):
    def __init__(self, source: LiveSource, ring: FrameRing, options: ReaderOptions | None = None, *,
                 clock=time.monotonic):
        super().__init__(name="edgevid-reader", daemon=True)
        self.source = source
        self.ring = ring
        self.options = options or ReaderOptions()
        self.clock = clock
        self.connected_once = threading.Event()
        self.finished = threading.Event()         # the reader gave up, the file ended, or stop() was called
        self.failure: str | None = None           # why the source can never be read (file, wrong path, ...)
        self.last_reason: str | None = None       # why the latest attempt to open failed
        self._halt = threading.Event()
        self._lock = threading.RLock()
        self._new_frame = threading.Condition(self._lock)
        self._events: deque[StreamEvent] = deque(maxlen=256)
        self._gaps: deque[Gap] = deque(maxlen=64)
        self._lags: deque[float] = deque(maxlen=120)       # arrival - t of recent frames
        self._intervals: deque[float] = deque(maxlen=120)  # stream time between recent new frames
        self._seq = 0
        self.last_frame_t: float | None = None    # time of the newest new frame (any connection)
        self._reading = False                     # a connection is delivering frames
        self._lost_from: float | None = None      # outage declared: its gap starts here
        self._attempts = 0                        # attempts to open in this outage (or before connecting)
        self._last_failed_at: float | None = None
        self._backoff_used = 0.0
        self._failed_reason: str | None = None
        self._first = True                        # no frame accepted yet on the current connection
        self._file_position = 0.0
        self._fresh_at = 0.0                      # the stall watchdog counts from here

    # ---- API for the watch loop ---------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the thread to end. It may be blocked in FFmpeg (bounded by the timeouts): nobody waits."""
        self._halt.set()
        with self._lock:
            self._new_frame.notify_all()

    def drain_events(self) -> list[StreamEvent]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    @property
    def lost(self) -> bool:
        return self._lost_from is not None

    def gap_threshold(self) -> float:
        """How long without a new frame counts as a gap for this source: a few of its usual frame intervals
        plus its usual delivery lag (HLS delivers whole segments late), at least 0.5 s, at most the stall."""
        with self._lock:
            if len(self._intervals) < 3:
                return min(1.0, self.options.stall_timeout)
            interval = sorted(self._intervals)[len(self._intervals) // 2]
            lag = max(self._lags, default=0.0)
        return min(max(0.5, 1.5 * lag + 2.0 * interval), self.options.stall_timeout)

    def wait_for_frame(self, after: float, timeout: float) -> bool:
        """Wait up to ``timeout`` for a new frame stamped at or after ``after``; returns whether one came."""
        def came() -> bool:
            return self.last_frame_t is not None and self.last_frame_t >= after

        with self._new_frame:
            self._new_frame.wait_for(lambda: came() or self._halt.is_set() or self.finished.is_set(), timeout)
            return came()

    def gaps_between(self, start: float, end: float, now: float | None = None) -> list[Gap]:
        """Gaps overlapping ``[start, end]``, the one still going on (``end=None``) included."""
        now = self.clock() if now is None else now
        threshold = self.gap_threshold()
        with self._lock:
            gaps = [g for g in self._gaps if g.end >= start and g.start <= end]
            last = self.last_frame_t
            if last is not None and last < end and not self.finished.is_set() and (
                    self.lost or now - last > threshold):
                gaps.append(Gap(last, None, self.lost))
        return gaps

    # ---- thread -------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if not self.source.paced:
                threading.Thread(target=self._watch_stall, name="edgevid-stall-watch", daemon=True).start()
            self._connect_loop()
        except Exception as exc:      # a crash in the reader must not leave the watch loop waiting
            log.exception("stream reader crashed")
            self.failure = f"reader crashed: {exc}"
        finally:
            self.finished.set()
            with self._lock:
                self._new_frame.notify_all()

    def _connect_loop(self) -> None:
        opts = self.options
        backoff = opts.backoff_initial
        while not self._halt.is_set():
            self._attempts += 1
            opening = self.clock()
            capture = open_capture(self.source, open_timeout=opts.open_timeout, read_timeout=opts.stall_timeout)
            timed_out = self.clock() - opening >= 0.9 * opts.open_timeout
            if self._halt.is_set():
                if capture is not None:
                    capture.release()
                return
            if capture is None:
                if self.source.paced:
                    self.failure = "cannot open the file as video"
                    return
                diagnosis = diagnose(self.source, timeout=min(2.0, opts.open_timeout))
                if timed_out and diagnosis.status is not None and diagnosis.status < 300:
                    # it answers now, but did not while we were opening (a hung server that came back)
                    diagnosis = Diagnosis(f"no answer while opening for {opts.open_timeout:g} s "
                                          f"(the server answers now)")
                if self._attempt_failed(diagnosis, backoff):
                    return
            else:
                try:
                    outcome = self._read(capture)
                finally:
                    capture.release()
                if self.source.paced:
                    if outcome == "ended":
                        self._event("ended", reason="end of file", frames=self._seq,
                                    position_s=self._file_position)
                    return
                if outcome == "halted":
                    return
                if outcome == "lost":
                    backoff = opts.backoff_initial
                    self._attempts = 0
                else:                                 # opened, but no frame came
                    self._attempt_failed(Diagnosis(f"opened, but no frame came within {opts.stall_timeout:g} s"),
                                         backoff)
            if self._halt.wait(backoff):
                return
            self._backoff_used = backoff
            backoff = min(backoff * 2, opts.backoff_max)

    def _attempt_failed(self, diagnosis: Diagnosis, retry_in: float) -> bool:
        """Record a failed attempt; returns whether to give up (a final answer before ever connecting)."""
        self._last_failed_at = self.clock()
        self.last_reason = diagnosis.reason
        if diagnosis.reason != self._failed_reason:        # say it once per outage, and again when it changes
            self._failed_reason = diagnosis.reason
            self._event("open_failed", reason=diagnosis.reason, status=diagnosis.status, attempt=self._attempts,
                        retry_in_s=None if diagnosis.final and not self.connected_once.is_set() else round(retry_in, 2))
        if diagnosis.final and not self.connected_once.is_set():
            self.failure = diagnosis.reason
            return True
        return False

    def _read(self, capture: cv2.VideoCapture) -> str:
        """Read one connection until it fails, stalls, ends or stop(): "lost" | "no_frames" | "ended" | "halted"."""
        paced = self.source.paced
        clock = StreamClock()
        keep_every = 1.0 / self.options.fps
        next_keep = float("-inf")
        # live streams hand over what they buffered while opening in a burst: hold it until the stream has
        # caught up, so the whole burst is stamped with the settled anchor, not with its arrival times
        pending: list[tuple[float, int, np.ndarray | None]] = []
        pending_since = 0.0
        settled = paced
        self._first = True
        play_start = None
        while not self._halt.is_set():
            if not self._first and self._lost_from is not None:
                return "lost"                                  # the watchdog declared it
            began = self.clock()
            grabbed = capture.grab()
            arrival = self.clock()
            if not grabbed:
                self._flush(pending, clock)
                return self._read_failed(paced, began)
            if not paced and not self._first and arrival - began >= 0.9 * self.options.stall_timeout:
                # FFmpeg's read timeout fired: OpenCV now only drains pictures its decoder held back
                self._declare_lost(f"no new frame for {self.options.stall_timeout:g} s (read timed out)")
                return "lost"
            pts = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            self._seq += 1
            previous_pts, anchor_before = clock.last_pts, clock.anchor
            if paced:
                if previous_pts is not None and pts <= previous_pts:
                    continue
                clock.last_pts = pts
                play_start = arrival - pts if play_start is None else play_start
                t, lag = play_start + pts, 0.0
            else:
                checked = clock.mode
                stamp = clock.stamp(pts, arrival)
                if not stamp.new:
                    continue
                t, lag = stamp.t, stamp.lag
                if clock.mode != checked:
                    log.info("stream %s: its clock runs at %.2fx real time: frames stamped by %s time",
                             self.source.text, clock.rate, clock.mode)
            # decimate on frame time; while a burst is held its frames' times are not settled, but their
            # spacing is the stream's own: decimate on stream time then (t = anchor + pts once settled)
            at = t if settled else pts
            keep = at >= next_keep
            if keep:
                next_keep = next_keep + keep_every if at - next_keep < keep_every else at + keep_every
            rgb = self._retrieve(capture) if keep else None
            if keep and rgb is None:
                self._flush(pending, clock)
                return self._read_failed(paced, began)
            if paced:
                if self._halt.wait(max(0.0, t - self.clock())):
                    return "halted"
                self._file_position = pts
                self._on_new_frame(t, lag, rgb, self._seq, t)
            elif not settled:
                if not pending:
                    pending_since = arrival
                pending.append((pts, self._seq, rgb))
                step = pts - previous_pts if previous_pts is not None else 0.0
                caught_up = step > 0 and (arrival - began >= 0.5 * step or anchor_before - clock.anchor < 0.3 * step)
                if caught_up or arrival - pending_since > SETTLE_SECONDS:
                    next_keep += clock.anchor
                    settled = True
                    self._flush(pending, clock)
            else:
                # a stream whose timestamps are not real time is watched by arrival until its clock is checked
                self._on_new_frame(t, lag, rgb, self._seq, t if clock.mode == "stream" else arrival)
        return "halted"

    def _flush(self, pending: list, clock: StreamClock) -> None:
        for pts, seq, rgb in pending:
            self._on_new_frame(clock.anchor + pts, 0.0, rgb, seq, self.clock())
        pending.clear()
        clock.begin_rate_check()

    def _read_failed(self, paced: bool, began: float) -> str:
        if self._halt.is_set():
            return "halted"
        if paced:
            return "ended"
        if not self._first and self._lost_from is not None:
            return "lost"                                      # declared by the watchdog already
        if not self._reading:
            return "no_frames"
        quick = self.clock() - began < 0.5 * self.options.stall_timeout
        self._declare_lost("the stream closed or failed" if quick else
                           f"no new frame for {self.options.stall_timeout:g} s (read timed out)")
        return "lost"

    def _retrieve(self, capture: cv2.VideoCapture) -> np.ndarray | None:
        ok, bgr = capture.retrieve()
        return self._rgb(bgr) if ok and bgr is not None else None

    def _on_new_frame(self, t: float, lag: float, rgb: np.ndarray | None, seq: int, fresh: float) -> None:
        """Record a new frame at ``t``; ``fresh`` is the time the stall watchdog counts from."""
        with self._lock:
            last = self.last_frame_t
            if last is not None and t <= last:
                return                                      # time already covered (a re-sent segment)
            if not self._first and self._lost_from is not None:
                return                                      # this connection was declared lost
            if self._first and not self.connected_once.is_set():
                self.connected_once.set()
                self._event("connected", width=_width(rgb), height=_height(rgb))
            elif self._first and last is not None:
                self._reconnected(last, t, rgb)
            elif last is not None:
                if t - last > self.gap_threshold():
                    self._gaps.append(Gap(last, t, False))
                self._intervals.append(t - last)
                self._lags.append(lag)
            self._first = False
            self._reading = True
            self.last_frame_t = t
            self._fresh_at = fresh
            self._new_frame.notify_all()
        if rgb is not None:
            self.ring.push(Frame(t=t, seq=seq, rgb=rgb))

    def _reconnected(self, last: float, t: float, rgb) -> None:
        start = self._lost_from if self._lost_from is not None else last
        gap = Gap(start, t, True)
        self._gaps.append(gap)
        self._event("reconnected", gap_start_t=gap.start, gap_end_t=gap.end, gap_s=round(gap.seconds, 3),
                    attempts=self._attempts, backoff_s=round(self._backoff_used, 2),
                    last_failed_attempt_t=self._last_failed_at if self._attempts > 1 else None,
                    width=_width(rgb), height=_height(rgb))
        self._lost_from = None
        self._attempts = 0
        self._failed_reason = None

    def _declare_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost_from is not None or not self._reading:
                return
            self._lost_from = self.last_frame_t
            self._reading = False
            self._attempts = 0
            self._last_failed_at = None
            self._failed_reason = None
            self._event("stream_lost", reason=reason, last_frame_t=self._lost_from)

    def _watch_stall(self) -> None:
        """Declare the stream lost ``stall_timeout`` after its last new frame, even while ``grab()`` blocks."""
        while not self._halt.wait(WATCHDOG_STEP) and not self.finished.is_set():
            with self._lock:
                stalled = self._reading and self.clock() - self._fresh_at > self.options.stall_timeout
            if stalled:
                self._declare_lost(f"no new frame for {self.options.stall_timeout:g} s")

    def _rgb(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        side = self.options.max_side
        if side and max(h, w) > side:
            scale = side / max(h, w)
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _event(self, kind: str, **detail) -> None:
        event = StreamEvent(kind, self.clock(), detail)
        log.info("stream %s: %s %s", self.source.text, kind, detail)
        with self._lock:
            self._events.append(event)


def _width(rgb) -> int | None:
    return None if rgb is None else int(rgb.shape[1])


def _height(rgb) -> int | None:
    return None if rgb is None else int(rgb.shape[0])
