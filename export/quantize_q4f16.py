"""q4f16: 4-bit weights with fp16 activations and fp16 graph inputs/outputs (KV cache included), the scheme
onnx-community ships as ``<graph>_q4f16.onnx`` and transformers.js loads with ``dtype: "q4f16"``.

    quantize_q4f16("onnx/decoder_model_merged.onnx", "onnx/decoder_model_merged_q4f16.onnx", "decoder")

Two passes with the tools ``quantize`` already uses: the fp16 conversion (norms, softmax, the soft-cap
tanh and the other fragile parts kept fp32 inside, see ``quantize.fp16_blocked_nodes``), then
``MatMulNBits``/``GatherBlockQuantized`` 4-bit blocks of 32 over the fp16 weights. Kept fp32 at the graph
boundary: ``pixel_values`` (what image processors produce) and ``logits`` (sampling and the stop tests read
them); everything else a runtime binds from one graph to the next is fp16, so embeddings, vision features
and KV move between graphs without a cast.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from edgevid.errors import ExportError

from . import quantize
from .mapped_tables import save_with_mapped_tables

log = logging.getLogger(__name__)

FP32_IO = ("pixel_values", "logits")


def quantize_q4f16(src_onnx, dst_onnx, graph: str | None = None, mapped_tables: bool = False) -> Path:
    """Write the q4f16 variant of ``src_onnx`` to ``dst_onnx`` (with its tables at aligned offsets in
    ``dst_onnx``_data when ``mapped_tables``); raises ``ExportError`` when the result does not load."""
    src, dst = Path(src_onnx), Path(dst_onnx)
    if not src.is_file():
        raise ExportError(f"graph to quantise not found: {src}", source=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize._remove_graph(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        half = Path(tmp) / f"{dst.stem}_fp16.onnx"
        _to_fp16_io(src, half)
        quantize._to_q4(half, dst)
    if mapped_tables:
        save_with_mapped_tables(quantize.load_graph(dst), dst)
    quantize._check_loads(dst)
    log.info("q4f16 %s -> %s (%s)", src.name, dst.name, graph or "graph")
    return dst


def _to_fp16_io(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with quantize._inferred_copy(src) as inferred:
        model = onnx.load(str(inferred))
        quantize._name_unnamed_nodes(model.graph)
        blocked_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(quantize.FP16_BLOCKED_OPS))
        nodes = quantize.fp16_blocked_nodes(model)
        names = {v.name for v in (*model.graph.input, *model.graph.output)}
        converted = convert_float_to_float16(
            model, keep_io_types=[n for n in FP32_IO if n in names], disable_shape_infer=True,
            op_block_list=blocked_ops, node_block_list=sorted(nodes),
        )
    quantize.drop_cast_round_trips(converted)
    quantize._check_fp16_constants(converted, src)
    quantize.save_graph(converted, dst)
