"""Animated GIFs through Pillow, no FFmpeg: frame times come from each frame's duration."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from edgevid.errors import EmptyMediaError, UnreadableMediaError

from .sources import MediaSource
from .sampled import DEFAULT_FPS, SampledVideo, sample_indices

DEFAULT_DURATION_MS = 100       # browsers' treatment of a 0/absent delay


def gif_timeline(image: Image.Image) -> list[float]:
    """Start time (s) of every frame, from per-frame durations (ms)."""
    starts, clock = [], 0.0
    for frame in ImageSequence.Iterator(image):
        starts.append(clock / 1000.0)
        duration = frame.info.get("duration") or DEFAULT_DURATION_MS
        clock += duration
    starts.append(clock / 1000.0)     # end of the last frame
    return starts


def sample_gif(media: MediaSource, num_frames: int) -> SampledVideo:
    try:
        with Image.open(media.path) as image:
            timeline = gif_timeline(image)
            total = len(timeline) - 1
            if total == 0:
                raise EmptyMediaError("the GIF has no frames", source=media.source)
            indices = sample_indices(total, num_frames)
            frames = []
            for index in indices:
                image.seek(int(index))          # Pillow composites frames in order as it seeks
                frames.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError, EOFError, ValueError) as exc:
        raise UnreadableMediaError(f"the GIF could not be decoded: {exc}", source=media.source) from exc
    duration = timeline[-1]
    fps = total / duration if duration > 0 else DEFAULT_FPS
    stack = np.stack(frames)
    return SampledVideo(frames=stack, timestamps=np.array([timeline[i] for i in indices], dtype=np.float64),
                        indices=indices, fps=float(fps), duration=float(duration), frame_count=total,
                        width=int(stack.shape[2]), height=int(stack.shape[1]), source=media.source)
