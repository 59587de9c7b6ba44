"""Parity of edgevid.model.preprocess with transformers' Gemma 4 video and image processors.

References:
* images, Pillow backend: transformers' own ``Gemma4ImageProcessorPil``, called as is.
* video frames (``Gemma4VideoProcessor``) and images with the torchvision backend (``Gemma4ImageProcessor``):
  both need torchvision, which this environment cannot install (the registry only serves CUDA builds).
  When torchvision imports, the real classes are compared (``test_*_against_real_torchvision_processor``).
  Otherwise the reference is assembled from the same operations: transformers' own
  ``get_aspect_ratio_preserving_size`` / ``convert_image_to_patches`` / ``pad_along_first_dim``, and the
  resize torchvision performs — ``torchvision.transforms.v2.functional.resize_image`` hands a uint8 CPU
  tensor with BICUBIC + antialias straight to ``torch.nn.functional.interpolate`` (uint8 is an accepted
  dtype there, no float round trip) — followed by the fused rescale/normalize (x / 255 in float32,
  video) or ``uint8 * (1/255)`` (image, do_normalize=False).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.models.gemma4 import image_processing_pil_gemma4 as tf_pil  # noqa: E402

from edgevid.errors import InvalidRequestError  # noqa: E402
from reference_pixels import reference_pixels, torch_resize  # noqa: E402
from edgevid.model.preprocess import (  # noqa: E402
    preprocess_image, preprocess_video, resize_bicubic_aa, target_size,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
TOL = 1e-5

# (height, width) -> expected soft tokens per video frame at the 70 budget
VIDEO_SIZES = {
    (720, 1280): 66,     # 288 x 528
    (1280, 720): 66,     # portrait
    (30, 40): 63,        # tiny, upscaled to 336 x 432
    (500, 500): 64,      # square, 384 x 384
    (120, 2000): 68,     # very wide: 96 x 1632
}


def _frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Textured frames: gradients + noise + hard edges, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx // 7 + yy // 5) % 2) * 255], -1)
    noise = rng.integers(-40, 41, size=(n, h, w, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _assert_same(ours, ref_pixels, ref_positions, ref_soft):
    assert ours.pixel_values.dtype == np.float32 and ours.position_ids.dtype == np.int64
    assert ours.pixel_values.shape == ref_pixels.shape
    diff = float(np.abs(ours.pixel_values - ref_pixels.astype(np.float32)).max())
    assert diff <= TOL, f"max abs pixel diff {diff}"
    np.testing.assert_array_equal(ours.position_ids, ref_positions)
    assert ours.soft_tokens == list(ref_soft)
    return diff


@pytest.mark.parametrize("size", list(VIDEO_SIZES))
def test_video_matches_gemma4_video_processor_steps(size):
    frames = _frames(3, *size, seed=sum(size))
    ours = preprocess_video(frames)
    diff = _assert_same(ours, *reference_pixels(frames, 70, "normalize"))
    assert diff == 0.0    # the uint8 kernel is reproduced bit for bit
    assert ours.soft_tokens == [VIDEO_SIZES[size]] * 3
    assert ours.pixel_values.shape == (3, 630, 768)


def test_1280x720_frame_is_288x528_and_66_tokens():
    assert target_size(720, 1280, 70) == (288, 528)
    out = preprocess_video(_frames(2, 720, 1280, seed=1))
    real = out.position_ids[0][out.position_ids[0, :, 0] >= 0]
    assert len(real) == 66 * 9
    assert real[:3].tolist() == [[0, 0], [1, 0], [2, 0]]      # (x, y), row-major
    assert real[-1].tolist() == [528 // 16 - 1, 288 // 16 - 1]
    assert (out.position_ids[:, 594:] == -1).all() and (out.pixel_values[:, 594:] == 0).all()


@pytest.mark.parametrize("size", [(720, 1280), (1280, 720), (30, 40), (500, 500)])
def test_image_matches_gemma4_image_processor_pil(size):
    image = _frames(1, *size, seed=7 + size[0])[0]
    processor = tf_pil.Gemma4ImageProcessorPil()
    ref = processor(images=[image], return_tensors="np")
    ours = preprocess_image(image, backend="pil")
    _assert_same(ours, ref["pixel_values"], ref["image_position_ids"], ref["num_soft_tokens_per_image"])


@pytest.mark.parametrize("size", [(720, 1280), (1280, 720), (30, 40), (500, 500)])
def test_image_matches_gemma4_image_processor_torchvision_steps(size):
    image = _frames(1, *size, seed=11 + size[1])[0]
    ours = preprocess_image(image)
    _assert_same(ours, *reference_pixels(image[None], 280, "scale"))


def test_resize_is_torch_exact_on_both_memory_layouts():
    frames = _frames(2, 97, 203, seed=3)
    ref = torch_resize(frames, 144, 48).permute(0, 2, 3, 1).numpy()
    ref_cl = torch.nn.functional.interpolate(
        torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), size=[144, 48], mode="bicubic",
        align_corners=False, antialias=True).permute(0, 2, 3, 1).numpy()
    ours = resize_bicubic_aa(frames, 144, 48)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours, ref_cl)
    np.testing.assert_array_equal(resize_bicubic_aa(frames, 144, 48, workers=1), ref)   # threads change nothing


@pytest.mark.parametrize("src,dst", [
    ((720, 1280), (288, 528)),        # the usual video frame: both passes as banded float32 products
    ((1080, 1920), (288, 528)),
    ((30, 40), (336, 432)),           # upscale
    ((2160, 3840), (288, 528)),       # 4K: beyond the float32 bound, the integer gather path
    ((720, 1280), (720, 528)),        # one axis only
    ((96, 64), (48, 64)),
])
def test_resize_is_torch_exact_on_every_path(src, dst):
    from edgevid.model.preprocess import _banded_axis, _resize_gather

    frames = _frames(2, *src, seed=src[0])
    frames[1, :, : src[1] // 2] = 255                     # saturated areas: sums at the top of the range
    frames[1, ::2, src[1] // 2 :] = 0                     # and a hard striped edge
    ref = torch_resize(frames, *dst).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(resize_bicubic_aa(frames, *dst), ref)
    np.testing.assert_array_equal(_resize_gather(frames, *dst), ref)
    banded = [_banded_axis(a, b) is not None for a, b in zip(src, dst) if a != b]
    assert all(banded) == (src != (2160, 3840))           # which path ran is the one this case means to test


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installable here (CUDA-only wheels)")
def test_video_against_real_torchvision_processor():
    from transformers import Gemma4VideoProcessor

    frames = _frames(4, 720, 1280, seed=5)
    ref = Gemma4VideoProcessor()(videos=[frames], do_sample_frames=False, return_tensors="np")
    ours = preprocess_video(frames)
    _assert_same(ours, ref["pixel_values_videos"], ref["video_position_ids"], [ref["num_soft_tokens_per_video"][0]] * 4)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installable here (CUDA-only wheels)")
def test_image_against_real_torchvision_processor():
    from transformers import Gemma4ImageProcessor

    image = _frames(1, 480, 640, seed=6)[0]
    ref = Gemma4ImageProcessor()(images=[image], return_tensors="np")
    _assert_same(preprocess_image(image), ref["pixel_values"], ref["image_position_ids"],
                 ref["num_soft_tokens_per_image"])


def test_other_budgets_follow_the_same_rule():
    frames = _frames(1, 360, 640, seed=9)
    for budget in (140, 280):
        ours = preprocess_video(frames, max_soft_tokens=budget)
        _assert_same(ours, *reference_pixels(frames, budget, "normalize"))


@pytest.mark.parametrize("bad", [
    np.zeros((2, 32, 32, 3), np.float32),      # not uint8
    np.zeros((32, 32, 3), np.uint8),           # no frame axis
    np.zeros((0, 32, 32, 3), np.uint8),        # no frames
    np.zeros((1, 32, 32, 4), np.uint8),        # RGBA
])
def test_bad_frames_raise_typed_error(bad):
    with pytest.raises(InvalidRequestError):
        preprocess_video(bad)


def test_unsupported_budget_names_accepted_values():
    with pytest.raises(InvalidRequestError, match="70, 140, 280, 560, 1120"):
        preprocess_video(_frames(1, 48, 48, seed=0), max_soft_tokens=100)
