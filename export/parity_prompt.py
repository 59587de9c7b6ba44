"""``ParityPrompt``: a deterministic synthetic prompt that exercises every decoder path.

Two video frames of different sizes (the second one padded, so padding removal in the vision graph is
tested), each written as "mm:ss <boi><|video|>*k<eoi>" like the real prompt, surrounded by text so the
prompt is longer than the sliding window.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# frame grids in patches (multiples of the pooling kernel); all frames padded to the largest count
FRAME_GRIDS = ((6, 6), (9, 3))


@dataclass(frozen=True)
class ParityPrompt:
    input_ids: np.ndarray            # int64 [1, seq]
    mm_token_type_ids: np.ndarray    # int64 [1, seq] (0 text, 2 video)
    pixel_values: np.ndarray         # float32 [frames, patches, 3 * patch**2]
    pixel_position_ids: np.ndarray   # int64 [frames, patches, 2], -1 = padding
    soft_tokens: tuple[int, ...]     # per frame

    @property
    def num_frames(self) -> int:
        return self.pixel_values.shape[0]


def frame_patches(grid_w: int, grid_h: int, max_patches: int, patch_dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    count = grid_w * grid_h
    pixels = np.zeros((max_patches, patch_dim), dtype=np.float32)
    pixels[:count] = rng.random((count, patch_dim), dtype=np.float32)
    positions = np.full((max_patches, 2), -1, dtype=np.int64)
    ys, xs = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    positions[:count, 0] = xs.reshape(-1)
    positions[:count, 1] = ys.reshape(-1)
    return pixels, positions


def build_parity_prompt(config, seed: int = 0, min_length: int | None = None) -> ParityPrompt:
    """A prompt for ``config`` (a ``Gemma4Config``) longer than the sliding window."""
    rng = np.random.default_rng(seed)
    text = config.get_text_config()
    vision = config.vision_config
    kernel = vision.pooling_kernel_size
    patch_dim = 3 * vision.patch_size ** 2
    max_patches = max(w * h for w, h in FRAME_GRIDS)
    max_patches = -(-max_patches // kernel ** 2) * kernel ** 2

    specials = {t for t in (config.boi_token_id, config.eoi_token_id, config.image_token_id, config.video_token_id,
                            getattr(config, "audio_token_id", None), getattr(config, "boa_token_id", None),
                            getattr(config, "eoa_token_index", None), text.pad_token_id, text.bos_token_id)
                if t is not None}
    eos = text.eos_token_id if isinstance(text.eos_token_id, list) else [text.eos_token_id]
    specials |= {t for t in eos if t is not None}
    upper = min(text.vocab_size, 250_000)
    def words(n):
        out = []
        while len(out) < n:
            t = int(rng.integers(3, upper))
            if t not in specials:
                out.append(t)
        return out

    ids = [text.bos_token_id if text.bos_token_id is not None else 2] + words(6)
    types = [0] * len(ids)
    pixels, positions, soft = [], [], []
    for w, h in FRAME_GRIDS:
        px, pos = frame_patches(w, h, max_patches, patch_dim, rng)
        pixels.append(px)
        positions.append(pos)
        k = (w * h) // kernel ** 2
        soft.append(k)
        frame = words(3) + [config.boi_token_id] + [config.video_token_id] * k + [config.eoi_token_id]
        ids += frame
        types += [0] * 4 + [2] * k + [0]
    target = max(min_length or 0, text.sliding_window + 12, len(ids) + 8)
    ids += words(target - len(ids))
    types += [0] * (target - len(types))
    return ParityPrompt(
        input_ids=np.asarray([ids], dtype=np.int64),
        mm_token_type_ids=np.asarray([types], dtype=np.int64),
        pixel_values=np.stack(pixels),
        pixel_position_ids=np.stack(positions),
        soft_tokens=tuple(soft),
    )
