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

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edgevid.errors import InvalidRequestError, MediaError

log = logging.getLogger(__name__)

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
    start: np.ndarray      # int64 [out] first source index of each output
    size: np.ndarray       # int64 [out] number of source samples used
    weights: np.ndarray    # float64 [out, taps] fixed-point weights (integers), zero past ``size``
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
    fixed = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))
    return _AxisWeights(start=lo, size=size, weights=np.where(valid, fixed, 0.0), precision=precision)


def _resample_last_axis(x: np.ndarray, aw: _AxisWeights) -> np.ndarray:
    """Resample the last axis of uint8 ``x [..., in]`` -> uint8 ``[..., out]``.

    ``clamp((2**(p-1) + sum_k x[start + k] * w_k) >> p, 0, 255)`` in int32, as PyTorch's uint8 kernel does.
    """
    taps = aw.weights.shape[1]
    index = np.minimum(aw.start[:, None] + np.arange(taps)[None, :], x.shape[-1] - 1)
    weights = aw.weights.astype(np.int32)
    acc = np.full(x.shape[:-1] + (index.shape[0],), 1 << (aw.precision - 1), dtype=np.int32)
    term = np.empty_like(acc)
    for k in range(taps):
        if weights[:, k].any():
            np.multiply(np.take(x, index[:, k], axis=-1), weights[:, k], out=term)
            acc += term
    np.right_shift(acc, aw.precision, out=acc)
    return np.clip(acc, 0, 255, out=acc).astype(np.uint8)


def resize_bicubic_aa(frames: np.ndarray, height: int, width: int, workers: int | None = None, *,
                      banded_only: bool = False) -> np.ndarray | None:
    """Resize uint8 ``[N, H, W, C]`` exactly as ``torch.nn.functional.interpolate(uint8, mode="bicubic",
    antialias=True, align_corners=False)`` does on CPU: width pass first, each pass rounded to uint8.

    Each pass runs as a few float32 matrix products over bands of the input (:class:`_BandedAxis`), exact
    because every partial sum is an integer below 2**24; an axis where that bound does not hold (a
    downscale beyond ~10x) takes the integer gather path instead. Frames are split over ``workers``
    threads (default: CPU count, max 4), each with single-threaded BLAS. ``banded_only``: None instead of
    the integer path (a caller with its own integer fallback).
    """
    n, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    wide = _banded_axis(w, width) if w != width else None
    tall = _banded_axis(h, height) if h != height else None
    if (w != width and wide is None) or (h != height and tall is None):
        return None if banded_only else _resize_gather(frames, height, width, workers)
    out = np.empty((n, height, width, c), dtype=np.uint8)
    workers = min(n, workers or min(4, os.cpu_count() or 1))
    parts = [range(i * n // workers, (i + 1) * n // workers) for i in range(workers)]
    with _single_threaded_blas():
        if workers <= 1:
            _resize_banded(frames, out, parts[0], wide, tall)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(lambda part: _resize_banded(frames, out, part, wide, tall), parts))
    return out


F32_EXACT = 1 << 24     # integers up to here are exact in float32


@dataclass(frozen=True)
class _BandedAxis:
    """One axis of the resize as products ``input[starts[g] : starts[g] + window] @ weights[g]``, ``group``
    outputs each. Inputs enter centred (``x - 128``), so every partial sum stays within ``128 * sum|w|``
    (< 2**24: exact in float32 in any summation order); ``bias`` adds back ``128 * sum(w)`` plus the
    rounding half, as the integer kernel's accumulator starts. Weights and bias carry the kernel's final
    ``>> precision`` as an exact power-of-two scale, so ``floor`` of the sum is the kernel's result."""

    weights: np.ndarray      # float32 [groups, window, group]
    starts: tuple[int, ...]
    window: int
    group: int
    out_size: int
    bias: np.ndarray         # float32 [out_size]


def _banded_axis(in_size: int, out_size: int, group: int = 16) -> _BandedAxis | None:
    aw = _axis_weights(in_size, out_size)
    total = float(np.abs(aw.weights).sum(axis=1).max())
    if 128 * total + (1 << aw.precision) >= F32_EXACT:
        return None
    if aw.precision > 16 and 255 * total + (1 << aw.precision) >= F32_EXACT:
        return None         # a rounded sum past 2**24 must mean a value >= 256 (clamped): true up to 16 bits
    groups = -(-out_size // group)
    first = aw.start[np.arange(groups) * group]
    ends = aw.start + aw.size
    last = np.minimum(np.arange(1, groups + 1) * group, out_size) - 1
    window = int((ends[last] - first).max())
    starts = np.minimum(first, in_size - window)
    scale = 1.0 / (1 << aw.precision)
    weights = np.zeros((groups, window, group), dtype=np.float32)
    for o in range(out_size):
        g, j = divmod(o, group)
        taps = int(aw.size[o])
        weights[g, aw.start[o] - starts[g] + np.arange(taps), j] = aw.weights[o, :taps] * scale
    bias = ((128 * aw.weights.sum(axis=1) + (1 << (aw.precision - 1))) * scale).astype(np.float32)
    return _BandedAxis(weights, tuple(int(v) for v in starts), window, group, out_size, bias)


def _resize_banded(frames, out, part, wide: _BandedAxis | None, tall: _BandedAxis | None) -> None:
    """Resize frames ``part`` of ``frames`` into ``out``, channel planes throughout (buffers reused)."""
    import cv2

    _, h, w, c = frames.shape
    height, width = out.shape[1:3]
    planes = np.empty((c, h, w), dtype=np.float32)
    for i in part:
        for k, plane in enumerate(cv2.split(np.ascontiguousarray(frames[i]))):
            cv2.subtract(plane, 128.0, dst=planes[k], dtype=cv2.CV_32F)
        x = planes.reshape(c * h, w)
        if wide is not None:                                  # along x: rows (channel, y)
            x = _round(_banded_columns(x, wide), recentre=tall is not None)
        if tall is not None:                                  # along y, each channel plane
            x = x.reshape(c, h, width)
            x = _round(np.stack([_banded_rows(x[k], tall) for k in range(c)]), recentre=False)
        else:
            x = x + np.float32(128) if wide is None else x
        out[i] = cv2.merge(list(x.reshape(c, height, width).astype(np.uint8)))


def _banded_columns(x: np.ndarray, axis: _BandedAxis) -> np.ndarray:
    g, window = axis.group, axis.window
    acc = np.empty((x.shape[0], len(axis.weights) * g), dtype=np.float32)
    for k, (start, weights) in enumerate(zip(axis.starts, axis.weights)):
        np.matmul(x[:, start : start + window], weights, out=acc[:, k * g : (k + 1) * g])
    acc = acc[:, : axis.out_size]
    acc += axis.bias
    return acc


def _banded_rows(x: np.ndarray, axis: _BandedAxis) -> np.ndarray:
    g, window = axis.group, axis.window
    acc = np.empty((len(axis.weights) * g, x.shape[1]), dtype=np.float32)
    for k, (start, weights) in enumerate(zip(axis.starts, axis.weights)):
        np.matmul(weights.T, x[start : start + window], out=acc[k * g : (k + 1) * g])
    acc = acc[: axis.out_size]
    acc += axis.bias[:, None]
    return acc


def _round(acc: np.ndarray, *, recentre: bool) -> np.ndarray:
    """floor + clamp to [0, 255] (the kernel's shift and clamp), minus 128 again when another pass follows."""
    np.floor(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    if recentre:
        acc -= np.float32(128)
    return acc


class _single_threaded_blas:
    """BLAS on one thread while frames are split over our own threads (its pool, spinning on shared
    cores, made the small products many times slower); a no-op without threadpoolctl."""

    _controller = None

    def __enter__(self):
        self._limit = None
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return self
        if _single_threaded_blas._controller is None:
            _single_threaded_blas._controller = ThreadpoolController()
        self._limit = _single_threaded_blas._controller.limit(limits=1, user_api="blas")
        return self

    def __exit__(self, *exc):
        if self._limit is not None:
            self._limit.restore_original_limits()


def _resize_gather(frames: np.ndarray, height: int, width: int, workers: int | None = None) -> np.ndarray:
    """The integer path: one gather + multiply-add per tap (any scale; ~10x slower than the banded one)."""
    n, h, w, c = frames.shape
    wide = _axis_weights(w, width) if w != width else None
    tall = _axis_weights(h, height) if h != height else None
    out = np.empty((n, height, width, c), dtype=np.uint8)

    def resize_one(i: int) -> None:
        planes = np.ascontiguousarray(frames[i].transpose(2, 0, 1))          # [C, H, W]
        if wide is not None:
            planes = _resample_last_axis(planes, wide)                       # [C, H, width]
        if tall is not None:                                                 # columns as rows: [C, width, height]
            planes = _resample_last_axis(np.ascontiguousarray(planes.transpose(0, 2, 1)), tall).transpose(0, 2, 1)
        out[i] = planes.transpose(1, 2, 0)

    workers = min(n, workers or min(4, os.cpu_count() or 1))
    if workers <= 1:
        for i in range(n):
            resize_one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(resize_one, range(n)))
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
    return _patch_grid(pixels, patch_size).reshape(n, (h // patch_size) * (w // patch_size), -1)


def _patch_grid(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """View ``[N, H/p, W/p, p, p, C]`` of ``[N, H, W, C]``."""
    n, h, w, c = pixels.shape
    ph, pw = h // patch_size, w // patch_size
    return pixels.reshape(n, ph, patch_size, pw, patch_size, c).transpose(0, 1, 3, 2, 4, 5)


def patch_positions(height: int, width: int, patch_size: int) -> np.ndarray:
    """(x, y) of every patch in row-major order, int64 ``[P, 2]``."""
    ys, xs = np.meshgrid(np.arange(height // patch_size), np.arange(width // patch_size), indexing="ij")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.int64)


def _vision_input(resized: np.ndarray, rescale: str, patch_size: int, pooling: int,
                  max_soft_tokens: int) -> VisionInput:
    """Rescale uint8 frames straight into the padded patch tensor (no intermediate float copies)."""
    n, h, w, c = resized.shape
    ph, pw = h // patch_size, w // patch_size
    max_patches = max_soft_tokens * pooling**2
    pixel_values = np.zeros((n, max_patches, patch_size * patch_size * c), dtype=np.float32)
    dest = pixel_values[:, :ph * pw].reshape(n, ph, pw, patch_size, patch_size, c)   # a view
    grid = _patch_grid(resized, patch_size)
    if rescale == "divide":       # torchvision's fused rescale + normalize (mean 0, std 1): x / 255 in float32
        np.divide(grid, np.float32(255.0), out=dest)
    elif rescale == "multiply":   # torchvision rescale only: uint8 tensor * (1/255) in float32
        np.multiply(grid, np.float32(1 / 255), out=dest)
    else:                         # transformers' numpy rescale: float64(x) * (1/255), then float32
        dest[...] = (grid.astype(np.float64) * (1 / 255)).astype(np.float32)
    position_ids = np.full((n, max_patches, 2), -1, dtype=np.int64)
    position_ids[:, :ph * pw] = patch_positions(h, w, patch_size)
    return VisionInput(pixel_values, position_ids, [ph * pw // pooling**2] * n)


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


def preprocess_video(frames: np.ndarray, max_soft_tokens: int = 70, patch_size: int = 16,
                     pooling: int = 3, source_size: tuple[int, int] | None = None) -> VisionInput:
    """uint8 RGB frames ``[N, H, W, 3]`` (one video) -> :class:`VisionInput` like Gemma4VideoProcessor.

    ``source_size`` (height, width) is the decoded size when ``frames`` were already scaled at decode
    (:class:`edgevid.media.WorkingSize`, the same resize): the target is computed from it, so frames
    found at their target size are not resized again and the result is bit-identical.
    """
    frames = _check(frames, "video frames", max_soft_tokens)
    height, width = source_size or frames.shape[1:3]
    h, w = target_size(height, width, max_soft_tokens, patch_size, pooling)
    if frames.shape[1:3] not in ((height, width), (h, w)):
        log.warning("video frames of %dx%d were scaled for another budget than %d soft tokens: resizing again "
                    "(not bit-exact)", frames.shape[2], frames.shape[1], max_soft_tokens)
    return _vision_input(resize_bicubic_aa(frames, h, w), "divide", patch_size, pooling, max_soft_tokens)


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
        return _vision_input(resize_pil_bicubic(frames[0], h, w)[None], "numpy", patch_size, pooling, max_soft_tokens)
    return _vision_input(resize_bicubic_aa(frames, h, w), "multiply", patch_size, pooling, max_soft_tokens)
