"""Still images through Pillow (EXIF orientation applied): :func:`load_image`.

Pillow's own decompression-bomb limit is set explicitly (:data:`PILLOW_LIMITS`), and every picture is
checked against the policy's ``max_pixels`` from its header, before its pixels are decoded.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevid.errors import PixelLimitError, UnreadableMediaError, UnsupportedMediaError

from .limits import check_pixels
from .policy import DEFAULT_MAX_PIXELS, SourcePolicy
from .sampled import DEFAULT_FPS, SampledVideo
from .sources import MediaSource, open_source


def set_pillow_limit(max_pixels: int) -> int:
    """Pillow refuses pictures over ``2 * MAX_IMAGE_PIXELS``: keep that at or above edgevid's own cap
    (which is checked first and names the setting); its warning is silenced, the check here replaces it."""
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    return Image.MAX_IMAGE_PIXELS


Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
PILLOW_LIMITS = Image.MAX_IMAGE_PIXELS


def load_image(source, policy: SourcePolicy | None = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] from png/jpeg/webp (or a GIF's first frame); EXIF orientation honoured."""
    if isinstance(source, np.ndarray):
        return _as_rgb_array(source)
    policy = policy or SourcePolicy.permissive()
    owned = not isinstance(source, MediaSource)
    media = open_source(source, policy)
    try:
        if media.kind == "video":
            raise UnsupportedMediaError(f"expected an image, got a video ({media.mime})", source=media.source)
        return decode_image(media.path, media.source, policy.max_pixels)
    finally:
        if owned:
            media.close()


def decode_image(path: str, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    try:
        with Image.open(path) as image:
            check_pixels(*image.size, max_pixels, source, "image")
            image.seek(0)
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except Image.DecompressionBombError as exc:
        raise PixelLimitError(f"the image is over the pixel limit (max_pixels, --max-pixels): {exc}", source=source) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableMediaError(f"the image could not be decoded: {exc}", source=source) from exc
    except MemoryError as exc:
        raise UnreadableMediaError("decoding the image ran out of memory", source=source) from exc


def image_as_video(media: MediaSource, limits):
    """A still image given where a video was expected: a one-frame video at t=0 (scaled to the working size)."""
    frame = decode_image(media.path, media.source, limits.max_pixels)
    height, width = frame.shape[:2]
    return SampledVideo(frames=limits.scale(frame)[None], timestamps=np.zeros(1), indices=np.zeros(1, np.int64),
                        fps=DEFAULT_FPS, duration=0.0, frame_count=1, width=width, height=height,
                        source=media.source)


def _as_rgb_array(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise UnsupportedMediaError(f"an image array must be uint8 [H, W, 3], got {array.dtype} {array.shape}")
    return array
