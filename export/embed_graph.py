"""``embed_tokens.onnx`` written directly with ``onnx.helper`` instead of through torch.export.

The graph is two table lookups, but its tables are the biggest weights of E2B/E4B (the per-layer table is
262,144 x 8,960 = 2.35 B values). Going through the exporter costs ~2.3x the weights in extra RAM
(measured on the vision tower, see the README); here the tables are streamed from the torch storage
straight into ``embed_tokens.onnx_data``, so the extra RAM is ~0. The tables always go there, at 64 KiB-aligned
offsets (``mapped_tables``), whatever their size: onnxruntime then maps them instead of copying, and only
the rows a prompt uses become resident.

Semantics (same as ``encoders.EmbedTokensGraph``, which stays as the PyTorch reference):
placeholder ids (image / video / audio) -> pad id; ``inputs_embeds = table[ids] * sqrt(hidden)``;
``per_layer_inputs = ple_table[ids] * sqrt(ple_dim)`` reshaped to [batch, seq, layers, ple_dim].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .mapped_tables import mark_external, pad_to_alignment

OPSET = 18
CHUNK_ROWS = 8192


class _Table:
    """An embedding table read in row chunks as fp32: from the model's tensor, or from the checkpoint
    (bf16 -> fp32 per chunk, never the whole table in memory)."""

    def __init__(self, tensor=None, checkpoint=None, key: str | None = None):
        self.tensor, self.checkpoint, self.key = tensor, checkpoint, key
        self.shape = tuple(checkpoint.infos[key].shape) if checkpoint is not None else tuple(tensor.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.checkpoint is not None:
            return self.checkpoint.read(self.key, start, stop).astype(np.float32, copy=False)
        return self.tensor[start:stop].detach().float().contiguous().numpy()

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4


def _external_tensor(name: str, table: _Table, data_file, data_path: Path):
    """TensorProto pointing into ``data_file`` (written now, in row chunks, from an aligned offset)."""
    from onnx import TensorProto

    from .progress import Bar

    offset = pad_to_alignment(data_file)
    rows = table.shape[0]
    with Bar(f"{name} ({table.nbytes / 1024 ** 3:.1f} GB)") as bar:
        for start in range(0, rows, CHUNK_ROWS):
            data_file.write(np.ascontiguousarray(table.rows(start, start + CHUNK_ROWS)).data)
            bar.update(min(rows, start + CHUNK_ROWS), rows)
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(table.shape))
    mark_external(tensor, data_path.name, offset, table.nbytes)
    return tensor


def write_embed_graph(model, path: Path, checkpoint=None) -> Path:
    """``checkpoint`` (``CheckpointTensors``): read the tables from it instead of from ``model``'s weights
    (then ``model`` may be a weightless skeleton)."""
    from onnx import TensorProto, helper, numpy_helper, save

    config = model.config
    text_config = config.get_text_config()
    text = model.model.language_model
    per_layer = bool(text_config.hidden_size_per_layer_input)

    def table(attr: str) -> _Table:
        if checkpoint is not None:
            return _Table(checkpoint=checkpoint, key=f"model.language_model.{attr}.weight")
        return _Table(tensor=getattr(text, attr).weight)

    tables = {"embed_tokens.weight": table("embed_tokens")}
    if per_layer:
        tables["embed_tokens_per_layer.weight"] = table("embed_tokens_per_layer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + "_data")

    placeholders = [t for t in (config.image_token_id, config.video_token_id, getattr(config, "audio_token_id", None))
                    if t is not None]
    pad = text_config.pad_token_id or 0
    small = [
        numpy_helper.from_array(np.asarray(placeholders, dtype=np.int64), "placeholder_ids"),
        numpy_helper.from_array(np.asarray(pad, dtype=np.int64), "pad_id"),
        numpy_helper.from_array(np.asarray(text.embed_tokens.scalar_embed_scale, dtype=np.float32), "embed_scale"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["input_ids", "last_axis"], ["ids_column"]),
        helper.make_node("Equal", ["ids_column", "placeholder_ids"], ["is_each_placeholder"]),
        helper.make_node("Cast", ["is_each_placeholder"], ["placeholder_hits"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["placeholder_hits", "last_axis"], ["placeholder_any"], keepdims=0),
        helper.make_node("Cast", ["placeholder_any"], ["is_placeholder"], to=TensorProto.BOOL),
        helper.make_node("Where", ["is_placeholder", "pad_id", "input_ids"], ["text_ids"]),
        helper.make_node("Gather", ["embed_tokens.weight", "text_ids"], ["embeddings"]),
        helper.make_node("Mul", ["embeddings", "embed_scale"], ["inputs_embeds"]),
    ]
    small.append(numpy_helper.from_array(np.asarray([-1], dtype=np.int64), "last_axis"))
    outputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                             ["batch_size", "sequence_length", text_config.hidden_size])]
    if per_layer:
        layers, dim = text_config.num_hidden_layers, text_config.hidden_size_per_layer_input
        small += [
            numpy_helper.from_array(np.asarray(text.embed_tokens_per_layer.scalar_embed_scale, dtype=np.float32),
                                    "per_layer_scale"),
            numpy_helper.from_array(np.asarray([layers, dim], dtype=np.int64), "per_layer_shape"),
        ]
        nodes += [
            helper.make_node("Gather", ["embed_tokens_per_layer.weight", "text_ids"], ["per_layer_flat"]),
            helper.make_node("Mul", ["per_layer_flat", "per_layer_scale"], ["per_layer_scaled"]),
            helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
            helper.make_node("Concat", ["ids_shape", "per_layer_shape"], ["per_layer_full_shape"], axis=0),
            helper.make_node("Reshape", ["per_layer_scaled", "per_layer_full_shape"], ["per_layer_inputs"]),
        ]
        outputs.append(helper.make_tensor_value_info("per_layer_inputs", TensorProto.FLOAT,
                                                     ["batch_size", "sequence_length", layers, dim]))
    with open(data_path, "wb") as data_file:
        big = [_external_tensor(name, t, data_file, data_path) for name, t in tables.items()]
    graph = helper.make_graph(
        nodes, "embed_tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])],
        outputs, initializer=big + small,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="edgevid_export")
    onnx_model.ir_version = 8
    save(onnx_model, str(path))
    return path
