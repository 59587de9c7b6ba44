"""Tiny Gemma 4 configs (one per text-decoder shape) and a random-weight checkpoint builder for tests.

Every config keeps the real vision patch size (16 -> 768 values per patch) and pooling kernel (3) so the
runtime's preprocessing applies unchanged, but shrinks widths, depths and the vocabulary so an export takes
seconds. Special token ids are remapped into the small vocabulary (see ``SPECIAL_IDS``).

    from tests.gemma_configs import e2b_like_config, save_random_checkpoint
    folder = save_random_checkpoint(e2b_like_config(), tmp_path / "ckpt", seed=0)

Shapes:
- ``e2b_like_config``: per-layer inputs (PLE) + KV sharing (E2B/E4B), sliding + full attention with a
  larger global head dim, final logit soft-capping.
- ``bidirectional_config``: 31B-style dense: bidirectional attention over vision tokens, ``attention_k_eq_v``
  with its own global KV-head count and head dim, no PLE.
- ``moe_config``: 26B-A4B-style: MoE block beside the dense MLP, bidirectional vision, k_eq_v.
- ``dense_config``: plain sliding/full decoder without any of the above (the smallest).
"""
from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 512
# ids inside the tiny vocabulary (the real model uses 255999, 258880, ...)
SPECIAL_IDS = {
    "pad": 0, "eos": 1, "bos": 2, "end_of_turn": 106,
    "boi": 255, "eoi": 256, "image": 257, "video": 258, "audio": 259, "boa": 260, "eoa": 261,
}
SLIDING_WINDOW = 16


def _vision_config(**overrides):
    from transformers import Gemma4VisionConfig

    values = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, patch_size=16, pooling_kernel_size=3,
        position_embedding_size=128, initializer_range=0.1,
    )
    values.update(overrides)
    return Gemma4VisionConfig(**values)


def _text_config(**overrides):
    from transformers import Gemma4TextConfig

    values = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        sliding_window=SLIDING_WINDOW, max_position_embeddings=4096,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        final_logit_softcapping=30.0, hidden_size_per_layer_input=0, vocab_size_per_layer_input=VOCAB_SIZE,
        pad_token_id=SPECIAL_IDS["pad"], eos_token_id=[SPECIAL_IDS["eos"], SPECIAL_IDS["end_of_turn"]],
        bos_token_id=SPECIAL_IDS["bos"], initializer_range=0.1,
    )
    values.update(overrides)
    return Gemma4TextConfig(**values)


def _gemma4_config(text_config, vision_config=None):
    from transformers import Gemma4Config

    return Gemma4Config(
        text_config=text_config,
        vision_config=vision_config if vision_config is not None else _vision_config(),
        audio_config=None,
        boi_token_id=SPECIAL_IDS["boi"], eoi_token_id=SPECIAL_IDS["eoi"],
        image_token_id=SPECIAL_IDS["image"], video_token_id=SPECIAL_IDS["video"],
        audio_token_id=SPECIAL_IDS["audio"], boa_token_id=SPECIAL_IDS["boa"],
        eoa_token_index=SPECIAL_IDS["eoa"],
        pad_token_id=SPECIAL_IDS["pad"], bos_token_id=SPECIAL_IDS["bos"],
        eos_token_id=[SPECIAL_IDS["eos"], SPECIAL_IDS["end_of_turn"]],
        tie_word_embeddings=True,
    )


def dense_config():
    """Plain sliding + full attention, different global head dim, soft-capping."""
    return _gemma4_config(_text_config(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"]))


def e2b_like_config():
    """E2B/E4B shape: per-layer inputs and the last layers sharing the KV cache of earlier ones. As in E2B, one
    cache layer (0) is read by no shared layer (its cache is written in place by the kernel graph) and the
    last cache layer of each type (1 sliding, 2 full) is read by the shared ones (3, 4)."""
    layer_types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    return _gemma4_config(_text_config(
        num_hidden_layers=5, layer_types=layer_types, hidden_size_per_layer_input=16,
        num_kv_shared_layers=2, use_double_wide_mlp=True,
    ))


def bidirectional_config():
    """31B shape: vision tokens attend bidirectionally (sliding layers), k_eq_v on full layers."""
    return _gemma4_config(_text_config(
        num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        use_bidirectional_attention="vision", attention_k_eq_v=True, num_global_key_value_heads=1,
    ))


def moe_config():
    """26B-A4B shape: a routed MoE block beside the dense MLP in every layer."""
    return _gemma4_config(_text_config(
        num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=32,
        use_bidirectional_attention="vision", attention_k_eq_v=True, num_global_key_value_heads=1,
    ))


ALL_CONFIGS = {
    "dense": dense_config,
    "e2b_like": e2b_like_config,
    "bidirectional": bidirectional_config,
    "moe": moe_config,
}


def build_random_model(config, seed: int = 0):
    """A ``Gemma4ForConditionalGeneration`` in fp32/eval with every weight random (norm scales, position
    tables and layer scalars included, so nothing that is initialised to ones hides a bug)."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                continue
            if "inv_freq" in name or "embed_scale" in name:
                continue
            if tensor.numel() and bool((tensor == 1).all()):       # norm scales, layer scalars, tables
                tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
            elif tensor.numel() and bool((tensor == 0).all()):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model


def save_random_checkpoint(config, folder, seed: int = 0) -> Path:
    """Build a random-weight model for ``config`` and ``save_pretrained`` it (plus a generation config)
    into ``folder``. Returns the folder."""
    folder = Path(folder)
    model = build_random_model(config, seed=seed)
    model.generation_config.eos_token_id = [SPECIAL_IDS["eos"], SPECIAL_IDS["end_of_turn"]]
    model.generation_config.pad_token_id = SPECIAL_IDS["pad"]
    model.generation_config.bos_token_id = SPECIAL_IDS["bos"]
    model.save_pretrained(folder)
    return folder
