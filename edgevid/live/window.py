"""Turn the frames of a time window into the ``SampledVideo`` the model reads.

``num_frames`` targets are spread uniformly over ``[start, end]`` (the centre of each of ``num_frames``
equal slices) and each takes the nearest frame captured in the window. A frame is never used twice:
when a window spans an outage and targets would share frames, the frames are instead taken uniformly
by index (``floor(i * count / n)``, the rule for files). Timestamps are
relative to the window start, so the prompt's ``mm:ss`` labels count from the window's beginning.
"""
from __future__ import annotations

import cv2
import numpy as np

from edgevid.live.ring import Frame
from edgevid.media import SampledVideo


def pick_uniform(times: np.ndarray, start: float, end: float, num_frames: int) -> np.ndarray:
    """Indices into ``times`` (sorted) nearest to ``num_frames`` evenly spaced targets, unique, sorted."""
    if len(times) <= num_frames:
        return np.arange(len(times))
    targets = start + (np.arange(num_frames) + 0.5) * (end - start) / num_frames
    right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1)
    left = right - 1
    nearest = np.unique(np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right))
    if len(nearest) < num_frames:       # frames bunched around an outage: spread over the frames instead
        return (np.arange(num_frames) * len(times)) // num_frames
    return nearest


def sample_window(frames: list[Frame], start: float, end: float, num_frames: int, *,
                  source: str) -> SampledVideo | None:
    """The sampled video of ``frames`` (oldest first) over ``[start, end]``; ``None`` when empty."""
    if not frames:
        return None
    times = np.array([f.t for f in frames], dtype=np.float64)
    chosen = [frames[i] for i in pick_uniform(times, start, end, num_frames)]
    height, width = chosen[-1].rgb.shape[:2]
    pixels = np.stack([_fit(f.rgb, width, height) for f in chosen])
    duration = max(end - start, 1e-6)
    return SampledVideo(
        frames=pixels,
        timestamps=np.array([f.t - start for f in chosen], dtype=np.float64),
        indices=np.array([f.seq for f in chosen], dtype=np.int64),
        fps=len(frames) / duration,
        duration=duration,
        frame_count=len(frames),
        width=width,
        height=height,
        source=source,
    )


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames from before a reconnect may have another size: bring them to the newest frame's size."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
