"""The model folder's ``edgevid.json``: one definition that the writer (``edgevid_export.model_folder``)
and the reader (:mod:`edgevid.model.manifest`) share, so the two cannot drift apart."""
from __future__ import annotations

MANIFEST = "edgevid.json"
FORMAT_VERSION = 1                         # what export writes
SUPPORTED_FORMAT_VERSIONS = (1,)           # what the runtime reads

PRECISIONS = ("fp32", "fp16", "int8", "q4")
GRAPHS = ("vision_encoder", "embed_tokens", "decoder")
# graph key -> file stem; precision -> file suffix (onnx-community's names)
GRAPH_FILES = {"vision_encoder": "vision_encoder", "embed_tokens": "embed_tokens", "decoder": "decoder_model_merged"}
SUFFIX = {"fp32": "", "fp16": "_fp16", "int8": "_quantized", "q4": "_q4"}


def graph_files(precision: str) -> dict[str, str]:
    """``{"vision_encoder": "vision_encoder_q4.onnx", ...}`` for a precision."""
    return {key: f"{stem}{SUFFIX[precision]}.onnx" for key, stem in GRAPH_FILES.items()}
