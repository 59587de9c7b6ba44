"""The CPU variant of a kernel decoder: sliding layers keep only a window-sized KV cache, and fewer, fused nodes.

``decoder_model_merged<suffix>.onnx`` attends through ``GroupQueryAttention`` and takes a growing or a
full-length in-place cache (what transformers.js and every other runtime feed it). Its ring variant,
``decoder_model_ring<suffix>.onnx``, is the same graph with ``sliding_window_cache=1`` on the sliding
layers' attention: their cache is a buffer of ``sliding_window + RING_SLACK`` slots that the kernel evicts
from itself, so a decode step reads at most that many keys whatever the context length, and the cache
stops growing. Every initializer is the same, so the variant references the original's weight file: it
costs a few hundred kilobytes of graph, no weights. edgevid's runtime picks it on the CPU
(``edgevid.model.sessions.DecoderSession``); it cannot take a growing cache, so it is a separate file.

Because only edgevid's runtime loads it, and that runtime feeds one unpadded row, the variant also carries
the CPU rewrites of ``cpu_fusions`` (skip-norms, no attention bias, ...). A kernel decoder without sliding
layers to ring still gets the variant, for those.
"""
from __future__ import annotations

from pathlib import Path

from edgevid.model.folder_format import (EMBEDS_INSIDE, GRAPH_FILES, KV_RING, PREFILL_CHUNK, VISION_BLOCKS,
                                         ring_path)

from .cpu_fusions import fold_embedding, fuse_for_cpu

RING_SLACK = 256                              # slots above the window: the kernel compacts every 257 steps


def write_ring_variant(decoder: Path, prefill_chunk: int | None = None) -> Path | None:
    """Write the CPU variant next to ``decoder`` (None when it is not a kernel decoder)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(decoder), load_external_data=False)
    past = {i.name: i for i in model.graph.input}
    rings, kernel = {}, False
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
            continue
        kernel = True
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        window = int(attrs.get("local_window_size", -1))
        if window <= 0 or attrs.get("sliding_window_cache"):
            continue
        node.attribute.append(helper.make_attribute("sliding_window_cache", 1))
        layer = node.input[3].split(".")[1]
        if node.input[3] in past:
            rings[layer] = window + RING_SLACK
    if not kernel:
        return None
    kept = [p for p in model.metadata_props if p.key not in (KV_RING, EMBEDS_INSIDE, PREFILL_CHUNK, VISION_BLOCKS)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if rings:
        model.metadata_props.add(key=KV_RING, value=",".join(f"{k}:{v}" for k, v in sorted(rings.items(), key=lambda kv: int(kv[0]))))
    for value in (*model.graph.input, *model.graph.output):       # the cache axis is now a capacity
        if value.name.startswith(("past_key_values.", "present.")) and value.name.split(".")[1] in rings:
            value.type.tensor_type.shape.dim[2].dim_param = "ring_capacity"
    embed = decoder.with_name(decoder.name.replace(GRAPH_FILES["decoder"], GRAPH_FILES["embed_tokens"], 1))
    blocks = "input_ids" in past                  # the decoder reads ids for bidirectional vision blocks
    if embed != decoder and embed.is_file() and fold_embedding(model, onnx.load(str(embed), load_external_data=False)):
        model.metadata_props.add(key=EMBEDS_INSIDE, value="1")
        if blocks:
            model.metadata_props.add(key=VISION_BLOCKS, value="1")
    if prefill_chunk:
        model.metadata_props.add(key=PREFILL_CHUNK, value=str(int(prefill_chunk)))
    fuse_for_cpu(model)
    out = ring_path(decoder)
    onnx.save(model, str(out))          # initializers keep their external-data entries: the same weight file
    return out
