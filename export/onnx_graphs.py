"""Export the three graphs with ``torch.onnx.export(dynamo=True)``.

Example inputs use sizes >= 2 on every dynamic axis (torch.export specialises 0 and 1); zero-length
``past`` still runs in onnxruntime. Weights are saved as aligned external data (``<graph>.onnx_data``)
whatever their size, so that onnxruntime maps them (see ``_save``).

What other runtimes read from the graphs (transformers.js, onnxruntime-genai, the onnx-community layout):
dynamic dimensions are named (``name_dims``: ``batch_size``, ``sequence_length``, ``past_sequence_length``,
``total_sequence_length``...) because transformers.js builds the empty KV cache from the names (only
``batch_size`` becomes 1, every other name 0); ``num_logits_to_keep`` is a real decoder input (a graph input
with a default initializer is invisible to them); the vision encoder returns one row per soft token
(``rows_per_soft_token``).
"""
from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path

import torch

from edgevid.model.folder_format import KV_IN_PLACE

from .decoder import DecoderGraph
from .embed_graph import write_embed_graph
from .encoders import VisionEncoderGraph

log = logging.getLogger(__name__)

OPTIMIZE = True          # onnxscript's optimizer (constant folding, cleanup) before saving
AUTO = torch.export.Dim.DYNAMIC     # dynamic, and an error (not a silent constant) if export specialises


def _export(module, args, path: Path, input_names, output_names, dynamic_shapes, opset: int | None,
            weights=None, translations=None):
    """``weights`` = (``skeleton.Skeleton``, ``CheckpointTensors``) when ``module`` belongs to a weightless
    skeleton: the weights are then bound to the checkpoint and streamed into the data file (``skeleton``)."""
    kwargs = dict(
        input_names=list(input_names), output_names=list(output_names), dynamic_shapes=dynamic_shapes,
        dynamo=True, external_data=True, optimize=OPTIMIZE and weights is None, verbose=False,
    )
    if translations:
        kwargs["custom_translation_table"] = translations
    if opset is not None:
        kwargs["opset_version"] = opset
    # "torchvision is not installed. Skipping torchvision::nms" x4 per export: not ours to act on
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(args), None, **kwargs)
    if weights is not None:
        from .skeleton import bind_weights, fold_weight_transposes, optimize_without_weights

        skeleton, checkpoint = weights
        bound = bind_weights(program.model, module, skeleton, checkpoint)
        folded = fold_weight_transposes(program.model)
        if OPTIMIZE:
            optimize_without_weights(program.model)
        log.info("%s: %d weights streamed from the checkpoint (%d read transposed)", path.name, bound, folded)
    integer_clips_as_max(program.model.graph)
    _save(program, path)
    del program
    gc.collect()
    return path


def integer_clips_as_max(graph) -> int:
    """Rewrite ``Clip(x, min)`` with no ``max`` on integer tensors as ``Max(x, min)`` (same result). torch
    exports ``positions.clamp(min=0)`` that way, and OpenVINO's CPU plugin (onnxruntime-openvino 1.24) returns
    wrong values for it: the vision encoder's patch positions came back altered and every feature was off.
    Returns the number of nodes rewritten."""
    import onnx_ir as ir

    integer = {ir.DataType.INT64, ir.DataType.INT32}
    count = 0
    for node in ir.traversal.RecursiveGraphIterator(graph):
        inputs = node.inputs
        if node.op_type != "Clip" or node.domain not in ("", "ai.onnx") or len(inputs) < 2 or inputs[1] is None:
            continue
        if (len(inputs) > 2 and inputs[2] is not None) or inputs[0] is None or inputs[0].dtype not in integer:
            continue
        node.resize_inputs(2)
        node.op_type = "Max"
        count += 1
    return count


def _save(program, path: Path) -> None:
    """Graph in ``<name>.onnx``, weights in ``<name>.onnx_data`` beside it, every tensor over 1 MiB at a
    64 KiB-aligned offset (whatever the size: not only past 2 GB). onnxruntime then maps the weights instead
    of parsing them out of the graph file: loading the benchmark's 735 MB fp32 decoder peaked at
    +0.97-1.35 GB over the RSS before it (varying run to run) inline, at +0.93 GB every time mapped,
    with the same RSS once loaded. Streaming the weights out also keeps the export's own peak low."""
    import onnx_ir

    from .mapped_tables import ALIGNMENT

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + "_data")
    if data.exists():
        data.unlink()
    size = sum(int(t.const_value.nbytes) for t in program.model.graph.initializers.values() if t.const_value is not None)
    log.info("%s: %.2f GB of weights -> %s", path.name, size / 1024 ** 3, data.name)
    from .progress import Bar

    with Bar(f"writing {data.name} ({size / 1024 ** 3:.1f} GB)") as bar:
        written = [0]

        def tick(tensor, info):
            written[0] += 1
            bar.update(written[0], info.total)

        onnx_ir.save(program.model, str(path), external_data=data.name, alignment=ALIGNMENT, callback=tick)


# graph input/output -> a name per axis (None: static, left as it is)
VISION_DIMS = {"pixel_values": ("num_images", "num_patches", None),
               "pixel_position_ids": ("num_images", "num_patches", None),
               "image_features": ("num_soft_tokens", None)}


def decoder_dims(names: list[str], outputs: list[str]) -> dict:
    dims = {"inputs_embeds": ("batch_size", "sequence_length", None),
            "per_layer_inputs": ("batch_size", "sequence_length", None, None),
            "attention_mask": ("batch_size", "total_sequence_length"),
            "position_ids": ("batch_size", "sequence_length"),
            "input_ids": ("batch_size", "sequence_length"),
            "logits": ("batch_size", "num_logits", None)}
    for name in names + outputs:
        if name.startswith("past_key_values."):
            dims[name] = ("batch_size", None, "past_sequence_length", None)
        elif name.startswith("present."):
            dims[name] = ("batch_size", None, "total_sequence_length", None)
    return dims


def name_dims(path: Path, names: dict) -> None:
    """Give the dynamic axes of the graph's inputs/outputs the names in ``names`` (torch.export writes
    ``s15``, ``s15 + s70``...). A symbol named on an input is renamed everywhere it appears (inside
    expressions too), so onnxruntime's shape inference still sees the same relations. Weights untouched."""
    import re

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    rename = {}
    for value in graph.input:
        for dim, wanted in zip(value.type.tensor_type.shape.dim, names.get(value.name, ())):
            if wanted and re.fullmatch(r"[A-Za-z_]\w*", dim.dim_param or "") and dim.dim_param != wanted:
                rename.setdefault(dim.dim_param, wanted)
    symbol = re.compile(r"[A-Za-z_]\w*")
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = symbol.sub(lambda m: rename.get(m.group(0), m.group(0)), dim.dim_param)
    for value in (*graph.input, *graph.output):
        for dim, wanted in zip(value.type.tensor_type.shape.dim, names.get(value.name, ())):
            if wanted and not dim.HasField("dim_value"):
                dim.dim_param = wanted
    onnx.save(model, str(path))


def rows_per_soft_token(path: Path, pooling_kernel_size: int) -> None:
    """Turn ``image_features`` [frames, pooled slots, hidden] into [frames x n, hidden], n = the most real
    soft tokens of any frame in the call, by a Slice whose end is computed from ``pixel_position_ids``:
    one row per soft token for a single image or the frames of one video (what transformers.js and the
    published graphs give), and no data-dependent gather (OpenVINO mis-shaped ``pooled[valid]``, 4 rows for
    280). Frames of one call with fewer real patches keep padding rows at their end (the runtime drops them)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:
        raise ValueError(f"{path.name}: opset {opset} < 18 (ReduceMin with axes as an input)")
    out = graph.output[0]
    hidden = out.type.tensor_type.shape.dim[-1].dim_value
    pooled = "image_features_slots"
    for node in graph.node:
        node.output[:] = [pooled if name == out.name else name for name in node.output]
        node.input[:] = [pooled if name == out.name else name for name in node.input]
    consts = {"rows_zero": np.array(0, np.int64), "rows_axis_coord": np.array([2], np.int64),
              "rows_axis_patch": np.array([1], np.int64), "rows_axis_frame": np.array([0], np.int64),
              "rows_area": np.array([pooling_kernel_size ** 2], np.int64), "rows_start": np.array([0], np.int64),
              "rows_shape": np.array([-1, hidden], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    graph.node.extend([
        helper.make_node("GreaterOrEqual", ["pixel_position_ids", "rows_zero"], ["rows_coord_real"]),
        helper.make_node("Cast", ["rows_coord_real"], ["rows_coord_real_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["rows_coord_real_i", "rows_axis_coord"], ["rows_patch_real"], keepdims=0),
        helper.make_node("ReduceSum", ["rows_patch_real", "rows_axis_patch"], ["rows_real_per_frame"], keepdims=0),
        helper.make_node("ReduceMax", ["rows_real_per_frame", "rows_axis_frame"], ["rows_real_most"], keepdims=1),
        helper.make_node("Div", ["rows_real_most", "rows_area"], ["rows_tokens"]),
        helper.make_node("Slice", [pooled, "rows_start", "rows_tokens", "rows_axis_patch"], ["rows_sliced"]),
        helper.make_node("Reshape", ["rows_sliced", "rows_shape"], [out.name]),
    ])
    del out.type.tensor_type.shape.dim[:]
    out.type.tensor_type.shape.dim.add().dim_param = "num_soft_tokens"
    out.type.tensor_type.shape.dim.add().dim_value = hidden
    onnx.save(model, str(path))


def _in_mode(weights, fn):
    """``fn()`` inside the skeleton's fake mode when exporting from a skeleton (its inputs must be fake too)."""
    return weights[0].example(fn) if weights is not None else fn()


def vision_example_inputs(vision):
    patch_dim = 3 * vision.patch_size ** 2
    frames, patches = 2, 2 * vision.pooling_kernel_size ** 2
    pixel_values = torch.rand(frames, patches, patch_dim)
    side = vision.pooling_kernel_size
    grid = torch.stack(torch.meshgrid(torch.arange(2 * side), torch.arange(side), indexing="xy"), -1).reshape(-1, 2)
    positions = grid.unsqueeze(0).repeat(frames, 1, 1).long()
    positions[1, side * side:] = -1                       # second frame half padding
    return pixel_values, positions


def export_vision(model, path: Path, opset=None, weights=None) -> Path:
    args = _in_mode(weights, lambda: vision_example_inputs(model.config.vision_config))
    dyn = ({0: AUTO, 1: AUTO}, {0: AUTO, 1: AUTO})
    _export(VisionEncoderGraph(model).eval(), args, path,
            ["pixel_values", "pixel_position_ids"], ["image_features"], dyn, opset, weights)
    rows_per_soft_token(path, model.config.vision_config.pooling_kernel_size)
    name_dims(path, VISION_DIMS)
    return path


def export_embed_tokens(model, path: Path, opset=None, weights=None) -> Path:
    """Written by hand (``embed_graph``): two lookups, tables streamed to ``embed_tokens.onnx_data`` at
    aligned offsets (onnxruntime maps them), no export copies."""
    return write_embed_graph(model, path, checkpoint=weights[1] if weights is not None else None)


def decoder_example_inputs(graph: DecoderGraph, batch=2, seq=3, past=4):
    layout = graph.layout
    tc = graph.tc
    args = [torch.randn(batch, seq, tc.hidden_size)]
    dyn = [{0: AUTO, 1: AUTO}]
    if layout.per_layer_inputs:
        args.append(torch.randn(batch, seq, tc.num_hidden_layers, layout.per_layer_dim))
        dyn.append({0: AUTO, 1: AUTO})
    args += [torch.ones(batch, past + seq, dtype=torch.int64),
             torch.arange(past, past + seq).unsqueeze(0).repeat(batch, 1)]
    dyn += [{0: AUTO, 1: AUTO}, {0: AUTO, 1: AUTO}]
    if layout.bidirectional_vision:
        args.append(torch.randint(3, tc.vocab_size, (batch, seq)))
        dyn.append({0: AUTO, 1: AUTO})
    for i in layout.cache_layers:
        for _ in ("key", "value"):
            args.append(torch.randn(batch, layout.kv_heads[i], past, layout.head_dims[i]))
            dyn.append({0: AUTO, 2: AUTO})
    args.append(torch.tensor(0, dtype=torch.int64))          # num_logits_to_keep
    dyn.append(None)
    return args, dyn


def export_decoder(model, path: Path, opset=None, weights=None, kernel: bool = True) -> Path:
    """The decoder graph; ``kernel``: its cache layers attend through ``GroupQueryAttention`` (see
    ``attention_op``) and the graph's metadata lists them under ``KV_IN_PLACE``."""
    from .attention_op import onnx_translation

    graph = DecoderGraph(model, kernel=kernel).eval()
    args, dyn = _in_mode(weights, lambda: decoder_example_inputs(graph))
    names, outputs = graph.layout.input_names(), graph.layout.output_names()
    _export(graph, args, path, names, outputs, (tuple(dyn),), opset, weights,
            translations=onnx_translation() if kernel else None)
    name_dims(path, decoder_dims(names, outputs))
    if kernel:
        set_metadata(path, {KV_IN_PLACE: ",".join(map(str, graph.layout.in_place_layers))})
    return path


def set_metadata(path: Path, values: dict) -> None:
    """Add ``values`` to the graph's ``metadata_props`` (weights untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def add_input_default(path: Path, name: str, value: int) -> None:
    """Make the scalar int64 input ``name`` optional: an initializer of the same name is its default
    (onnxruntime lets a feed override it). Weights are not loaded or moved."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    if not any(init.name == name for init in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
        onnx.save(model, str(path))
