"""Map a stream's own timestamps (``CAP_PROP_POS_MSEC``) to the watch clock, and tell new frames from stale ones.

A frame's time is ``anchor + pts`` where ``anchor`` is the smallest ``arrival - pts`` seen over the last
``horizon`` seconds: the best-delivered frame defines the mapping, so frames that come late (a decoder
handing back buffered pictures after a read timeout, a probing burst at connect) keep their true time
instead of looking fresh. A frame is never placed in the future. A timestamp that does not advance is
not a new frame; a jump back by more than ``rewind`` seconds (the source restarted its clock) starts a
new mapping.

Some sources' timestamps are not real time (FFmpeg numbers MJPEG-over-HTTP frames at 25 fps whatever
the camera sends). Once ``begin_rate_check()`` is called (when the stream has caught up after opening),
the clock compares stream time with arrival time over a few seconds; when they differ by more than
``tolerance`` the clock switches to ``mode = "arrival"`` and stamps frames with their arrival time.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Stamp:
    t: float          # on the watch clock
    new: bool         # False: the timestamp did not advance (a repeated or stale frame)
    lag: float        # arrival - t: how late the frame came compared with the best-delivered one


class StreamClock:
    def __init__(self, *, horizon: float = 60.0, rewind: float = 1.0, check_seconds: float = 2.0,
                 tolerance: float = 0.1):
        self.horizon = horizon
        self.rewind = rewind
        self.check_seconds = check_seconds
        self.tolerance = tolerance
        self.mode: str | None = None                          # None until checked: "stream" | "arrival"
        self.rate: float | None = None                        # stream seconds per watch-clock second
        self.last_pts: float | None = None
        self._last_t = float("-inf")
        self._offsets: deque[tuple[float, float]] = deque()   # (arrival, arrival - pts), increasing offsets
        self._check_from: tuple[float, float] | None = None   # (arrival, pts) where the rate check starts
        self._longest_wait = 0.0                              # longest time between arrivals since then
        self._last_arrival: float | None = None

    @property
    def anchor(self) -> float | None:
        """``t - pts`` for frames stamped now from the stream's timestamps (None before the first frame)."""
        return self._offsets[0][1] if self._offsets else None

    def begin_rate_check(self) -> None:
        if self.mode is None and self.last_pts is not None and self._last_arrival is not None:
            self._check_from = (self._last_arrival, self.last_pts)
            self._longest_wait = 0.0

    def stamp(self, pts: float, arrival: float) -> Stamp:
        if self.last_pts is not None:
            if self.last_pts - self.rewind <= pts <= self.last_pts:
                return Stamp(self._last_t, False, arrival - self._last_t)
            if pts < self.last_pts:                              # the source restarted its clock
                self._offsets.clear()
                self._check_from = None
        if self._last_arrival is not None:
            self._longest_wait = max(self._longest_wait, arrival - self._last_arrival)
        self.last_pts, self._last_arrival = pts, arrival
        offset = arrival - pts
        while self._offsets and self._offsets[-1][1] >= offset:  # monotonic queue: min over the horizon
            self._offsets.pop()
        self._offsets.append((arrival, offset))
        while self._offsets[0][0] < arrival - self.horizon:
            self._offsets.popleft()
        self._check_rate(pts, arrival)
        t = arrival if self.mode == "arrival" else self._offsets[0][1] + pts
        t = max(t, self._last_t + 1e-6)
        self._last_t = t
        return Stamp(t, True, arrival - t)

    def _check_rate(self, pts: float, arrival: float) -> None:
        if self.mode is not None or self._check_from is None:
            return
        span = arrival - self._check_from[0]
        if span < max(self.check_seconds, 4.0 * self._longest_wait):   # bursty sources need longer
            return
        self.rate = (pts - self._check_from[1]) / span
        self.mode = "stream" if abs(self.rate - 1.0) <= self.tolerance else "arrival"
