"""``DecoderGraph``: the Gemma 4 text decoder rewritten for export, over flat KV-cache tensors.

It runs the checkpoint's own modules (projections, MLPs, router, experts) but owns everything that
transformers does through ``Cache`` objects and mask factories, because those do not survive export:

- Every cache-owning layer keeps a FULL-length cache (``past + seq``); the sliding window is applied in
  the mask, built inside the graph from the 2D ``attention_mask`` (window counted in cache slots, as
  transformers' sliding caches do). Sliding and full caches therefore share one ``past`` length.
- KV-shared layers (E2B/E4B) own no cache: they read the keys/values their producer layer (the last
  non-shared layer of the same attention type) just produced, exactly as transformers' ``shared_kv_states``.
- ``per_layer_inputs`` arrive as the token-identity part (``embed_tokens.onnx`` output); the
  context projection from the merged ``inputs_embeds`` and the combination happen here.
- ``use_bidirectional_attention == "vision"``: the decoder also takes ``input_ids``; contiguous runs of
  image/video tokens in the current chunk form blocks that attend to each other on sliding layers only.
  BOI/EOI are text. A decode step (seq 1) can never open a block, so no special case is needed.
- MoE: routing as transformers does it (softmax -> top-k -> renormalise -> per-expert scale); no
  data-dependent shapes: an ``If`` (torch.cond) picks, by token count, between gathering only the chosen
  experts' weights (tokens x top_k <= experts: decode steps) and running every expert weighted (prefill).
- RMSNorm is written as a division by ``Sqrt`` (ORT fuses it into SimplifiedLayerNormalization).
- Masks are additive with a finite large negative value (never -inf).
- Sliding layers attend only over the cache slots that can be inside the window of the current rows
  (``rows + sliding_window - 1``), sliced from the full-length cache: exact (the others are masked to 0)
  and prefill/decode no longer scale with the whole past on those layers.
- ``num_logits_to_keep`` (scalar; 0 = all positions): only the last k rows go through the KV-shared layers
  (E2B/E4B: 20 of 35 layers) and the lm_head, as transformers does in ``generate``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention_op import group_query_attention, rotary_embedding
from .compat import (attention_scaling, kv_sharing_modes, layer_attention_shape, norm_eps, norm_weight,
                     rope_tables)

MASK_VALUE = -1.0e9


@dataclass(frozen=True)
class DecoderLayout:
    """Facts about the decoder a runtime and the exporter both need."""

    num_hidden_layers: int
    layer_types: tuple[str, ...]
    cache_layers: tuple[int, ...]          # layers with past_key_values.{i}.key/value
    shared_from: dict                      # kv-shared layer -> producer layer
    kv_heads: dict                         # cache layer -> kv heads
    head_dims: dict                        # cache layer -> head dim
    per_layer_inputs: bool
    per_layer_dim: int
    bidirectional_vision: bool
    moe: bool
    hidden_size: int
    vocab_size: int
    sliding_window: int

    @classmethod
    def from_text_config(cls, tc) -> "DecoderLayout":
        modes = kv_sharing_modes(tc)
        n = tc.num_hidden_layers
        cache_layers = tuple(i for i in range(n) if modes[i] != "reuse")
        producers = {}
        for i in cache_layers:
            producers[tc.layer_types[i]] = i          # the last owner of each type wins
        shared_from = {i: producers[tc.layer_types[i]] for i in range(n) if modes[i] == "reuse"}
        return cls(
            num_hidden_layers=n,
            layer_types=tuple(tc.layer_types),
            cache_layers=cache_layers,
            shared_from=shared_from,
            kv_heads={i: layer_attention_shape(tc, i)[0] for i in cache_layers},
            head_dims={i: layer_attention_shape(tc, i)[1] for i in cache_layers},
            per_layer_inputs=bool(tc.hidden_size_per_layer_input),
            per_layer_dim=int(tc.hidden_size_per_layer_input or 0),
            bidirectional_vision=tc.use_bidirectional_attention == "vision",
            moe=bool(tc.enable_moe_block),
            hidden_size=tc.hidden_size,
            vocab_size=tc.vocab_size,
            sliding_window=int(tc.sliding_window),
        )

    def input_names(self) -> list[str]:
        names = ["inputs_embeds"]
        if self.per_layer_inputs:
            names.append("per_layer_inputs")
        names += ["attention_mask", "position_ids"]
        if self.bidirectional_vision:
            names.append("input_ids")
        for i in self.cache_layers:
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        return names + ["num_logits_to_keep"]

    @property
    def in_place_layers(self) -> tuple[int, ...]:
        """Cache layers whose keys/values no KV-shared layer reads: in a kernel graph they attend through
        ``GroupQueryAttention`` and their past/present may be one preallocated buffer written in place.
        Not the sliding layers of a bidirectional-vision model: their vision blocks need ``causal=0``, which
        the onnxruntime builds in onnxruntime-openvino (1.24) and transformers.js do not know."""
        producers = set(self.shared_from.values())
        return tuple(i for i in self.cache_layers if i not in producers
                     and not (self.bidirectional_vision and self.layer_types[i] == "sliding_attention"))

    @property
    def first_shared_layer(self) -> int | None:
        return min(self.shared_from) if self.shared_from else None

    def output_names(self) -> list[str]:
        names = ["logits"]
        for i in self.cache_layers:
            names += [f"present.{i}.key", f"present.{i}.value"]
        return names


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Gemma4RMSNorm, written as a division by Sqrt so onnxruntime fuses it."""
    x32 = x.float()
    out = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + norm_eps(norm))
    weight = norm_weight(norm)
    if weight is not None:
        out = out * weight.float()
    return out.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [batch, seq, heads, dim] with cos/sin [batch, seq, dim]."""
    cos = cos.unsqueeze(2)
    sin = sin.unsqueeze(2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class DecoderGraph(nn.Module):
    """Exportable decoder: ``forward(*inputs)`` in the order of ``layout.input_names()``."""

    def __init__(self, model, kernel: bool = False):
        super().__init__()
        self.kernel = kernel
        text = model.model.language_model
        self.text = text
        self.lm_head = model.lm_head
        self.tc = model.config.get_text_config()
        self.config = model.config
        self.layout = DecoderLayout.from_text_config(self.tc)
        self.softcap = self.tc.final_logit_softcapping
        self.vision_ids = [v for v in (model.config.image_token_id, model.config.video_token_id) if v is not None]

    # ---- pieces ------------------------------------------------------------------------------------
    def _masks(self, attention_mask, past_len, seq_len, input_ids):
        """Additive masks {layer_type: [batch, 1, seq, past+seq]}."""
        total = attention_mask.shape[1]
        q_idx = torch.arange(seq_len, device=attention_mask.device).unsqueeze(1) + (total - seq_len)
        kv_idx = torch.arange(total, device=attention_mask.device).unsqueeze(0)
        causal = (kv_idx <= q_idx).unsqueeze(0)                                  # [1, S, T]
        keep = attention_mask.bool().unsqueeze(1)                                # [B, 1, T]
        window = (kv_idx > q_idx - self.tc.sliding_window).unsqueeze(0)
        sliding_allowed = causal
        if self.layout.bidirectional_vision:
            sliding_allowed = causal | self._vision_blocks(input_ids, total)
        allowed = {
            "full_attention": causal & keep,
            "sliding_attention": sliding_allowed & window & keep,
        }
        zero = torch.zeros((), dtype=torch.float32)
        neg = torch.full((), MASK_VALUE, dtype=torch.float32)
        return {k: torch.where(v, zero, neg).unsqueeze(1) for k, v in allowed.items()}

    def _vision_blocks(self, input_ids, total):
        """[B, S, T] True where query and key sit in the same contiguous block of vision tokens
        (blocks only within the current chunk; past slots are never in a block)."""
        is_vision = torch.zeros_like(input_ids, dtype=torch.bool)
        for token in self.vision_ids:
            is_vision = is_vision | (input_ids == token)
        prev = torch.cat([torch.zeros_like(is_vision[:, :1]), is_vision[:, :-1]], dim=1)
        starts = (is_vision & ~prev).to(torch.int64)
        block = torch.where(is_vision, torch.cumsum(starts, dim=1), torch.zeros_like(starts))  # 0 = text
        same = (block.unsqueeze(2) == block.unsqueeze(1)) & (block.unsqueeze(2) > 0)            # [B, S, S]
        seq = input_ids.shape[1]
        pad = torch.zeros((same.shape[0], seq, total - seq), dtype=torch.bool, device=same.device)
        return torch.cat([pad, same], dim=2)

    def _rope(self, position_ids, layer_type, dtype):
        inv_freq, scaling = rope_tables(self.text.rotary_emb, layer_type)
        freqs = position_ids[..., None].float() * inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)

    def _per_layer(self, inputs_embeds, token_part):
        text = self.text
        proj = text.per_layer_model_projection(inputs_embeds) * text.per_layer_model_projection_scale
        proj = proj.reshape(*inputs_embeds.shape[:-1], self.tc.num_hidden_layers, self.tc.hidden_size_per_layer_input)
        proj = rms_norm(proj, text.per_layer_projection_norm)
        return (proj + token_part) * text.per_layer_input_scale

    def _attention(self, layer, i, h, rope, mask, past, shared, lengths):
        attn = layer.self_attn
        b, s = h.shape[:2]
        d = attn.head_dim
        cos, sin = rope
        q = rms_norm(attn.q_proj(h).view(b, s, -1, d), attn.q_norm)
        if self.kernel and i in self.layout.in_place_layers:
            return self._kernel_attention(attn, i, h, q, rope, mask, past, lengths)
        q = rotate(q, cos, sin).transpose(1, 2)
        present = None
        if i in self.layout.shared_from:
            k, v = shared[self.layout.shared_from[i]]
        else:
            k_raw = attn.k_proj(h).view(b, s, -1, d)
            v_raw = attn.v_proj(h).view(b, s, -1, d) if attn.v_proj is not None else k_raw
            k = rotate(rms_norm(k_raw, attn.k_norm), cos, sin).transpose(1, 2)
            v = rms_norm(v_raw, attn.v_norm).transpose(1, 2)
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
            present = (k, v)
            shared[i] = present
        if self.layout.layer_types[i] == "sliding_attention":
            k, v, mask = self._window(k, v, mask, s)
        return attn.o_proj(self._grouped_attention(q, k, v, mask, attention_scaling(attn))), present

    def _kernel_attention(self, attn, i, h, q, rope, mask, past, lengths):
        """One ``GroupQueryAttention``: q/k normalised and rotated here, the cache appended (in place when the
        runtime shares past and present), window and grouped heads inside the kernel."""
        b, s = h.shape[:2]
        d = attn.head_dim
        k_raw = attn.k_proj(h).view(b, s, -1, d)
        v_raw = attn.v_proj(h).view(b, s, -1, d) if attn.v_proj is not None else k_raw
        v = rms_norm(v_raw, attn.v_norm)
        # RoPE as one fused node per tensor: the caches are this call's own rows (one per token)
        cos, sin = rope
        half = d // 2
        rows = torch.arange(b * s, device=h.device).view(b, s)
        cos_rows, sin_rows = cos[..., :half].reshape(b * s, half), sin[..., :half].reshape(b * s, half)
        q = rotary_embedding(q.reshape(b, s, -1), rows, cos_rows, sin_rows, q.shape[2]).view(b, s, -1, d)
        k = rotary_embedding(rms_norm(k_raw, attn.k_norm).reshape(b, s, -1), rows, cos_rows, sin_rows,
                             k_raw.shape[2]).view(b, s, -1, d)
        sliding = self.layout.layer_types[i] == "sliding_attention"
        # the additive mask goes in as attention_bias: it carries the padding of left-padded rows (the
        # kernel's own causal and window rules count cache slots, as transformers' caches do)
        out, key, value = group_query_attention(
            q.reshape(b, s, -1), k.reshape(b, s, -1), v.reshape(b, s, -1), past[0], past[1], *lengths,
            mask, q.shape[2], k.shape[2], float(attention_scaling(attn)), self.tc.sliding_window if sliding else -1)
        return attn.o_proj(out), (key, value)

    def _window(self, k, v, mask, rows):
        """Sliding layers: only the last ``rows + sliding_window - 1`` cache slots can be inside the window
        of any of the ``rows`` (last) query positions; the mask gives every earlier slot -1e9, whose
        softmax weight is exactly 0, so dropping them is exact. The cache itself stays full length. Prefill
        chunks and decode steps then attend over at most ``rows + window - 1`` slots, not the whole past."""
        total = k.shape[2]
        keep = torch.sym_min(total, rows + self.tc.sliding_window - 1)
        start = total - keep
        return k.narrow(2, start, keep), v.narrow(2, start, keep), mask.narrow(3, start, keep)

    @staticmethod
    def _grouped_attention(q, k, v, mask, scaling):
        """Grouped-query attention without repeating K/V over the past: the ``groups`` query heads that
        share a KV head are stacked along the query axis, ``q [b, kv, groups*s, d] @ k [b, kv, d, t]``
        (transformers' ``repeat_kv`` is an ``Expand`` copying the whole past per layer per step in ONNX:
        34% of a decode step, measured). Same numerics: scale, additive mask, fp32 softmax."""
        b, heads, s, d = q.shape
        kv = k.shape[1]
        groups = heads // kv
        q = q.reshape(b, kv, groups * s, d)
        scores = torch.matmul(q, k.transpose(2, 3))
        if scaling != 1.0:
            scores = scores * scaling
        scores = scores.reshape(b, kv, groups, s, -1) + mask.unsqueeze(1)                    # mask [b, 1, s, t]
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).reshape(b, kv, groups * s, -1)
        out = torch.matmul(probs, v).reshape(b, heads, s, d)
        return out.transpose(1, 2).reshape(b, s, heads * d)

    def _moe(self, layer, residual):
        router, experts = layer.router, layer.experts
        flat = residual.reshape(-1, residual.shape[-1])
        routed = rms_norm(flat, router.norm) * router.scale * router.scalar_root_size
        probs = torch.softmax(router.proj(routed).float(), dim=-1)
        top_w, top_i = torch.topk(probs, k=self.tc.top_k_experts, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        top_w = top_w * router.per_expert_scale[top_i]
        x = rms_norm(flat, layer.pre_feedforward_layernorm_2)

        def gathered(x, top_i, top_w):          # few tokens (decode): only the chosen experts' weights
            gate_up = torch.einsum("th,tkoh->tko", x, experts.gate_up_proj[top_i])
            gate, up = gate_up.chunk(2, dim=-1)
            out = torch.einsum("tki,tkhi->tkh", experts.act_fn(gate) * up, experts.down_proj[top_i])
            return (out * top_w.unsqueeze(-1).to(out.dtype)).sum(dim=1)

        def dense(x, top_i, top_w):             # many tokens (prefill): every expert, weighted
            weights = torch.zeros(x.shape[0], experts.num_experts, dtype=top_w.dtype, device=x.device)
            weights = weights.scatter(1, top_i, top_w)
            gate_up = torch.einsum("th,eoh->teo", x, experts.gate_up_proj)
            gate, up = gate_up.chunk(2, dim=-1)
            out = torch.einsum("tei,ehi->teh", experts.act_fn(gate) * up, experts.down_proj)
            return (out * weights.unsqueeze(-1).to(out.dtype)).sum(dim=1)

        few = flat.shape[0] * self.tc.top_k_experts <= experts.num_experts
        out = torch.cond(few, gathered, dense, (x, top_i, top_w))
        return rms_norm(out.reshape(residual.shape), layer.post_feedforward_layernorm_2)

    def _layer(self, layer, i, h, per_layer_input, rope, mask, past, shared, lengths):
        residual = h
        attn_out, present = self._attention(layer, i, rms_norm(h, layer.input_layernorm), rope, mask, past, shared,
                                            lengths)
        h = residual + rms_norm(attn_out, layer.post_attention_layernorm)
        residual = h
        ff = layer.mlp(rms_norm(h, layer.pre_feedforward_layernorm))
        if layer.enable_moe_block:
            ff = rms_norm(ff, layer.post_feedforward_layernorm_1) + self._moe(layer, residual)
        h = residual + rms_norm(ff, layer.post_feedforward_layernorm)
        if per_layer_input is not None:
            residual = h
            g = layer.act_fn(layer.per_layer_input_gate(h)) * per_layer_input
            h = residual + rms_norm(layer.per_layer_projection(g), layer.post_per_layer_input_norm)
        return h * layer.layer_scalar, present

    # ---- graph -------------------------------------------------------------------------------------
    @staticmethod
    def _kept_length(keep, seq):
        """Rows to compute past the cut: ``num_logits_to_keep`` (0 = all) as an unbacked size in [1, seq]."""
        kept = torch.where(keep > 0, keep, torch.full_like(keep, seq)).item()
        torch._check(kept >= 1)
        torch._check(kept <= seq)
        return kept

    @staticmethod
    def _cut(kept, seq, h, per_layer, ropes, masks):
        """Keep the last ``kept`` query rows of everything position-wise (as transformers'
        ``_maybe_slice_kv_shared_inputs``): KV-shared layers and the lm_head then skip the others."""
        start = seq - kept
        h = h.narrow(1, start, kept)
        per_layer = per_layer.narrow(1, start, kept) if per_layer is not None else None
        ropes = {t: (c.narrow(1, start, kept), s.narrow(1, start, kept)) for t, (c, s) in ropes.items()}
        masks = {t: m.narrow(2, start, kept) for t, m in masks.items()}
        return h, per_layer, ropes, masks

    @staticmethod
    def _cache_lengths(attention_mask):
        """GroupQueryAttention's ``seqlens_k`` (cache slots after this step, minus one, per row) and
        ``total_sequence_length``, both int32: every row fills the mask's length of slots (left padding
        included; the mask, passed as bias, hides the padding)."""
        total = attention_mask.shape[1]
        seqlens = torch.full((attention_mask.shape[0],), total - 1, dtype=torch.int32)
        return seqlens, torch.full((), total, dtype=torch.int32)

    def forward(self, *inputs):
        named = dict(zip(self.layout.input_names(), inputs))
        h = named["inputs_embeds"]
        seq = h.shape[1]
        first_past = named[f"past_key_values.{self.layout.cache_layers[0]}.key"]
        masks = self._masks(named["attention_mask"], first_past.shape[2], seq, named.get("input_ids"))
        ropes = {t: self._rope(named["position_ids"], t, h.dtype) for t in set(self.layout.layer_types)}
        per_layer = self._per_layer(h, named["per_layer_inputs"]) if self.layout.per_layer_inputs else None
        kept = self._kept_length(named["num_logits_to_keep"], seq)
        cut_at = self.layout.first_shared_layer
        lengths = self._cache_lengths(named["attention_mask"]) if self.kernel else None
        shared, presents = {}, []
        for i, layer in enumerate(self.text.layers[: self.tc.num_hidden_layers]):
            if i == cut_at:
                h, per_layer, ropes, masks = self._cut(kept, seq, h, per_layer, ropes, masks)
            layer_type = self.layout.layer_types[i]
            past = None
            if i in self.layout.cache_layers:
                past = (named[f"past_key_values.{i}.key"], named[f"past_key_values.{i}.value"])
            pli = per_layer[:, :, i, :] if per_layer is not None else None
            h, present = self._layer(layer, i, h, pli, ropes[layer_type], masks[layer_type], past, shared, lengths)
            if present is not None:
                presents += list(present)
        if cut_at is None:
            h = h.narrow(1, seq - kept, kept)
        h = rms_norm(h, self.text.norm)
        logits = self.lm_head(h)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return (logits, *presents)
