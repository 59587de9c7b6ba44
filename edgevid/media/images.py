"""Still images through Pillow (EXIF orientation applied): :func:`load_image`."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevid.errors import UnreadableMediaError, UnsupportedMediaError

from .policy import SourcePolicy
from .sampled import DEFAULT_FPS, SampledVideo
from .sources import MediaSource, open_source


def load_image(source, policy: SourcePolicy | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] from png/jpeg/webp (or a GIF's first frame); EXIF orientation honoured."""
    if isinstance(source, np.ndarray):
        return _as_rgb_array(source)
    owned = not isinstance(source, MediaSource)
    media = open_source(source, policy)
    try:
        if media.kind == "video":
            raise UnsupportedMediaError(f"expected an image, got a video ({media.mime})", source=media.source)
        return decode_image(media.path, media.source)
    finally:
        if owned:
            media.close()


def decode_image(path: str, source: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableMediaError(f"the image could not be decoded: {exc}", source=source) from exc


def image_as_video(media: MediaSource):
    """A still image given where a video was expected: a one-frame video at t=0."""
    frame = decode_image(media.path, media.source)
    return SampledVideo(frames=frame[None], timestamps=np.zeros(1), indices=np.zeros(1, np.int64), fps=DEFAULT_FPS,
                        duration=0.0, frame_count=1, width=frame.shape[1], height=frame.shape[0],
                        source=media.source)


def _as_rgb_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise UnsupportedMediaError(f"an image array must be uint8 [H, W, 3], got {array.dtype} {array.shape}")
    return array
