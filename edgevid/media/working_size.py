"""Frames scaled, right after decode, to the size the vision preprocessing would resize them to.

The scaling *is* the preprocessing's resize (:func:`edgevid.model.preprocess.resize_bicubic_aa`, torch's
exact uint8 anti-aliased bicubic, applied frame by frame as it is there), moved to decode time: the
pixels the vision encoder sees do not change by a single bit, and a sampled 8K frame is held at
~0.5 MP instead of 33 MP. ``preprocess_video(frames, source_size=...)`` then finds the frames already
at their target size and does not resize again. Frames are only ever scaled down: a source smaller than
its target stays as decoded (the preprocessing upscales it later, as before).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WorkingSize:
    """The vision processor's budget for video frames (Gemma 4: 70 soft tokens, patch 16, pooling 3)."""

    max_soft_tokens: int = 70
    patch_size: int = 16
    pooling: int = 3

    @classmethod
    def for_video(cls, vision) -> "WorkingSize":
        """From a model folder's vision settings (``ModelFolder.vision``)."""
        return cls(vision.video_max_soft_tokens, vision.patch_size, vision.pooling)

    def target(self, height: int, width: int) -> tuple[int, int]:
        from edgevid.model.preprocess import target_size
        return target_size(height, width, self.max_soft_tokens, self.patch_size, self.pooling)

    def shrinks(self, height: int, width: int) -> bool:
        h, w = self.target(height, width)
        return h * w < height * width

    def scale(self, frame: np.ndarray) -> np.ndarray:
        """One uint8 RGB ``[H, W, 3]`` frame at its target size when that is smaller, else unchanged."""
        height, width = frame.shape[:2]
        if not self.shrinks(height, width):
            return frame
        return _resize_in_bands(frame, *self.target(height, width))


ROWS_PER_BAND = 256
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="edgevid-scale")
        return _POOL


def _resize_in_bands(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """:func:`edgevid.model.preprocess.resize_bicubic_aa` of one frame, its width pass (the costly one, and
    independent per row) run on bands of rows in parallel: the same integer arithmetic, so the same bytes,
    and no full-size transposed copy of the frame is ever made."""
    from edgevid.model.preprocess import _axis_weights, _resample_last_axis, resize_bicubic_aa
    h, w = frame.shape[:2]
    fast = resize_bicubic_aa(frame[None], height, width, workers=1, banded_only=True)
    if fast is not None:                # the banded float32 path: same bytes, several times less CPU
        return fast[0]
    planes = frame.transpose(2, 0, 1)                                   # [C, H, W], a view
    if w != width:
        wide = _axis_weights(w, width)
        bands = [(r, min(h, r + ROWS_PER_BAND)) for r in range(0, h, ROWS_PER_BAND)]
        narrow = np.empty((planes.shape[0], h, width), dtype=np.uint8)

        def one(band):
            r0, r1 = band
            narrow[:, r0:r1] = _resample_last_axis(np.ascontiguousarray(planes[:, r0:r1]), wide)
        list(_pool().map(one, bands))
        planes = narrow
    if h != height:
        columns = np.ascontiguousarray(planes.transpose(0, 2, 1))          # [C, width, H]
        planes = _resample_last_axis(columns, _axis_weights(h, height)).transpose(0, 2, 1)
    return np.ascontiguousarray(planes.transpose(1, 2, 0))


def scale_frame(frame: np.ndarray, working: WorkingSize | None) -> np.ndarray:
    return frame if working is None else working.scale(frame)
