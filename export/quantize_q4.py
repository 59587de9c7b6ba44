"""q4 quantisation that streams: one weight (in row chunks) in memory at a time, whatever the graph's size.

The same result as onnxruntime's ``MatMulNBitsQuantizer`` (RTN, symmetric; its own C++ kernel
``quantize_matmul_4bits`` packs the MatMul weights, its numpy rule the Gather tables), without loading the
graph's weights: the fp32 decoder of E2B is 12 GB and the embedding graph 10 GB, and the quantizer holds the
whole model plus copies. Here the graph structure is loaded alone, every weight is read from the source's
external data file in row chunks with ordinary file reads (no mapping, so nothing stays resident), and the
results are written to ``<dst>_data``, tensors from 1 MiB at 64 KiB-aligned offsets (onnxruntime maps them;
``mapped_tables``).

- ``MatMul(x, W[K, N])`` -> ``MatMulNBits`` (com.microsoft; packed [N, K/64, 32] uint8, scales [N, K/64]).
- ``Gather(T[V, D], ids)`` -> ``GatherBlockQuantized`` (com.microsoft; int4 [V, D], scales [V, D/32], blocks
  along D, quantize_axis 1), so a lookup touches only its rows.
- Every other initializer is copied (big ones chunk by chunk, at aligned offsets).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgevid.errors import ExportError

from .mapped_tables import mark_external, pad_to_alignment

log = logging.getLogger(__name__)

# MatMul weights in blocks of 64 along K: on the CPU onnxruntime packs each block's 4-bit values with an fp32
# scale and an fp32 block sum (accuracy level 4), so 32-blocks cost 6 bits a weight resident and 64-blocks 5;
# E2B's q4 decoder then holds 1.8 instead of 2.1 GiB (docs/real-size.md). Embedding tables stay in blocks of
# 32 along D: they are mapped and read by the row, so their block size costs disk, not memory.
MATMUL_BLOCK = 64
TABLE_BLOCK = 32
ACCURACY_LEVEL = 4
INLINE_BYTES = 4096
ALIGN_BYTES = 1024 ** 2          # tensors from this size start at aligned offsets (mapped); smaller ones are packed
CHUNK_BYTES = 128 * 1024 ** 2


class _ExternalReader:
    """Row chunks of the source's initializers, read with plain file reads (no mapping)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict = {}

    @staticmethod
    def info(tensor) -> dict:
        return {entry.key: entry.value for entry in tensor.external_data}

    def rows(self, tensor, start: int, stop: int) -> np.ndarray:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        shape = list(tensor.dims)
        row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        if tensor.data_location != TensorProto.EXTERNAL:
            return onnx.numpy_helper.to_array(tensor).reshape(shape[0] if shape else 1, -1)[start:stop]
        meta = self.info(tensor)
        location = meta["location"]
        handle = self.files.get(location)
        if handle is None:
            handle = self.files[location] = open(self.folder / location, "rb")
        itemsize = np.dtype(dtype).itemsize
        handle.seek(int(meta.get("offset", 0)) + start * row_elems * itemsize)
        count = (stop - start) * row_elems
        data = np.fromfile(handle, dtype=dtype, count=count)
        return data.reshape(stop - start, row_elems)

    def close(self):
        for handle in self.files.values():
            handle.close()
        self.files.clear()


def _rows_per_chunk(row_bytes: int, multiple: int = 1) -> int:
    rows = max(multiple, CHUNK_BYTES // max(1, row_bytes))
    return rows - rows % multiple if rows >= multiple else multiple


def _quantize_matmul_weight(reader, tensor) -> tuple[np.ndarray, np.ndarray]:
    """(packed [N, k_blocks, 16] uint8, scales [N, k_blocks] fp32) of W [K, N], K read in chunks."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    k, n = (int(d) for d in tensor.dims)
    k_blocks = -(-k // MATMUL_BLOCK)
    packed = np.zeros((n, k_blocks, MATMUL_BLOCK // 2), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    step = _rows_per_chunk(n * 4, MATMUL_BLOCK)
    for start in range(0, k, step):
        stop = min(k, start + step)
        chunk = reader.rows(tensor, start, stop).astype(np.float32, copy=False)
        rows = stop - start
        blocks = -(-rows // MATMUL_BLOCK)
        if rows % MATMUL_BLOCK:
            chunk = np.pad(chunk, ((0, blocks * MATMUL_BLOCK - rows), (0, 0)))
        chunk = np.ascontiguousarray(chunk)
        part_packed = np.zeros((n, blocks, MATMUL_BLOCK // 2), dtype=np.uint8)
        part_scales = np.zeros((n, blocks), dtype=np.float32)
        zero_point = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
        quantize_matmul_4bits(part_packed, chunk, part_scales, zero_point, MATMUL_BLOCK, n, rows, True)
        first = start // MATMUL_BLOCK
        packed[:, first:first + blocks] = part_packed
        scales[:, first:first + blocks] = part_scales
    return packed, scales


def _quantize_rows(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of 32 along the last axis (onnxruntime's symmetric rule): (int4 pairs as uint8, scales)."""
    rows, cols = chunk.shape
    blocks = chunk.reshape(rows, cols // TABLE_BLOCK, TABLE_BLOCK)
    high, low = blocks.max(axis=2, keepdims=True), blocks.min(axis=2, keepdims=True)
    abs_max = np.where(np.abs(high) > np.abs(low), high, low)
    scale = abs_max / -8.0
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale == 0, 0, blocks / scale).round().clip(-8, 7).astype(np.int8).reshape(-1)
    packed = ((q[0::2] & 0xF) | ((q[1::2] & 0xF) << 4)).astype(np.uint8)
    return packed, scale.reshape(rows, cols // TABLE_BLOCK).astype(np.float32)


class _Writer:
    def __init__(self, data_path: Path):
        self.data_path = data_path
        self.file = open(data_path, "wb")

    def tensor(self, name: str, data_type: int, dims, chunks, nbytes: int) -> TensorProto:
        """An external TensorProto whose bytes (``nbytes`` of them) come from ``chunks`` (arrays)."""
        offset = pad_to_alignment(self.file) if nbytes >= ALIGN_BYTES else self.file.tell()
        length = 0
        for chunk in chunks:
            raw = np.ascontiguousarray(chunk)
            self.file.write(raw.data)
            length += raw.nbytes
        proto = TensorProto(name=name, data_type=data_type, dims=list(dims))
        mark_external(proto, self.data_path.name, offset, length)
        return proto

    def array(self, name: str, array: np.ndarray) -> TensorProto:
        if array.nbytes < INLINE_BYTES:
            return onnx.numpy_helper.from_array(array, name)
        return self.tensor(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape, [array], array.nbytes)

    def close(self):
        self.file.close()


def quantize_q4_streamed(src: Path, dst: Path, progress=None) -> dict:
    """Write the q4 variant of ``src`` to ``dst`` (+ ``dst``_data). ``progress(done, total)`` is called per
    weight. Returns counts of what was quantised."""
    src, dst = Path(src), Path(dst)
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"cannot read ONNX graph {src}: {exc}", source=str(src)) from exc
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    reader = _ExternalReader(src.parent)
    writer = _Writer(dst.with_name(dst.name + "_data"))
    done_matmul: dict = {}
    done_gather: dict = {}
    new_nodes, counts = [], {"matmul": 0, "gather": 0, "copied": 0, "packed": 0}
    targets = [n for n in graph.node if _matmul_weight(n, inits) or _gather_table(n, inits)]
    groups = _shared_input_groups(graph.node, inits)
    try:
        for node in graph.node:
            weight = _matmul_weight(node, inits)
            table = _gather_table(node, inits) if weight is None else None
            group = groups.get(id(node))
            if group is not None:
                if group[0] is node:        # the group's first member writes them all; the others are done
                    nodes, tensors = _packed_matmul(group, inits, reader, writer)
                    new_nodes.extend(nodes)
                    done_matmul[nodes[1].name] = tensors
                    counts["matmul"] += len(group)
                    counts["packed"] += 1
                    if progress:
                        progress(counts["matmul"] + counts["gather"], len(targets))
            elif weight is not None:
                if weight.name not in done_matmul:
                    packed, scales = _quantize_matmul_weight(reader, weight)
                    done_matmul[weight.name] = (writer.array(weight.name + "_Q4", packed),
                                                writer.array(weight.name + "_scales", scales))
                    counts["matmul"] += 1
                    if progress:
                        progress(counts["matmul"] + counts["gather"], len(targets))
                q, s = done_matmul[weight.name]
                k, n = (int(d) for d in weight.dims)
                new_nodes.append(helper.make_node(
                    "MatMulNBits", [node.input[0], q.name, s.name], list(node.output),
                    name=(node.name + "_Q4") if node.name else "", domain="com.microsoft",
                    K=k, N=n, bits=4, block_size=MATMUL_BLOCK, accuracy_level=ACCURACY_LEVEL))
            elif table is not None:
                if table.name not in done_gather:
                    done_gather[table.name] = _quantize_table(reader, writer, table)
                    counts["gather"] += 1
                    if progress:
                        progress(counts["matmul"] + counts["gather"], len(targets))
                q, s = done_gather[table.name]
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                new_nodes.append(helper.make_node(
                    "GatherBlockQuantized", [q.name, node.input[1], s.name], list(node.output),
                    name=(node.name + "_Q4") if node.name else "", domain="com.microsoft",
                    gather_axis=axis, quantize_axis=1, block_size=TABLE_BLOCK))
            else:
                new_nodes.append(node)
        used = {name for node in new_nodes for name in node.input} | _subgraph_inputs(new_nodes)
        kept = []
        for tensor in graph.initializer:
            if tensor.name not in used:
                continue
            kept.append(_copy(reader, writer, tensor))
            counts["copied"] += 1
        for pair in list(done_matmul.values()) + list(done_gather.values()):
            kept.extend(pair)
    finally:
        reader.close()
        writer.close()
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return counts


def _shared_input_groups(nodes, inits) -> dict:
    """MatMuls that read the same input, each with its own weight of the same K (q/k/v, gate/up): one
    ``MatMulNBits`` over their weights side by side, then a ``Split``, reads the input's blocks once and runs one
    kernel instead of two or three. ``{id(node): [members in graph order]}`` for groups of two or more."""
    uses: dict = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    by_input: dict = {}
    for node in nodes:
        weight = _matmul_weight(node, inits)
        if weight is None or uses.get(weight.name, 0) != 1 or len(node.output) != 1:
            continue
        by_input.setdefault((node.input[0], int(weight.dims[0])), []).append(node)
    return {id(n): members for members in by_input.values() if len(members) > 1 for n in members}


def _packed_matmul(group, inits, reader, writer) -> tuple[list, tuple]:
    """(nodes, initializers) replacing ``group``: MatMulNBits over the concatenated weights (each row of the
    packed weight is one output column, so the columns are the members' own, computed the same) and a Split."""
    packed, scales, widths = [], [], []
    for node in group:
        q, s = _quantize_matmul_weight(reader, inits[node.input[1]])
        packed.append(q)
        scales.append(s)
        widths.append(q.shape[0])
    first = group[0]
    base = (first.name or first.output[0]) + "_packed"
    q = writer.array(base + "_Q4", np.concatenate(packed))
    s = writer.array(base + "_scales", np.concatenate(scales))
    sizes = onnx.numpy_helper.from_array(np.asarray(widths, dtype=np.int64), base + "_sizes")
    k = int(inits[first.input[1]].dims[0])
    return [
        helper.make_node("Constant", [], [sizes.name], name=base + "_sizes", value=sizes),
        helper.make_node("MatMulNBits", [first.input[0], q.name, s.name], [base], name=base + "_Q4",
                         domain="com.microsoft", K=k, N=int(sum(widths)), bits=4, block_size=MATMUL_BLOCK,
                         accuracy_level=ACCURACY_LEVEL),
        helper.make_node("Split", [base, sizes.name], [n.output[0] for n in group], name=base + "_split", axis=-1),
    ], (q, s)


def _subgraph_inputs(nodes) -> set:
    names = set()
    for node in nodes:
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in graphs:
                names |= {name for n in sub.node for name in n.input}
                names |= _subgraph_inputs(sub.node)
    return names


def _float2d(tensor) -> bool:
    return tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2


def _matmul_weight(node, inits):
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    weight = inits.get(node.input[1])
    return weight if _float2d(weight) else None


def _gather_table(node, inits):
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
        return None
    table = inits.get(node.input[0])
    if not _float2d(table) or int(table.dims[1]) % TABLE_BLOCK:
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return table if axis == 0 else None


def _quantize_table(reader, writer, table) -> tuple[TensorProto, TensorProto]:
    rows, cols = (int(d) for d in table.dims)
    step = _rows_per_chunk(cols * 4)
    scales = []

    def packed_chunks():
        for start in range(0, rows, step):
            packed, scale = _quantize_rows(reader.rows(table, start, min(rows, start + step)).astype(np.float32))
            scales.append(scale)
            yield packed

    q = writer.tensor(table.name + "_Q4", TensorProto.INT4, (rows, cols), packed_chunks(), rows * cols // 2)
    s = writer.array(table.name + "_scales", np.concatenate(scales, axis=0))
    return q, s


def _copy(reader, writer, tensor) -> TensorProto:
    if tensor.data_location != TensorProto.EXTERNAL:
        return tensor
    shape = list(tensor.dims)
    rows = shape[0] if shape else 1
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize) if len(shape) > 1 else itemsize
    step = _rows_per_chunk(row_bytes)
    if not shape:
        return writer.array(tensor.name, reader.rows(tensor, 0, 1).reshape(()))
    chunks = (reader.rows(tensor, start, min(rows, start + step)) for start in range(0, rows, step))
    return writer.tensor(tensor.name, tensor.data_type, shape, chunks, rows * row_bytes)
