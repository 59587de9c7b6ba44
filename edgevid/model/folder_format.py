"""The model folder's layout and ``edgevid.json``: one definition that the writer
(``edgevid_export.model_folder``) and the reader (:mod:`edgevid.model.manifest`) share, so the two cannot
drift apart.

Format 2 is onnx-community's layout (what transformers.js loads): graphs in ``onnx/<graph><suffix>.onnx``,
``edgevid.json`` optional and only adding facts. Format 3 is the same layout with a kernel decoder: its cache
layers attend through ``com.microsoft.GroupQueryAttention`` and the graph's metadata ``edgevid.kv_in_place``
names the layers whose KV cache the runtime may write in place (``decoder.kv_in_place`` in ``edgevid.json``
says the same). The tensor contract is unchanged, so format 2 runtimes run it with a growing cache, and
format 2 folders (classic decoders, e.g. the bundled demo) and format 1 folders (graphs at the root,
``edgevid.json`` listing them) still load.
"""
from __future__ import annotations

from pathlib import Path

MANIFEST = "edgevid.json"
FORMAT_VERSION = 3                         # what export writes
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)      # what the runtime reads
GRAPH_DIR = "onnx"

PRECISIONS = ("fp32", "fp16", "int8", "q4", "q4f16")     # what export writes
GRAPHS = ("vision_encoder", "embed_tokens", "decoder")
# graph key -> file stem; precision -> file suffix (onnx-community's names)
GRAPH_FILES = {"vision_encoder": "vision_encoder", "embed_tokens": "embed_tokens", "decoder": "decoder_model_merged"}
SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_quantized", "q4": "_q4", "q4f16": "_q4f16"}
# the kernel decoder's metadata, and the ring variant beside it (``edgevid_export.ring_graph``)
KV_IN_PLACE = "edgevid.kv_in_place"     # decoder metadata: layers whose past and present may be one buffer
KV_RING = "edgevid.kv_ring"             # ring variant's metadata: "layer:capacity,..." of window-sized caches
RING_STEM = "decoder_model_ring"
EMBEDS_INSIDE = "edgevid.embeds_inside"  # ring variant's metadata: it looks up input_ids itself (inputs_embeds: media rows)
VISION_BLOCKS = "edgevid.vision_blocks"  # ring variant's metadata: input_ids also mark bidirectional vision blocks
PREFILL_CHUNK = "edgevid.prefill_chunk"  # ring variant's metadata: prompt tokens per prefill run suited to the model
# every suffix a folder may hold, named as transformers.js names them (utils/dtypes.js): "q8" is the 8-bit
# dynamic quantisation shipped as ``_quantized``, which edgevid's export calls int8
RUNTIME_SUFFIXES = {"fp32": "", "fp16": "_fp16", "q8": "_quantized", "int8": "_int8", "uint8": "_uint8",
                    "q4": "_q4", "q4f16": "_q4f16", "bnb4": "_bnb4"}


def graph_files(precision: str, directory: str = GRAPH_DIR) -> dict[str, str]:
    """``{"vision_encoder": "onnx/vision_encoder_q4.onnx", ...}`` for a precision (``directory="."``: the root)."""
    prefix = f"{directory}/" if directory not in ("", ".") else ""
    return {key: f"{prefix}{stem}{SUFFIX[precision]}.onnx" for key, stem in GRAPH_FILES.items()}


def ring_path(decoder: Path) -> Path:
    """``onnx/decoder_model_ring<suffix>.onnx`` beside ``onnx/decoder_model_merged<suffix>.onnx``."""
    return decoder.with_name(decoder.name.replace(GRAPH_FILES["decoder"], RING_STEM, 1))
