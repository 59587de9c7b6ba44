"""The parity gate's PyTorch side at a fraction of the fp32 model's memory, with fp32 results.

``Gemma4ForConditionalGeneration`` loaded in fp32 is 4 bytes per parameter (21 GB for the default E2B-size
config). The gate needs fp32 *arithmetic*, not fp32 *storage*: the checkpoint is bf16, and bf16 -> fp32 is
exact. So here:
- the decoder layers keep the checkpoint's dtype and each becomes fp32 only while it runs (a pre-hook
  widens its parameters, a hook narrows them back: the round trip is exact for bf16 values);
- the per-layer embedding table (2 B values in E2B) is not loaded at all: a lookup reads its rows from the
  memory-mapped safetensors file and widens them (:class:`MappedEmbedding`);
- the tied embedding table is looked up the same way, and the lm_head reads it in row chunks per call;
- everything else (vision tower, projections, norms) is fp32.
The forward computes exactly what the fp32 model computes; only the storage differs.
"""
from __future__ import annotations

import numpy as np

from .checkpoint_tensors import CheckpointTensors
from .skeleton import checkpoint_key, parameters_on_meta


def bf16_to_fp32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _mapped_embedding_class():
    import torch
    from torch import nn

    class MappedEmbedding(nn.Module):
        """``Gemma4TextScaledWordEmbedding`` over a memory-mapped table: rows read on lookup, widened to fp32."""

        def __init__(self, table: np.ndarray, dtype: str, scale: float):
            super().__init__()
            self.table, self.dtype_name, self.scalar_embed_scale = table, dtype, scale
            self.register_buffer("embed_scale", torch.tensor(scale, dtype=torch.float32), persistent=False)

        @property
        def weight(self):
            """Row access (``weight[pad_id, :]``, as transformers reads the pad row) widened to fp32."""
            module = self

            class Rows:
                dtype, device = torch.float32, torch.device("cpu")
                shape = torch.Size(module.table.shape)

                def __getitem__(self, key):
                    rows = np.asarray(module.table[key])
                    rows = bf16_to_fp32(rows) if module.dtype_name == "BF16" else rows.astype(np.float32)
                    return torch.from_numpy(np.ascontiguousarray(rows))

            return Rows()

        def forward(self, input_ids):
            rows = np.asarray(self.table[input_ids.cpu().numpy()])
            rows = bf16_to_fp32(rows) if self.dtype_name == "BF16" else rows.astype(np.float32)
            return torch.from_numpy(rows) * self.embed_scale

    return MappedEmbedding


def _streamed_head_class():
    import torch
    from torch import nn

    class StreamedHead(nn.Module):
        """The tied lm_head over the checkpoint's table, read in row chunks per call and widened to fp32:
        each logit is the same fp32 dot product, without holding the 262k x hidden table in fp32."""

        def __init__(self, checkpoint, key: str, rows: int = 16384):
            super().__init__()
            self.checkpoint, self.key, self.rows = checkpoint, key, rows
            self.vocab = checkpoint.infos[key].shape[0]

        def forward(self, hidden):
            parts = []
            for start in range(0, self.vocab, self.rows):
                weight = torch.from_numpy(self.checkpoint.read(self.key, start, start + self.rows))
                parts.append(torch.matmul(hidden, weight.t()))
            return torch.cat(parts, dim=-1)

    return StreamedHead


def _swap_dtype(module, dtype) -> None:
    for param in module.parameters():
        param.data = param.data.to(dtype)


def load_reference_model(config, checkpoint: CheckpointTensors):
    """The fp32-computing reference ``Gemma4ForConditionalGeneration`` (eval) for ``config``."""
    import torch
    from torch import nn
    from transformers import Gemma4ForConditionalGeneration

    with parameters_on_meta():
        model = Gemma4ForConditionalGeneration(config).eval()
    text = model.model.language_model
    ple_key = "model.language_model.embed_tokens_per_layer.weight"
    per_layer = getattr(text, "embed_tokens_per_layer", None)
    if per_layer is not None and ple_key in checkpoint and checkpoint.infos[ple_key].dtype in ("BF16", "F32"):
        info = checkpoint.infos[ple_key]
        text.embed_tokens_per_layer = _mapped_embedding_class()(
            checkpoint.memmap(ple_key), info.dtype, float(per_layer.scalar_embed_scale))
    embed_key = "model.language_model.embed_tokens.weight"
    if (config.tie_word_embeddings and embed_key in checkpoint and "lm_head.weight" not in checkpoint
            and checkpoint.infos[embed_key].dtype in ("BF16", "F32")):
        # the 262k-row table: looked up from the mapped file, and the lm_head reads it in chunks
        info = checkpoint.infos[embed_key]
        text.embed_tokens = _mapped_embedding_class()(checkpoint.memmap(embed_key), info.dtype,
                                                      float(text.embed_tokens.scalar_embed_scale))
        model.lm_head = _streamed_head_class()(checkpoint, embed_key)
    narrow = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name, param in list(module._parameters.items()):
            if param is None or param.device.type != "meta":
                continue
            key = checkpoint_key(prefix + name, checkpoint)
            tied = narrow.get(key)
            if tied is not None:
                module._parameters[name] = tied
                continue
            in_layer = prefix.startswith("model.language_model.layers.")
            tensor = torch.from_numpy(checkpoint.read(key))
            if in_layer and checkpoint.infos[key].dtype == "BF16":
                tensor = tensor.to(torch.bfloat16)           # exact: the values came from bf16
            module._parameters[name] = narrow[key] = nn.Parameter(tensor, requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            key = prefix + name
            if buffer is not None and key in checkpoint:
                stored = torch.from_numpy(checkpoint.read(key))
                if prefix.startswith("model.language_model.layers.") and checkpoint.infos[key].dtype == "BF16":
                    stored = stored.to(torch.bfloat16)
                module._buffers[name] = stored
    for layer in text.layers:
        if any(p.dtype != torch.float32 for p in layer.parameters()):
            layer.register_forward_pre_hook(lambda m, args: _swap_dtype(m, torch.float32))
            layer.register_forward_hook(lambda m, args, out: _swap_dtype(m, torch.bfloat16))
    for layer in text.layers:                  # layer_scalar is a buffer: always fp32 (tiny)
        if hasattr(layer, "layer_scalar") and layer.layer_scalar.dtype != torch.float32:
            layer.layer_scalar = layer.layer_scalar.float()
    return model
