"""Bounds every decoder applies: a pixel cap checked from headers before decoding, and a decode deadline."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgevid.errors import DecodeTimeoutError, PixelLimitError

from .policy import DEFAULT_MAX_PIXELS
from .working_size import WorkingSize, scale_frame


def check_pixels(width: int, height: int, max_pixels: int, source: str, what: str = "picture") -> None:
    """Refuse a ``width`` x ``height`` picture over ``max_pixels`` (before anything is allocated for it)."""
    if width * height > max_pixels:
        raise PixelLimitError(f"the {what} is {width}x{height} = {width * height} pixels, over the limit of "
                              f"{max_pixels} pixels (max_pixels, --max-pixels)", source=source)


class Deadline:
    """A decode deadline: :meth:`check` raises :class:`DecodeTimeoutError` once ``seconds`` have passed."""

    def __init__(self, seconds: float | None, source: str):
        self.seconds = seconds
        self.source = source
        self.end = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeTimeoutError(f"decoding took longer than the {self.seconds:g} s limit "
                                     "(decode_timeout, --decode-timeout)", source=self.source)


@dataclass(frozen=True)
class DecodeLimits:
    """What one sampling run may spend: pixels per frame, a deadline, and the size frames are kept at."""
    max_pixels: int
    deadline: Deadline
    working_size: WorkingSize | None = None

    @classmethod
    def default(cls, source: str) -> "DecodeLimits":
        return cls(DEFAULT_MAX_PIXELS, Deadline(None, source))

    def scale(self, frame: np.ndarray) -> np.ndarray:
        return scale_frame(frame, self.working_size)
