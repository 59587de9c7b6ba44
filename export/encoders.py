"""Exportable wrappers for the two small graphs: ``VisionEncoderGraph`` and ``EmbedTokensGraph``.

``VisionEncoderGraph``: the checkpoint's vision tower plus ``embed_vision``. ``image_features`` is
[frames, pooled_slots, text_hidden] (pooled_slots = patches / pooling area): each frame's real soft tokens
come first, the slots past them (padding) follow, and the runtime keeps each frame's first
``real patches / pooling area`` rows (what transformers scatters into the image/video placeholder
positions). No data-dependent shape: OpenVINO mis-shaped the earlier in-graph ``pooled[valid]`` selection
(4 rows for 280), which forced the runtime back to the CPU provider for vision. The encoder layers run
the checkpoint's own projections, norms and MLPs, but attention is written out here: one additive float
mask ``[frames, 1, 1, patches]`` (0 / finite large negative) is built once and added to the scores of
every layer, instead of the boolean mask that torch's SDPA decomposition turns into ``Where`` + ``IsNaN``
over the whole ``[frames, heads, patches, patches]`` score tensor in every layer (26% + 2% of the vision
graph's time in onnxruntime, measured). RMSNorms are written as a division by ``Sqrt`` (as in the
decoder) so onnxruntime fuses them; transformers writes ``x * pow(ms, -0.5)``, which it does not.

``EmbedTokensGraph`` (the PyTorch reference for ``embed_graph``, which writes the ONNX graph by hand):
``input_ids`` -> ``inputs_embeds`` (scaled) and, for per-layer-input models, the
token-identity part of the per-layer inputs. Placeholder tokens (image, video, audio) are replaced by the
pad id inside the graph, as transformers does, so the runtime passes raw ids and only overwrites the
placeholder rows of ``inputs_embeds`` with ``image_features``; ``per_layer_inputs`` need no edit.
"""
from __future__ import annotations

import torch
from torch import nn

from .compat import apply_vision_rope, attention_scaling
from .decoder import rms_norm

MASK_VALUE = -1.0e9


class VisionEncoderGraph(nn.Module):
    """Patch embedder + encoder of the checkpoint; pooling rewritten so the soft-token count follows the
    patch axis symbolically (transformers' ``one_hot(..., length)`` freezes it at export time)."""

    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower
        self.embed_vision = model.model.embed_vision
        self.kernel = model.config.vision_config.pooling_kernel_size
        self.root_hidden = model.config.vision_config.hidden_size ** 0.5
        self.standardize = bool(model.config.vision_config.standardize)

    def _pool(self, hidden, positions, padding):
        k = self.kernel
        hidden = hidden.masked_fill(padding.unsqueeze(-1), 0.0)
        slots = torch.arange(hidden.shape[1] // (k * k), device=hidden.device)
        clamped = positions.clamp(min=0)
        grid_w = clamped[..., 0].max(dim=-1, keepdim=True)[0] + 1
        cell = torch.div(clamped, k, rounding_mode="floor")
        cell = cell[..., 0] + torch.div(grid_w, k, rounding_mode="floor") * cell[..., 1]      # [F, P]
        weights = (cell.unsqueeze(-1) == slots).float() / (k * k)                               # [F, P, L]
        pooled = weights.transpose(1, 2) @ hidden.float()                                       # [F, L, H]
        valid = (weights != 0).any(dim=1)                                                       # [F, L]
        return pooled * self.root_hidden, valid

    @staticmethod
    def _attention(attn, h, rope, positions, mask):
        """Gemma4VisionAttention (eager numerics: scaling 1.0, fp32 softmax) with an additive mask."""
        shape = (*h.shape[:-1], -1, attn.head_dim)
        cos, sin = rope
        q = apply_vision_rope(rms_norm(attn.q_proj(h).view(shape), attn.q_norm), cos, sin, positions)
        k = apply_vision_rope(rms_norm(attn.k_proj(h).view(shape), attn.k_norm), cos, sin, positions)
        v = rms_norm(attn.v_proj(h).view(shape), attn.v_norm).transpose(1, 2)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        groups = attn.num_key_value_groups
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3))
        scaling = attention_scaling(attn)
        if scaling != 1.0:
            scores = scores * scaling
        probs = torch.softmax((scores + mask).float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(*h.shape[:-1], -1)
        return attn.o_proj(out)

    def _encode(self, embeds, positions, padding):
        encoder = self.tower.encoder
        zero = torch.zeros((), dtype=embeds.dtype)
        neg = torch.full((), MASK_VALUE, dtype=embeds.dtype)
        mask = torch.where(padding, neg, zero)[:, None, None, :]                              # [F, 1, 1, P]
        rope = encoder.rotary_emb(embeds, positions)
        h = embeds
        for layer in encoder.layers[: encoder.config.num_hidden_layers]:
            attn_out = self._attention(layer.self_attn, rms_norm(h, layer.input_layernorm), rope, positions, mask)
            h = h + rms_norm(attn_out, layer.post_attention_layernorm)
            h = h + rms_norm(layer.mlp(rms_norm(h, layer.pre_feedforward_layernorm)), layer.post_feedforward_layernorm)
        return h

    def forward(self, pixel_values, pixel_position_ids):
        padding = (pixel_position_ids == -1).all(dim=-1)
        embeds = self.tower.patch_embedder(pixel_values, pixel_position_ids, padding)
        hidden = self._encode(embeds, pixel_position_ids, padding)
        features, _ = self._pool(hidden, pixel_position_ids, padding)                          # [F, L, H]
        if self.standardize:
            features = (features - self.tower.std_bias.float()) * self.tower.std_scale.float()
        return self.embed_vision(inputs_embeds=features.to(embeds.dtype))


class EmbedTokensGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        config = model.config
        text = model.model.language_model
        self.embed_tokens = text.embed_tokens
        self.embed_per_layer = getattr(text, "embed_tokens_per_layer", None) if text.hidden_size_per_layer_input else None
        self.num_layers = config.get_text_config().num_hidden_layers
        self.per_layer_dim = config.get_text_config().hidden_size_per_layer_input
        self.pad_id = config.get_text_config().pad_token_id or 0
        self.placeholders = [
            t for t in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None),
                        getattr(config, "audio_token_id", None)) if t is not None
        ]

    def forward(self, input_ids):
        is_placeholder = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.placeholders:
            is_placeholder = is_placeholder | (input_ids == token)
        ids = torch.where(is_placeholder, torch.full_like(input_ids, self.pad_id), input_ids)
        embeds = self.embed_tokens(ids)
        if self.embed_per_layer is None:
            return embeds
        per_layer = self.embed_per_layer(ids).reshape(*ids.shape, self.num_layers, self.per_layer_dim)
        return embeds, per_layer
