"""Gemma 4 vision preprocessing in numpy: resize into the soft-token budget, rescale, patchify.

Equal to transformers' Gemma 4 processors:

* video frames (``Gemma4VideoProcessor``) and images with the default torchvision backend
  (``Gemma4ImageProcessor``) are resized by torchvision's ``resize(..., BICUBIC, antialias=True)``,
  which for uint8 CPU tensors runs PyTorch's native uint8 anti-aliased bicubic kernel. That kernel
  is reproduced here bit for bit (:func:`resize_bicubic_aa`): PIL-style support and weights
  (Keys cubic, a = -0.5), normalised, rounded to int16 at a precision chosen from the largest weight,
  integer accumulation, horizontal pass first, then vertical, each rounded and clamped to uint8.
* images with the Pillow backend (``Gemma4ImageProcessorPil``) use Pillow's own bicubic resize
  (``backend="pil"``).

Sizes: the largest aspect-preserving height and width that are multiples of ``patch_size * pooling``
(48) and give at most ``max_soft_tokens * pooling**2`` patches (:func:`target_size`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgevid.errors import InvalidRequestError, MediaError

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
BACKENDS = ("torchvision", "pil")


@dataclass(frozen=True)
class VisionInput:
    """What the vision encoder takes, for one video (N frames) or one image (N = 1)."""

    pixel_values: np.ndarray   # float32 [N, P, patch_size * patch_size * 3], zero rows = padding
    position_ids: np.ndarray   # int64 [N, P, 2] (x, y) patch coordinates, -1 = padding
    soft_tokens: list[int]     # soft tokens per frame (the vision encoder's output rows per frame)

    @property
    def num_frames(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def total_soft_tokens(self) -> int:
        return int(sum(self.soft_tokens))


# ---- sizes -------------------------------------------------------------------------------------------
def target_size(height: int, width: int, max_soft_tokens: int, patch_size: int = 16,
                pooling: int = 3) -> tuple[int, int]:
    """Largest (height, width), multiples of ``patch_size * pooling``, within the patch budget."""
    max_patches = max_soft_tokens * pooling**2
    target_px = max_patches * patch_size**2
    factor = math.sqrt(target_px / (height * width))
    side = pooling * patch_size
    out_h = int(math.floor(factor * height / side)) * side
    out_w = int(math.floor(factor * width / side)) * side
    if out_h == 0 and out_w == 0:
        raise MediaError(f"cannot resize a {width}x{height} picture to a non-empty size")
    max_side = (max_patches // pooling**2) * side
    if out_h == 0:
        out_h, out_w = side, min(int(math.floor(width / height)) * side, max_side)
    elif out_w == 0:
        out_h, out_w = min(int(math.floor(height / width)) * side, max_side), side
    if out_h * out_w > target_px:
        raise MediaError(
            f"a {width}x{height} picture is too elongated for {max_soft_tokens} soft tokens "
            f"(would need {out_w}x{out_h})")
    return out_h, out_w


# ---- torch-exact anti-aliased bicubic (uint8) ----------------------------------------------------------
def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@dataclass(frozen=True)
class _AxisWeights:
    index: np.ndarray      # int64 [out, taps] source indices (clipped; weight 0 where unused)
    weights: np.ndarray    # int32 [out, taps] fixed-point weights
    precision: int         # fixed-point bits


def _axis_weights(in_size: int, out_size: int) -> _AxisWeights:
    """PyTorch's uint8 anti-aliased bicubic weights for one axis (align_corners=False, no scale)."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    size = np.clip(hi - lo, 0, taps)
    j = np.arange(taps, dtype=np.int64)
    valid = j[None, :] < size[:, None]
    w = np.where(valid, _cubic(((j[None, :] + lo[:, None]) - center[:, None] + 0.5) * invscale), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0.0)
    w_max = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + w_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = w * float(1 << precision)
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    index = np.minimum(lo[:, None] + j[None, :], in_size - 1)
    return _AxisWeights(index=index, weights=np.where(valid, fixed, 0), precision=precision)


def _resample_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One separable pass over ``axis`` of a uint8 array, rounded and clamped back to uint8."""
    aw = _axis_weights(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    acc = np.full(x.shape[:axis] + (out_size,) + x.shape[axis + 1:], 1 << (aw.precision - 1),
                  dtype=np.int32)
    for k in range(aw.index.shape[1]):
        weight = aw.weights[:, k]
        if not weight.any():
            continue
        taken = np.take(x, aw.index[:, k], axis=axis).astype(np.int32)
        taken *= weight.reshape(shape)
        acc += taken
    np.right_shift(acc, aw.precision, out=acc)
    return np.clip(acc, 0, 255).astype(np.uint8)


def resize_bicubic_aa(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 ``[..., H, W, C]`` exactly as ``torch.nn.functional.interpolate(uint8,
    mode="bicubic", antialias=True, align_corners=False)`` does on CPU (width pass first)."""
    out = frames
    if out.shape[-2] != width:
        out = _resample_axis(out, out.ndim - 2, width)
    if out.shape[-3] != height:
        out = _resample_axis(out, out.ndim - 3, height)
    return out


def resize_pil_bicubic(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize one uint8 ``[H, W, 3]`` picture with Pillow's bicubic filter (Gemma4ImageProcessorPil)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


# ---- patches -----------------------------------------------------------------------------------------
def patchify(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, (H/p)*(W/p), p*p*C]``; patches row-major, pixels (row, col, channel)."""
    n, h, w, c = pixels.shape
    ph, pw = h // patch_size, w // patch_size
    grid = pixels.reshape(n, ph, patch_size, pw, patch_size, c).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(n, ph * pw, patch_size * patch_size * c)


def patch_positions(height: int, width: int, patch_size: int) -> np.ndarray:
    """(x, y) of every patch in row-major order, int64 ``[P, 2]``."""
    ys, xs = np.meshgrid(np.arange(height // patch_size), np.arange(width // patch_size), indexing="ij")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.int64)


def _pad(patches: np.ndarray, positions: np.ndarray, max_patches: int) -> tuple[np.ndarray, np.ndarray]:
    n, p, d = patches.shape
    pixel_values = np.zeros((n, max_patches, d), dtype=np.float32)
    pixel_values[:, :p] = patches
    position_ids = np.full((n, max_patches, 2), -1, dtype=np.int64)
    position_ids[:, :p] = positions
    return pixel_values, position_ids


# ---- public entry points -----------------------------------------------------------------------------
def _check(frames: np.ndarray, what: str, max_soft_tokens: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise InvalidRequestError(
            f"{what} must be uint8 RGB [N, H, W, 3] with N >= 1, got {frames.dtype} {list(frames.shape)}")
    if max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
        raise InvalidRequestError(
            f"max_soft_tokens must be one of {', '.join(map(str, SUPPORTED_SOFT_TOKENS))}, got {max_soft_tokens}")
    return frames


def _vision_input(pixels: np.ndarray, patch_size: int, pooling: int, max_soft_tokens: int) -> VisionInput:
    n, h, w, _ = pixels.shape
    patches = patchify(pixels, patch_size)
    pixel_values, position_ids = _pad(patches, patch_positions(h, w, patch_size), max_soft_tokens * pooling**2)
    return VisionInput(pixel_values, position_ids, [patches.shape[1] // pooling**2] * n)


def preprocess_video(frames: np.ndarray, max_soft_tokens: int = 70, patch_size: int = 16,
                     pooling: int = 3) -> VisionInput:
    """uint8 RGB frames ``[N, H, W, 3]`` (one video) -> :class:`VisionInput` like Gemma4VideoProcessor."""
    frames = _check(frames, "video frames", max_soft_tokens)
    h, w = target_size(frames.shape[1], frames.shape[2], max_soft_tokens, patch_size, pooling)
    resized = resize_bicubic_aa(frames, h, w)
    pixels = resized.astype(np.float32) / np.float32(255.0)   # torchvision's fused normalize: x / 255
    return _vision_input(pixels, patch_size, pooling, max_soft_tokens)


def preprocess_image(image: np.ndarray, max_soft_tokens: int = 280, patch_size: int = 16, pooling: int = 3,
                     backend: str = "torchvision") -> VisionInput:
    """uint8 RGB ``[H, W, 3]`` (or ``[1, H, W, 3]``) -> :class:`VisionInput` like Gemma4ImageProcessor.

    ``backend="torchvision"`` matches the default (fast) image processor, ``"pil"`` the Pillow one.
    """
    image = np.asarray(image)
    frames = _check(image[None] if image.ndim == 3 else image, "an image", max_soft_tokens)
    if frames.shape[0] != 1:
        raise InvalidRequestError(f"preprocess_image takes one picture, got {frames.shape[0]}")
    if backend not in BACKENDS:
        raise InvalidRequestError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    h, w = target_size(frames.shape[1], frames.shape[2], max_soft_tokens, patch_size, pooling)
    if backend == "pil":
        resized = resize_pil_bicubic(frames[0], h, w)[None]
        pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)   # transformers' numpy rescale
    else:
        resized = resize_bicubic_aa(frames, h, w)
        pixels = resized.astype(np.float32) * np.float32(1 / 255)             # torch: uint8 * scale
    return _vision_input(pixels, patch_size, pooling, max_soft_tokens)
