"""The Gemma 4 processors' pixel steps, spelled with transformers' own helpers: the reference that
edgevid's numpy preprocessing is held to (tests/test_preprocess.py) and that the end-to-end parity tests
feed the PyTorch model when torchvision (so ``AutoProcessor``) is not installed (tests/runtime_models.py).

torchvision's uint8 BICUBIC antialiased resize, which transformers uses for videos, is torch's own
``interpolate`` kernel, so plain torch stands in for it here."""
from __future__ import annotations

import numpy as np

PATCH, POOLING = 16, 3


def torch_resize(frames: np.ndarray, h: int, w: int):
    """What torchvision v2 resize does for a uint8 CPU batch (N, H, W, 3) with BICUBIC and antialias=True:
    an NCHW uint8 tensor."""
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if tuple(video.shape[-2:]) == (h, w):
        return video
    return torch.nn.functional.interpolate(video, size=[h, w], mode="bicubic", align_corners=False, antialias=True)


def reference_pixels(frames: np.ndarray, max_soft_tokens: int, rescale: str = "normalize"):
    """(pixel_values [N, P, 768], position_ids [N, P, 2], soft tokens per frame) as numpy arrays.

    ``rescale="normalize"``: the video processor's fused rescale+normalize, ``(x - 0) / 255`` in float32;
    ``"scale"``: the image processor (do_normalize=False), ``uint8 * (1/255)``."""
    import torch
    from transformers.models.gemma4 import image_processing_pil_gemma4 as tf

    max_patches = max_soft_tokens * POOLING**2
    h, w = tf.get_aspect_ratio_preserving_size(frames.shape[1], frames.shape[2], PATCH, max_patches, POOLING)
    video = torch_resize(frames, h, w)
    if rescale == "normalize":
        video = (video.to(torch.float32) - 0.0) / torch.tensor([255.0, 255.0, 255.0]).view(1, 3, 1, 1)
    else:
        video = video * (1 / 255)
    pixel_values, positions, soft = [], [], []
    for frame in video.numpy():
        patches = tf.convert_image_to_patches(frame, PATCH)
        grid_x, grid_y = np.meshgrid(np.arange(w // PATCH), np.arange(h // PATCH), indexing="xy")
        pos = np.stack([grid_x, grid_y], axis=-1).reshape(patches.shape[0], 2)
        soft.append(patches.shape[0] // POOLING**2)
        patches, pos = tf.pad_along_first_dim(patches, pos, max_patches)
        pixel_values.append(patches)
        positions.append(pos)
    return np.stack(pixel_values), np.stack(positions), soft
