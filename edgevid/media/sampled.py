"""What sampling a video returns (:class:`SampledVideo`) and which frames it takes (:func:`sample_indices`).

Every reader (OpenCV, the MP4 index, GIF, a still image, a live window) builds the same type, so this module
depends on nothing else in ``edgevid.media``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_FPS = 24.0      # transformers' assumption when a clip states no rate


@dataclass(frozen=True)
class SampledVideo:
    frames: np.ndarray        # uint8 RGB [N, h, w, 3]: the source size, or the working size when scaled
    timestamps: np.ndarray    # float64 seconds [N]
    indices: np.ndarray       # int64 [N]
    fps: float
    duration: float
    frame_count: int
    width: int                # the source frame size (after rotation), whatever ``frames`` holds
    height: int
    source: str


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """``floor(i * total / n)`` for i < n, or every index when ``total <= n``."""
    if total <= num_frames:
        return np.arange(total, dtype=np.int64)
    return np.arange(num_frames, dtype=np.int64) * total // num_frames
