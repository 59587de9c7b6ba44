"""``edgevid::group_query_attention``: a torch op that exports as onnxruntime's ``com.microsoft.GroupQueryAttention``.

The decoder's cache-owning layers attend through it (``DecoderGraph(kernel=True)``). In onnxruntime the
op writes the new keys/values into the past buffer in place when past and present are the same buffer
(the runtime binds them so: ``edgevid.model.sessions``), applies the sliding window itself
(``local_window_size``) and fuses grouped heads, scale and softmax into one kernel. Fed a growing past
instead (transformers.js, older edgevid), it returns ``past + new`` like the classic graph: the graph
contract is the same either way.

Queries and keys arrive already normalised and rotated (the graph does Gemma's per-head RMSNorm and its
proportional RoPE itself, exactly as before), so the op's own rotary and q/k-norm inputs stay unused. The
additive ``bias`` (attention_bias) masks padding; causality and the window are the kernel's.

The eager implementation is the op's reference semantics (growing cache, additive bias, fp32 softmax); the
export traces only its fake (shape) implementation.
"""
from __future__ import annotations

from typing import Optional

import torch

MASKED = -1.0e9


@torch.library.custom_op("edgevid::group_query_attention", mutates_args=())
def group_query_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
                          past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
                          bias: Optional[torch.Tensor], num_heads: int, kv_heads: int, scale: float,
                          window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query [b, s, heads*d], key/value [b, s, kv*d], past [b, kv, p, d] -> (out [b, s, heads*d],
    present key/value [b, kv, p+s, d])."""
    b, s, _ = query.shape
    d = past_key.shape[-1]
    k = torch.cat([past_key, key.view(b, s, kv_heads, d).transpose(1, 2)], dim=2)
    v = torch.cat([past_value, value.view(b, s, kv_heads, d).transpose(1, 2)], dim=2)
    total = k.shape[2]
    q = query.view(b, s, num_heads, d).transpose(1, 2)
    groups = num_heads // kv_heads
    scores = torch.matmul(q, k.repeat_interleave(groups, dim=1).transpose(2, 3)).float() * scale
    q_pos = torch.arange(s).unsqueeze(1) + (total - s)
    k_pos = torch.arange(total).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window > 0:
        allowed = allowed & (k_pos > q_pos - window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if bias is not None:
        scores = scores + bias.float()
    probs = torch.softmax(scores, dim=-1).to(query.dtype)
    out = torch.matmul(probs, v.repeat_interleave(groups, dim=1))
    return out.transpose(1, 2).reshape(b, s, num_heads * d), k, v


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, bias, num_heads, kv_heads,
      scale, window):
    b, s, _ = query.shape
    present = past_key.new_empty((b, past_key.shape[1], past_key.shape[2] + s, past_key.shape[3]))
    return query.new_empty(query.shape), present, torch.empty_like(present)


_INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
           "sin_cache", "position_ids", "attention_bias")
_ATTRIBUTES = {"num_heads": "INT", "kv_num_heads": "INT", "scale": "FLOAT", "local_window_size": "INT"}


def _register_schema() -> None:
    """Tell the ``onnx`` package the op's signature (onnxruntime's contrib ops are not in its registry), the
    part edgevid uses, so onnxscript can build the node. Declared once per process."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("GroupQueryAttention", "com.microsoft"):
        return
    optional = OpSchema.FormalParameterOption.Optional
    types = {"query": "T", "key": "T", "value": "T", "past_key": "T", "past_value": "T", "seqlens_k": "M",
             "total_sequence_length": "M", "cos_cache": "T", "sin_cache": "T", "position_ids": "I",
             "attention_bias": "T"}
    inputs = [OpSchema.FormalParameter(name, types[name], "", param_option=optional if i >= 7 or i in (1, 2, 3, 4)
                                       else OpSchema.FormalParameterOption.Single)
              for i, name in enumerate(_INPUTS)]
    outputs = [OpSchema.FormalParameter(name, "T", "") for name in ("output", "present_key", "present_value")]
    attributes = [OpSchema.Attribute(name, getattr(OpSchema.AttrType, kind), "") for name, kind in _ATTRIBUTES.items()]
    onnx.defs.register_schema(OpSchema(
        "GroupQueryAttention", "com.microsoft", 1, inputs=inputs, outputs=outputs, attributes=attributes,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], ""),
                          ("I", ["tensor(int64)"], "")]))


def onnx_translation() -> dict:
    """``custom_translation_table`` entries for ``torch.onnx.export``: the op as
    ``com.microsoft.GroupQueryAttention``, and :func:`rotary_embedding` as ``com.microsoft.RotaryEmbedding``."""
    import onnxscript

    _register_schema()
    msft = onnxscript.values.Opset("com.microsoft", 1)

    def translate(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, bias, num_heads,
                  kv_heads, scale, window):
        extra = () if bias is None else (None, None, None, bias)     # cos_cache, sin_cache, position_ids
        optional = {"local_window_size": window} if window > 0 else {}
        return msft.GroupQueryAttention(
            query, key, value, past_key, past_value, seqlens_k, total_sequence_length, *extra,
            num_heads=num_heads, kv_num_heads=kv_heads, scale=float(scale), _outputs=3, **optional)

    return {torch.ops.edgevid.group_query_attention.default: translate, **rotary_translation()}


@torch.library.custom_op("edgevid::rotary_embedding", mutates_args=())
def rotary_embedding(x: torch.Tensor, position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor,
                     num_heads: int) -> torch.Tensor:
    """Gemma's RoPE (rotate-half) on x [b, s, heads*d]: row ``position_ids[b, s]`` of the caches
    [rows, d/2] holds that token's cos/sin (already scaled)."""
    b, s, _ = x.shape
    half = cos_cache.shape[-1]
    cos = cos_cache[position_ids].unsqueeze(2)                 # [b, s, 1, d/2]
    sin = sin_cache[position_ids].unsqueeze(2)
    x = x.view(b, s, num_heads, 2 * half)
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.reshape(b, s, -1)


@rotary_embedding.register_fake
def _(x, position_ids, cos_cache, sin_cache, num_heads):
    return x.new_empty(x.shape)


def _register_rotary_schema() -> None:
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("RotaryEmbedding", "com.microsoft"):
        return
    inputs = [OpSchema.FormalParameter(name, kind, "") for name, kind in
              (("input", "T"), ("position_ids", "M"), ("cos_cache", "T"), ("sin_cache", "T"))]
    onnx.defs.register_schema(OpSchema(
        "RotaryEmbedding", "com.microsoft", 1, inputs=inputs, outputs=[OpSchema.FormalParameter("output", "T", "")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int64)"], "")]))


def rotary_translation() -> dict:
    """``custom_translation_table`` entry: the op as ``com.microsoft.RotaryEmbedding`` (one node instead of
    the Slice/Neg/Concat/Mul/Add chain per query and key)."""
    import onnxscript

    _register_rotary_schema()
    msft = onnxscript.values.Opset("com.microsoft", 1)

    def translate(x, position_ids, cos_cache, sin_cache, num_heads):
        return msft.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, num_heads=num_heads)

    return {torch.ops.edgevid.rotary_embedding.default: translate}
