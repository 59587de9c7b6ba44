"""A bounded, thread-safe ring of decimated frames with their capture times.

The reader thread pushes; the watch loop takes the frames of a time window. The ring holds at most
``max_age`` seconds and ``max_frames`` frames, so memory stays flat however long a stream runs.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    t: float            # capture time on the watch clock (seconds, monotonic)
    seq: int            # number of the frame among all frames read from the source
    rgb: np.ndarray     # uint8 [H, W, 3]


class FrameRing:
    def __init__(self, *, max_age: float, max_frames: int):
        if max_age <= 0 or max_frames < 1:
            raise ValueError(f"FrameRing needs max_age > 0 and max_frames >= 1, got {max_age}, {max_frames}")
        self.max_age = float(max_age)
        self.max_frames = int(max_frames)
        self._frames: deque[Frame] = deque(maxlen=self.max_frames)
        self._lock = threading.Lock()
        self.pushed = 0

    def push(self, frame: Frame) -> None:
        with self._lock:
            self._frames.append(frame)
            self.pushed += 1
            horizon = frame.t - self.max_age
            while self._frames and self._frames[0].t < horizon:
                self._frames.popleft()

    def window(self, start: float, end: float) -> list[Frame]:
        """Frames captured in ``[start, end]``, oldest first."""
        with self._lock:
            return [f for f in self._frames if start <= f.t <= end]

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(f.rgb.nbytes for f in self._frames)
