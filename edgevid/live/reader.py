"""The stream reader: a thread that keeps a :class:`FrameRing` filled with decimated frames.

It grabs every frame the source produces (live sources cannot be skipped) but decodes and keeps only
``fps`` of them per second, downscaled so the longer side is at most ``max_side``. Each kept frame is
stamped with its capture time. Files are paced by their own timestamps (real-time playback) and end;
live sources that drop or stall are reopened with exponential backoff and the gap is reported as
events (``stream_lost`` then ``reconnected`` with the gap's start, end and length).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgevid.live.ring import Frame, FrameRing
from edgevid.live.source import LiveSource, open_capture

log = logging.getLogger(__name__)


@dataclass
class ReaderOptions:
    fps: float = 2.0                 # frames kept per second
    max_side: int = 960              # kept frames are downscaled to this longer side (0 = never)
    open_timeout: float = 10.0       # seconds to open a network stream
    read_timeout: float = 5.0        # seconds without data before a stream counts as stalled
    backoff_initial: float = 0.5     # first wait before reopening, doubled per failure ...
    backoff_max: float = 15.0        # ... up to this


@dataclass(frozen=True)
class StreamEvent:
    kind: str                        # connected | open_failed | stream_lost | reconnected | ended
    t: float                         # on the watch clock
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    start: float                     # last frame before the outage (watch clock)
    end: float                       # first frame after it

    @property
    def seconds(self) -> float:
        return self.end - self.start


class StreamReader(threading.Thread):
    def __init__(self, source: LiveSource, ring: FrameRing, options: ReaderOptions | None = None, *,
                 clock=time.monotonic):
        super().__init__(name=f"edgevid-reader", daemon=True)
        self.source = source
        self.ring = ring
        self.options = options or ReaderOptions()
        self.clock = clock
        self.started_at = clock()
        self.connected_once = threading.Event()
        self.finished = threading.Event()         # file ended or stop() was called
        self.failure: str | None = None           # why a file could not be read at all
        self._halt = threading.Event()
        self._events: deque[StreamEvent] = deque(maxlen=256)
        self._gaps: deque[Gap] = deque(maxlen=64)
        self._lock = threading.Lock()
        self._seq = 0
        self._lost_at: float | None = None        # time of the last frame before an outage
        self._attempts = 0
        self._last_t: float | None = None         # capture time of the newest frame

    # ---- API for the watch loop ---------------------------------------------------------------------
    def stop(self) -> None:
        self._halt.set()

    def drain_events(self) -> list[StreamEvent]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def gaps_between(self, start: float, end: float) -> list[Gap]:
        with self._lock:
            return [g for g in self._gaps if g.end >= start and g.start <= end]

    # ---- thread -------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            backoff = self.options.backoff_initial
            while not self._halt.is_set():
                capture = open_capture(self.source, open_timeout=self.options.open_timeout,
                                       read_timeout=self.options.read_timeout)
                if capture is None:
                    if self.source.paced:
                        self.failure = "cannot open the file as video"
                        break
                    self._attempts += 1
                    if self._attempts == 1 and not self.connected_once.is_set():
                        self._event("open_failed", reason="cannot open", retry_in_s=round(backoff, 2))
                    self._halt.wait(backoff)
                    backoff = min(backoff * 2, self.options.backoff_max)
                    continue
                try:
                    got_frames = self._read(capture)
                finally:
                    capture.release()
                if self.source.paced:
                    self._event("ended", frames=self._seq)
                    break
                if got_frames:
                    backoff = self.options.backoff_initial
                if not self._halt.is_set():
                    if not self.connected_once.is_set():
                        self._attempts += 1          # opened but never delivered a frame
                    elif self._lost_at is None:
                        self._lost_at = self._last_t
                        self._attempts = 0
                        self._event("stream_lost", reason="read failed or timed out", last_frame_t=self._last_t)
                    else:
                        self._attempts += 1          # reopened but no frame came
                    self._halt.wait(backoff)
                    backoff = min(backoff * 2, self.options.backoff_max)
        except Exception as exc:      # a crash in the reader must not leave the watch loop waiting
            log.exception("stream reader crashed")
            self.failure = f"reader crashed: {exc}"
        finally:
            self.finished.set()

    def _read(self, capture: cv2.VideoCapture) -> bool:
        """Read until the stream fails or stop(); returns whether any frame arrived."""
        interval = 1.0 / self.options.fps
        next_keep = float("-inf")
        play_start = self.clock()
        got = False
        while not self._halt.is_set():
            if not capture.grab():
                return got
            self._seq += 1
            if self.source.paced:
                t = play_start + capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            else:
                t = self.clock()
            if t < next_keep:
                continue
            next_keep = next_keep + interval if t - next_keep < interval else t + interval
            ok, bgr = capture.retrieve()
            if not ok or bgr is None:
                return got
            if self.source.paced and self._halt.wait(max(0.0, t - self.clock())):
                return got
            if not got:
                got = True
                self._on_first_frame(t, bgr.shape)
            self.ring.push(Frame(t=t, seq=self._seq, rgb=self._rgb(bgr)))
            self._last_t = t
        return got

    def _on_first_frame(self, t: float, shape) -> None:
        if not self.connected_once.is_set():
            self.connected_once.set()
            self._event("connected", width=int(shape[1]), height=int(shape[0]))
        elif self._lost_at is not None:
            gap = Gap(self._lost_at, t)
            with self._lock:
                self._gaps.append(gap)
            self._event("reconnected", gap_start_t=gap.start, gap_end_t=gap.end,
                        gap_s=round(gap.seconds, 3), attempts=self._attempts + 1)
        self._lost_at = None
        self._attempts = 0

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
