"""Quantised variants of an exported graph: fp16, int8 (dynamic) and q4 (MatMulNBits), all with onnxruntime's
own tools, plus ``top1_agreement`` to measure a variant against the fp32 decoder.

    quantize_graph("decoder_model_merged.onnx", "decoder_model_merged_q4.onnx", "q4")

- ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with fp32 graph inputs/outputs and
  the numerically fragile parts kept fp32 (see :func:`fp16_blocked_nodes`).
- ``int8``: ``quantize_dynamic`` — int8 weights for MatMul (per output channel) and Gather (embedding
  tables), activations quantised per call. Weights use 7 bits (``reduce_range``): on CPUs without VNNI
  (AVX2 only) onnxruntime's u8 x s8 kernel sums pairs of products in saturating int16, and full-range
  weights overflowed it (see ``_to_int8``).
- ``q4``: 4-bit symmetric blocks of 64 for MatMul weights (``MatMulNBits``) and of 32 for embedding tables
  (``GatherBlockQuantized``), RTN as onnxruntime's ``MatMulNBitsQuantizer`` (its packing kernel), computed with
  int8 activations (``accuracy_level=4``, onnxruntime's VNNI kernels), streamed one weight at a time
  (``quantize_q4``: the fp32 graphs of E2B do not fit in memory). The vision encoder of a q4 folder is int8
  instead (see :data:`GRAPH_SCHEMES`).

Graphs stored with external data are read with it; a result whose weights pass 2 GB is written with
``<name>.onnx_data`` beside it (the onnx-community layout), otherwise as one file. ``mapped_tables=True``
(the embedding graph) always writes ``<name>.onnx_data`` with its tables at aligned offsets, so that
onnxruntime maps them instead of copying (see ``mapped_tables``).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgevid.errors import ExportError

from .mapped_tables import save_with_mapped_tables

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8", "q4")
# How a precision quantises a graph when that differs from the precision's name. A q4 vision encoder is int8:
# its MatMuls see hundreds of rows per frame, where onnxruntime's int8 GEMM (VNNI) ran the 32-frame bench
# encoder 2x faster than fp32 while 4-bit MatMulNBits ran it no faster than fp32 (it dequantises to fp32 for
# many rows), and int8 kept its features 7x closer to fp32's (relative max error 2.4 % vs 18 %). On an AVX2-only
# EPYC (no VNNI) int8 ran it 1.3-1.4x faster than fp32 (relative max error 4.3 % with 7-bit weights).
GRAPH_SCHEMES = {"q4": {"vision_encoder": "int8"}}
# MatMulNBits computes with int8-quantised activation blocks (accuracy level 4): decode 1.25-2x and prefill
# ~1.2x faster than fp32 compute on this CPU, the trained demo's q4 answers unchanged (onnxruntime-genai's
# model builder uses the same level for CPU).
Q4_ACCURACY_LEVEL = 4
TWO_GB = 2 * 1024 ** 3
FP16_MAX = 65504.0

# Always fp32: the RMSNorm pattern (x^2, mean, sqrt or x^-0.5, division), softmax, the soft-cap tanh (and its
# x/30 division), and ops onnxruntime's converter keeps fp32 anyway.
FP16_BLOCKED_OPS = (
    "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Div", "Softmax", "Tanh", "Exp", "Log",
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
    "RMSNormalization", "SkipLayerNormalization",
)
# Ops a blocked region may spread through (data movement and elementwise), from a seed to a stop.
_REGION_OPS = {"Add", "Sub", "Mul", "Where", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Slice", "Concat",
               "Transpose", "Gather", "GatherND", "Cast", "Identity", "Max", "Min", "ReduceMean", "Pow", "Sqrt",
               "Div", "Neg", "Reciprocal"}
_REGION_LIMIT = 64


def scheme_for(precision: str, graph: str | None) -> str:
    """The quantisation a ``precision`` folder uses for ``graph`` ("vision_encoder", "embed_tokens", "decoder")."""
    return GRAPH_SCHEMES.get(precision, {}).get(graph, precision)


def quantize_graph(src_onnx, dst_onnx, precision: str, mapped_tables: bool = False, graph: str | None = None) -> Path:
    """Write the ``precision`` variant of ``src_onnx`` to ``dst_onnx`` and return ``dst_onnx``
    (with its big initializers in ``dst_onnx``_data at aligned offsets when ``mapped_tables``).
    ``graph`` names the folder graph being written, for precisions that quantise graphs differently
    (:func:`scheme_for`).

    Raises ``ExportError`` for an unknown precision, a missing source, or a result that onnxruntime cannot
    load.
    """
    src, dst = Path(src_onnx), Path(dst_onnx)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if not src.is_file():
        raise ExportError(f"graph to quantise not found: {src}", source=str(src))
    if src.resolve() == dst.resolve():
        raise ExportError(f"refusing to overwrite the source graph {src}", source=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_graph(dst)
    scheme = scheme_for(precision, graph)
    {"fp16": _to_fp16, "int8": _to_int8, "q4": _to_q4}[scheme](src, dst)
    if mapped_tables and scheme != "q4":          # q4 writes its tables aligned already
        save_with_mapped_tables(load_graph(dst), dst)
    _check_loads(dst)
    return dst


# ---- fp16 ------------------------------------------------------------------------------------------------
def _to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with _inferred_copy(src) as inferred:
        model = onnx.load(str(inferred))
        _name_unnamed_nodes(model.graph)      # the fp16 plan blocks nodes by name: "" would block every unnamed node
        blocked_ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCKED_OPS))
        nodes = fp16_blocked_nodes(model)
        log.info("fp16 %s: %d nodes kept fp32 beside the ops %s", src.name, len(nodes), blocked_ops)
        converted = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=True, op_block_list=blocked_ops,
            node_block_list=sorted(nodes),
        )
    removed = drop_cast_round_trips(converted)
    log.info("fp16 %s: %d fp32->fp16->fp32 cast pairs between fp32 nodes removed", src.name, removed)
    _check_fp16_constants(converted, src)
    save_graph(converted, dst)


def _name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    taken = {node.name for node in graph.node}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Let fp32 nodes read fp32 tensors directly where the converter put Cast(fp16) -> Cast(fp32) between them.

    ``convert_float_to_float16`` keeps every tensor *between* nodes fp16, so two fp32 nodes in a row (x^2 then
    its mean; the -1e9 mask then the Add) would still pass their result through fp16 — overflowing to inf
    there. Each such pair is bypassed; casts nobody reads any more are removed. Returns the pairs bypassed.
    """
    graph = model.graph
    _fix_initializer_types(graph)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    types.update({t.name: t.data_type for t in graph.initializer})
    bypassed = 0
    for node in graph.node:
        if node.op_type != "Cast" or _cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        if types.get(node.input[0]) == onnx.TensorProto.FLOAT and node.input[0] not in producer:
            source = node.input[0]                      # a no-op Cast of an fp32 initializer
        else:
            narrowing = producer.get(node.input[0])
            if narrowing is None or narrowing.op_type != "Cast" or _cast_to(narrowing) != onnx.TensorProto.FLOAT16:
                continue
            source = narrowing.input[0]
            if not _is_fp32(types, producer, source):
                continue
        if node.output[0] in outputs:          # keep the output's name: turn the widening Cast into Identity
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = source
        else:
            _rename_input(graph, node.output[0], source)
        bypassed += 1
    _remove_dead_casts(graph)
    return bypassed


def _fix_initializer_types(graph) -> None:
    """The converter can leave value_info saying fp16 for an initializer it kept fp32; trust the data."""
    data_types = {t.name: t.data_type for t in graph.initializer}
    for info in graph.value_info:
        if info.name in data_types:
            info.type.tensor_type.elem_type = data_types[info.name]


def _cast_to(node) -> int | None:
    for attr in node.attribute:
        if attr.name == "to":
            return attr.i
    return None


def _is_fp32(types: dict, producer: dict, name: str) -> bool:
    node = producer.get(name)
    if node is not None and node.op_type == "Cast":
        return _cast_to(node) == onnx.TensorProto.FLOAT
    return types.get(name) == onnx.TensorProto.FLOAT


def _rename_input(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _remove_dead_casts(graph) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    live = {name for node in graph.node for name in list(node.input) + list(node.output)}
    stale = [v for v in graph.value_info if v.name not in live]
    for info in stale:
        graph.value_info.remove(info)


def fp16_blocked_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes (beyond the blocked op types) that must stay fp32 in the fp16 variant.

    - Norms: the chain from ``mean(x^2)`` through ``+ eps``, the square root and the division / product.
    - Masks: every node reading a float constant outside fp16's range (the -1e9 / float32-min mask fill),
      and the nodes after it up to the Softmax, so the additive mask never becomes -inf.
    - ``sqrt(n)`` scale-ups (a Mul by a scalar whose square is an integer >= 16, like the vision pooler's
      ``sqrt(hidden)``), and the nodes after it up to the next normalisation, so pooled features that pass
      65504 once scaled stay fp32 until the norm brings them back.
    - The residual stream: from each Add of two activations that feeds a norm, the chain of Adds of two
      activations and Muls by a scalar constant (the per-layer scalar) that carries it to the next layer.
    """
    graph = _GraphView(model.graph)
    blocked: set[str] = set()
    for node in graph.nodes:
        if node.op_type == "ReduceMean":       # mean(x^2) + eps -> sqrt / rsqrt -> x * (...): one fp32 chain
            blocked |= graph.region_from(node, stop_ops=set(), stop=graph.is_normalising_mul)
        if any(graph.out_of_fp16_range(name) for name in node.input):
            blocked |= graph.region_from(node, stop_ops={"Softmax"})
        elif node.op_type == "Mul" and graph.is_sqrt_scale(node):
            blocked |= graph.region_from(node, stop_ops=set(), stop=graph.is_normalising_mul)
    blocked |= graph.residual_stream()
    return blocked | graph.constants_only_read_by(blocked, set(FP16_BLOCKED_OPS))


class _GraphView:
    """Producers, consumers and constant values of one graph, for the fp16 rules."""

    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.constants = {t.name: t for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self._values: dict[str, np.ndarray] = {}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.constants:
            return None
        if name not in self._values:
            self._values[name] = numpy_helper.to_array(self.constants[name])
        return self._values[name]

    def out_of_fp16_range(self, name: str) -> bool:
        tensor = self.constants.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            return False
        if np.prod(tensor.dims, dtype=np.int64) > 1024:    # weights are never mask fills
            return False
        array = self.value(name)
        return bool(array.size and np.abs(array).max() > FP16_MAX)

    def scalar_constant(self, node) -> float | None:
        for name in node.input:
            array = self.value(name)
            if array is not None and array.size == 1 and array.dtype.kind == "f":
                return float(array.ravel()[0])
        return None

    def is_sqrt_scale(self, node) -> bool:
        c = self.scalar_constant(node)
        if c is None or c <= 1.0:
            return False
        square = c * c
        return square >= 16 and abs(square - round(square)) < 1e-3 * square

    def is_normalising_mul(self, node) -> bool:
        """``x * rsqrt(...)``: a Mul fed by ``Pow(_, -0.5)`` or ``Reciprocal``, or a Div by a Sqrt."""
        if node.op_type == "Div":
            divisor = self.producer.get(node.input[1])
            return divisor is not None and divisor.op_type == "Sqrt"
        if node.op_type != "Mul":
            return False
        for name in node.input:
            src = self.producer.get(name)
            if src is None:
                continue
            if src.op_type == "Reciprocal":
                return True
            if src.op_type == "Pow":
                exponent = self.value(src.input[1])
                if exponent is not None and exponent.size == 1 and float(exponent.ravel()[0]) < 0:
                    return True
        return False

    def is_activation(self, name: str) -> bool:
        return name not in self.constants

    def consumers_of(self, node) -> list:
        return [c for out in node.output for c in self.consumers.get(out, [])]

    def is_activation_add(self, node) -> bool:
        return node.op_type == "Add" and all(self.is_activation(i) for i in node.input)

    def feeds_norm(self, node) -> bool:
        return any(c.op_type in ("Pow", "ReduceMean") for c in self.consumers_of(node))

    def residual_stream(self) -> set[str]:
        """Adds of two activations feeding a norm, and every Add-of-activations / Mul-by-scalar that
        follows one of them directly."""
        frontier = [n for n in self.nodes if self.is_activation_add(n) and self.feeds_norm(n)]
        stream = {n.name for n in frontier}
        while frontier:
            for consumer in self.consumers_of(frontier.pop()):
                carries = self.is_activation_add(consumer) or (
                    consumer.op_type == "Mul" and self.scalar_constant(consumer) is not None)
                if carries and consumer.name not in stream:
                    stream.add(consumer.name)
                    frontier.append(consumer)
        return stream

    def constants_only_read_by(self, blocked: set[str], blocked_ops: set[str]) -> set[str]:
        """Constant nodes all of whose readers stay fp32 (else the converter would round their value)."""
        keep = set()
        for node in self.nodes:
            readers = self.consumers_of(node)
            if node.op_type == "Constant" and readers and all(
                    r.name in blocked or r.op_type in blocked_ops for r in readers):
                keep.add(node.name)
        return keep

    def region_from(self, seed, stop_ops: set[str], stop=None) -> set[str]:
        """``seed`` and the nodes reachable from it through region ops, ending at (and including) a node of
        ``stop_ops`` or one for which ``stop(node)`` holds."""
        region, frontier = {seed.name}, [seed]
        while frontier and len(region) < _REGION_LIMIT:
            node = frontier.pop()
            for consumer in self.consumers_of(node):
                if consumer.name in region:
                    continue
                if consumer.op_type in stop_ops or (stop is not None and stop(consumer)):
                    region.add(consumer.name)
                elif consumer.op_type in _REGION_OPS:
                    region.add(consumer.name)
                    frontier.append(consumer)
        return region


def _check_fp16_constants(model: onnx.ModelProto, src: Path) -> None:
    """No fp16 constant may be NaN, and none may be infinite unless the fp32 source had it infinite."""
    for tensor in _all_constants(model.graph):
        if tensor.data_type != onnx.TensorProto.FLOAT16:
            continue
        array = numpy_helper.to_array(tensor)
        if np.isnan(array).any():
            raise ExportError(f"fp16 conversion of {src.name} made NaN in constant {tensor.name}", source=str(src))
        if np.isinf(array).any():
            log.warning("fp16 %s: constant %s holds +-inf (as in the fp32 graph)", src.name, tensor.name)


def _all_constants(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


# ---- int8 and q4 -----------------------------------------------------------------------------------------
def _to_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = _graph_file_bytes(src) >= TWO_GB
    with _inferred_copy(src) as inferred:      # a path, not a proto: protos past 2 GB cannot be inferred
        with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
            out = Path(tmp) / dst.name
            # reduce_range: 7-bit weights keep u8 x s8 pair sums inside int16 on AVX2-only CPUs. Measured on an
            # AVX2 EPYC: int8 decoder top-1 vs fp32 0.17 (max logit diff 3.8) full-range -> 0.59 (1.75) 7-bit;
            # bench vision features rel. max error 8.2 % -> 4.3 %, same speed. (Not measured on a VNNI CPU, where
            # the 8th bit would be safe: there it costs half a bit of weight resolution.)
            quantize_dynamic(
                inferred, out, op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                weight_type=QuantType.QInt8, reduce_range=True, use_external_data_format=big,
                extra_options={"MatMulConstBOnly": True},
            )
            save_graph(onnx.load(str(out)), dst)


def _to_q4(src: Path, dst: Path) -> None:
    """Streamed (``quantize_q4``): one weight in memory at a time, aligned external data written directly."""
    from .progress import Bar
    from .quantize_q4 import quantize_q4_streamed

    with Bar(f"q4 {dst.name}") as bar:
        counts = quantize_q4_streamed(src, dst, progress=bar.update)
    log.info("q4 %s: %s", dst.name, counts)


# ---- files -----------------------------------------------------------------------------------------------
def load_graph(path) -> onnx.ModelProto:
    """The graph with its external data (if any) loaded."""
    path = Path(path)
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise ExportError(f"cannot read ONNX graph {path}: {exc}", source=str(path)) from exc


def save_graph(model: onnx.ModelProto, path) -> Path:
    """Save inline, or with ``<name>.onnx_data`` beside it when the weights reach 2 GB."""
    path = Path(path)
    if _weights_bytes(model) >= TWO_GB:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _graph_file_bytes(path: Path) -> int:
    """The graph file plus any external data files beside it that it names."""
    model = onnx.load(str(path), load_external_data=False)
    names = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in names
                                     if (path.parent / name).is_file())


def _weights_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data"):
            total += len(tensor.raw_data)
        else:
            total += int(np.prod(tensor.dims, dtype=np.int64)) * 4
    return total


class _inferred_copy:
    """Context manager: a shape-inferred copy of ``src`` beside it (so external data still resolves),
    made with ``infer_shapes_path``, which works past 2 GB. Removed on exit."""

    def __init__(self, src: Path):
        self.src = src

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(suffix=".onnx", dir=self.src.parent)
        os.close(handle)
        self.path = Path(name)
        try:
            onnx.shape_inference.infer_shapes_path(str(self.src), str(self.path))
        except Exception as exc:   # inference is a help, not a requirement
            log.info("shape inference failed on %s (%s); using the graph as is", self.src.name, exc)
            self.path.unlink(missing_ok=True)
            return self.src
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path != self.src:
            self.path.unlink(missing_ok=True)


def _remove_graph(path: Path) -> None:
    for stale in (path, path.with_name(path.name + "_data")):
        if stale.exists():
            stale.unlink()


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load the quantised graph {path}: {exc}", source=str(path)) from exc


# ---- measuring a variant ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    """How a variant's decoder logits compare with the fp32 decoder's on the same inputs."""

    top1: float                # share of positions whose argmax agrees
    max_abs_logit_diff: float
    positions: int


def decoder_feed(decoder_onnx, inputs_embeds: np.ndarray, per_layer_inputs: np.ndarray | None = None) -> dict:
    """Prefill inputs for ``decoder_model_merged`` (docs/ARCHITECTURE.md): the given embeddings, a full
    attention mask, positions 0..seq-1 and an empty cache shaped from the graph's own cache inputs."""
    import onnxruntime as ort

    batch, seq = inputs_embeds.shape[:2]
    session = ort.InferenceSession(str(decoder_onnx), providers=["CPUExecutionProvider"])
    feed = {"inputs_embeds": inputs_embeds.astype(np.float32)}
    for arg in session.get_inputs():
        name = arg.name
        if name == "per_layer_inputs":
            if per_layer_inputs is None:
                raise ExportError("the decoder takes per_layer_inputs; pass them", source=str(decoder_onnx))
            feed[name] = per_layer_inputs.astype(np.float32)
        elif name == "attention_mask":
            feed[name] = np.ones((batch, seq), dtype=np.int64)
        elif name == "position_ids":
            feed[name] = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
        elif name.startswith("past_key_values."):
            heads, head_dim = arg.shape[1], arg.shape[3]
            feed[name] = np.zeros((batch, heads, 0, head_dim), dtype=np.float32)
        elif name == "num_logits_to_keep":
            feed[name] = np.array(0, dtype=np.int64)            # every position's logits
    return feed


def top1_agreement(reference_decoder, variant_decoder, feed: dict) -> Agreement:
    """Run both decoder graphs on ``feed`` (e.g. from :func:`decoder_feed`) and compare their logits."""
    import onnxruntime as ort

    logits = []
    for path in (reference_decoder, variant_decoder):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        logits.append(session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0].astype(np.float32))
    reference, variant = logits
    agree = reference.argmax(-1) == variant.argmax(-1)
    return Agreement(top1=float(agree.mean()), max_abs_logit_diff=float(np.abs(reference - variant).max()),
                     positions=int(agree.size))
