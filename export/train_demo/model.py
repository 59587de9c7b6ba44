"""The demo's Gemma 4: a config of the real architecture (per-layer inputs, KV sharing, sliding + full
attention, patch-16 / pool-3 vision tower) small enough to learn the task in minutes, and the start
values that give its soft tokens content and position."""
from __future__ import annotations

from .recipe import DemoRecipe


def demo_config(recipe: DemoRecipe):
    """E2B-shaped, tiny: PLE, KV sharing (last 2 of 5 layers), sliding + full attention with a larger
    full-attention head dim, logit soft-capping, vision tower with the real patch 16 / pooling 3."""
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    from ..demo import demo_token_ids

    ids = demo_token_ids()
    eos = [ids.eos, ids.end_of_turn]
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    text = Gemma4TextConfig(
        vocab_size=recipe.vocab_size, hidden_size=recipe.text_hidden, intermediate_size=2 * recipe.text_hidden,
        num_hidden_layers=len(layer_types), layer_types=layer_types, num_attention_heads=recipe.text_heads,
        num_key_value_heads=recipe.text_kv_heads, head_dim=recipe.text_hidden // recipe.text_heads,
        global_head_dim=2 * recipe.text_hidden // recipe.text_heads, sliding_window=recipe.sliding_window, max_position_embeddings=4096,
        hidden_size_per_layer_input=16, vocab_size_per_layer_input=recipe.vocab_size, num_kv_shared_layers=2,
        final_logit_softcapping=30.0, pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos,
        initializer_range=0.02,
    )
    vision = Gemma4VisionConfig(
        hidden_size=recipe.vision_hidden, intermediate_size=2 * recipe.vision_hidden, num_hidden_layers=recipe.vision_layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, patch_size=16, pooling_kernel_size=3,
        position_embedding_size=256, initializer_range=0.02,
    )
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        boi_token_id=ids.boi, eoi_token_id=ids.eoi, image_token_id=ids.image, video_token_id=ids.video,
        audio_token_id=ids.audio, boa_token_id=ids.boa, eoa_token_index=ids.eoa,
        pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos, tie_word_embeddings=True,
    )


def start_vision_tower(model, recipe: DemoRecipe):
    """Re-initialise the vision tower so its soft tokens carry the patch content and position: a random
    position table (Gemma 4 starts it at all ones, the same vector everywhere), a larger patch projection,
    and small post-norm weights so the residual stream keeps the patch embedding at the start."""
    import torch

    vision = model.model.vision_tower
    with torch.no_grad():             # a field left at 0 keeps Gemma 4's own initialisation
        embedder = vision.patch_embedder
        if recipe.vision_position_std:
            embedder.position_embedding_table.normal_(0.0, recipe.vision_position_std)
        if recipe.vision_patch_std:
            embedder.input_proj.weight.normal_(0.0, recipe.vision_patch_std)
        if recipe.vision_post_norm:
            for layer in vision.encoder.layers:
                layer.post_attention_layernorm.weight.fill_(recipe.vision_post_norm)
                layer.post_feedforward_layernorm.weight.fill_(recipe.vision_post_norm)
    return model


def start_language_model(model, recipe: DemoRecipe):
    """Token embeddings and the soft-token projection at a scale comparable to what the layers add."""
    import torch

    embed = model.model.language_model.embed_tokens
    with torch.no_grad():             # a field left at 0 keeps Gemma 4's own initialisation
        if recipe.text_embed_std:
            embed.weight.normal_(0.0, recipe.text_embed_std)
            if embed.padding_idx is not None:
                embed.weight[embed.padding_idx].zero_()
        if recipe.soft_token_std:
            model.model.embed_vision.embedding_projection.weight.normal_(0.0, recipe.soft_token_std)
        if recipe.text_post_norm:
            for layer in model.model.language_model.layers:
                for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm,
                             layer.post_per_layer_input_norm):
                    norm.weight.fill_(recipe.text_post_norm)
    return model
