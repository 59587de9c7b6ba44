"""Frames scaled, right after decode, to the size the vision preprocessing would resize them to.

The scaling *is* the preprocessing's resize (:func:`edgevid.model.preprocess.resize_bicubic_aa`, torch's
exact uint8 anti-aliased bicubic, applied frame by frame as it is there), moved to decode time: the
pixels the vision encoder sees do not change by a single bit, and a sampled 8K frame is held at
~0.5 MP instead of 33 MP. ``preprocess_video(frames, source_size=...)`` then finds the frames already
at their target size and does not resize again. Frames are only ever scaled down: a source smaller than
its target stays as decoded (the preprocessing upscales it later, as before).
"""
from __future__ import annotations

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
        from edgevid.model.preprocess import resize_bicubic_aa
        height, width = frame.shape[:2]
        if not self.shrinks(height, width):
            return frame
        return resize_bicubic_aa(frame[None], *self.target(height, width), workers=1)[0]


def scale_frame(frame: np.ndarray, working: WorkingSize | None) -> np.ndarray:
    return frame if working is None else working.scale(frame)
