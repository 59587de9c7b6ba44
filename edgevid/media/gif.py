"""Animated GIFs through Pillow, no FFmpeg: frame times come from each frame's duration.

The logical screen (every composited frame is that big) is checked against ``max_pixels`` before the
first frame is decoded, and again whenever a frame grows the canvas; frames are scaled to the working
size as they are taken; the decode deadline is checked after every frame, so a 100k-frame GIF stops
in time.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from edgevid.errors import EmptyMediaError, PixelLimitError, UnreadableMediaError

from .images import PILLOW_LIMITS  # noqa: F401  (sets Pillow's own pixel limit explicitly)
from .limits import Deadline, check_pixels
from .sources import MediaSource
from .limits import DecodeLimits
from .sampled import DEFAULT_FPS, SampledVideo, sample_indices

DEFAULT_DURATION_MS = 100       # browsers' treatment of a 0/absent delay


def gif_timeline(image: Image.Image, deadline: Deadline | None = None, max_pixels: int | None = None,
                 source: str = "") -> list[float]:
    """Start time (s) of every frame, from per-frame durations (ms)."""
    starts, clock = [], 0.0
    for frame in ImageSequence.Iterator(image):
        if deadline is not None:
            deadline.check()
        if max_pixels is not None:
            check_pixels(*frame.size, max_pixels, source, "GIF screen")
        starts.append(clock / 1000.0)
        duration = frame.info.get("duration") or DEFAULT_DURATION_MS
        clock += duration
    starts.append(clock / 1000.0)     # end of the last frame
    return starts


def sample_gif(media: MediaSource, num_frames: int, limits: DecodeLimits | None = None) -> SampledVideo:
    limits = limits or DecodeLimits.default(media.source)
    try:
        with Image.open(media.path) as image:
            screen = image.size
            check_pixels(*screen, limits.max_pixels, media.source, "GIF screen")
            timeline = gif_timeline(image, limits.deadline, limits.max_pixels, media.source)
            total = len(timeline) - 1
            if total == 0:
                raise EmptyMediaError("the GIF has no frames", source=media.source)
            indices = sample_indices(total, num_frames)
            frames = []
            for index in indices:
                if int(index) < image.tell():
                    image.seek(0)
                for step in range(image.tell() + 1, int(index) + 1):   # Pillow composites frames in order
                    limits.deadline.check()
                    image.seek(step)
                check_pixels(*image.size, limits.max_pixels, media.source, "GIF screen")
                frames.append(limits.scale(np.asarray(image.convert("RGB"), dtype=np.uint8)))
            stack = np.stack(frames)
    except Image.DecompressionBombError as exc:
        raise PixelLimitError(f"the GIF is over the pixel limit (max_pixels, --max-pixels): {exc}", source=media.source) from exc
    except (UnidentifiedImageError, OSError, EOFError, ValueError) as exc:
        raise UnreadableMediaError(f"the GIF could not be decoded: {exc}", source=media.source) from exc
    duration = timeline[-1]
    fps = total / duration if duration > 0 else DEFAULT_FPS
    return SampledVideo(frames=stack, timestamps=np.array([timeline[i] for i in indices], dtype=np.float64),
                        indices=indices, fps=float(fps), duration=float(duration), frame_count=total,
                        width=int(screen[0]), height=int(screen[1]), source=media.source)
