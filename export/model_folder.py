"""Everything in the model folder besides the graphs: checkpoint side files, the files other runtimes need
(``preprocessor_config.json``, an ``audio_encoder`` answer, ``transformers.js_config``) and ``edgevid.json``.

The layout is onnx-community's (what transformers.js and the published Gemma 4 ONNX folders use): graphs in
``onnx/<graph><suffix>.onnx`` with weights in ``<file>_data`` beside them, configs at the root.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from edgevid.model.folder_format import (  # noqa: F401  (the schema the runtime reads: one definition)
    FORMAT_VERSION, GRAPH_DIR, GRAPH_FILES, GRAPHS as GRAPH_NAMES, MANIFEST, SUFFIX, graph_files,
)

from .decoder import DecoderLayout

log = logging.getLogger(__name__)

SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
)
# transformers.js loads an audio encoder for every Gemma4ForConditionalGeneration
AUDIO_ENCODER = "audio_encoder"
PREPROCESSOR_CONFIG = {"processor_class": "Gemma4Processor"}


def existing_graph_files(folder: Path, precision: str) -> dict:
    """``graph_files`` in onnx/, or at the root for folders written before the onnx/ layout."""
    files = graph_files(precision)
    if all((folder / name).is_file() for name in files.values()):
        return files
    root = graph_files(precision, ".")
    return root if all((folder / name).is_file() for name in root.values()) else files


def files_size(folder: Path, files: dict) -> int:
    total = 0
    for name in files.values():
        path = folder / name
        total += path.stat().st_size
        data = path.with_name(path.name + "_data")
        if data.exists():
            total += data.stat().st_size
    return total


def copy_side_files(checkpoint: Path | None, output: Path, model, source: str) -> list[str]:
    """Copy the checkpoint's config / tokenizer / template / processor files; fill the gaps from the model
    (config, generation config) and from ``AutoProcessor`` when it can be loaded. Returns the names written."""
    written = []
    if checkpoint is not None:
        for name in SIDE_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, output / name)
                written.append(name)
    if "config.json" not in written:
        model.config.to_json_file(output / "config.json")
        written.append("config.json")
    if "generation_config.json" not in written and model.generation_config is not None:
        model.generation_config.to_json_file(output / "generation_config.json")
        written.append("generation_config.json")
    if "processor_config.json" not in written:
        try:
            from transformers import AutoProcessor

            AutoProcessor.from_pretrained(source).save_pretrained(output)
            written.append("processor_config.json (AutoProcessor)")
        except Exception as exc:  # a bare checkpoint without tokenizer/processor files
            log.info("no processor saved for %s: %s", source, exc)
    return written


def _processor_facts(output: Path) -> dict:
    facts = {}
    for name in ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json"):
        path = output / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            facts.setdefault("video", data.get("video_processor", data if "video" in name else {}))
            facts.setdefault("image", data.get("image_processor", data if name == "preprocessor_config.json" else {}))
    return facts


def special_tokens(config, output: Path) -> dict:
    text = config.get_text_config()
    eos = text.eos_token_id if isinstance(text.eos_token_id, list) else [text.eos_token_id]
    gen = output / "generation_config.json"
    if gen.is_file():
        gen_eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        for token in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if token is not None and token not in eos:
                eos.append(token)
    ids = {"bos": text.bos_token_id, "eos": [t for t in eos if t is not None], "pad": text.pad_token_id,
           "boi": config.boi_token_id, "eoi": config.eoi_token_id, "image": config.image_token_id,
           "video": config.video_token_id, "audio": getattr(config, "audio_token_id", None),
           "boa": getattr(config, "boa_token_id", None), "eoa": getattr(config, "eoa_token_index", None)}
    strings = _token_strings(output, ids)
    for key in ("boi", "eoi", "image", "video", "audio", "boa", "eoa", "bos", "pad"):
        ids[f"{key}_text"] = strings.get(ids[key]) if ids[key] is not None else None
    ids["eos_text"] = [strings.get(t) for t in ids["eos"]]
    return ids


def _token_strings(output: Path, ids: dict) -> dict:
    path = output / "tokenizer.json"
    if not path.is_file():
        return {}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    wanted = {v for v in ids.values() if isinstance(v, int)} | set(ids["eos"])
    return {t: tokenizer.id_to_token(t) for t in wanted}


def decoder_facts(config, layout: DecoderLayout) -> dict:
    text = config.get_text_config()
    return {
        "num_hidden_layers": layout.num_hidden_layers,
        "layer_types": list(layout.layer_types),
        "cache_layers": list(layout.cache_layers),
        "kv_in_place": list(layout.in_place_layers),
        "kv_shared_layers": {str(k): v for k, v in layout.shared_from.items()},
        "hidden_size": layout.hidden_size,
        "per_layer_inputs": layout.per_layer_inputs,
        "per_layer_dim": layout.per_layer_dim,
        "bidirectional_vision": layout.bidirectional_vision,
        "moe": layout.moe,
        "sliding_window": layout.sliding_window,
        "max_position_embeddings": text.max_position_embeddings,
        "vocab_size": layout.vocab_size,
        "final_logit_softcapping": text.final_logit_softcapping,
        "num_logits_to_keep": True,
        "embed_tokens_replaces_placeholders": True,
    }


def write_audio_encoder(path: Path, hidden_size: int, dtype: str = "float32") -> Path:
    """An ``audio_encoder`` for a model without audio: it takes what transformers.js would feed
    (``input_features`` [batch, frames, 128], ``input_features_mask``) and answers zero ``audio_features``
    rows, so loading succeeds and a prompt with audio fails on the feature count, not on a missing file."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    zero = numpy_helper.from_array(np.zeros(1, np.float16 if dtype == "float16" else np.float32), "zero")
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["no_rows_shape"], ["audio_features"], value=zero)],
        "audio_encoder_absent",
        [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch_size", "num_frames", 128]),
         helper.make_tensor_value_info("input_features_mask", TensorProto.BOOL, ["batch_size", "num_frames"])],
        [helper.make_tensor_value_info("audio_features", elem, [0, hidden_size])],
        initializer=[numpy_helper.from_array(np.array([0, hidden_size], np.int64), "no_rows_shape")],
        doc_string="this model has no audio tower: zero audio_features rows",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgevid_export")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def write_interop_files(output: Path, config, precisions: dict) -> list[str]:
    """What transformers.js needs beside the graphs: ``preprocessor_config.json`` (onnx-community's 43 bytes),
    an ``audio_encoder`` per precision, and ``transformers.js_config`` in config.json (which graphs have one
    external-data chunk; fp16 KV for q4f16). Returns the files written."""
    written = []
    pre = output / "preprocessor_config.json"
    if not pre.is_file():
        pre.write_text(json.dumps(PREPROCESSOR_CONFIG) + "\n", encoding="utf-8")
        written.append(pre.name)
    hidden = config.get_text_config().hidden_size
    chunks = {}
    for precision, entry in precisions.items():
        audio = f"{GRAPH_DIR}/{AUDIO_ENCODER}{SUFFIX[precision]}.onnx"
        write_audio_encoder(output / audio, hidden, "float16" if precision == "q4f16" else "float32")
        written.append(audio)
        for key in GRAPH_NAMES:
            file = output / entry[key]
            if file.with_name(file.name + "_data").is_file():
                chunks[file.name] = 1
    path = output / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    tjs = dict(data.get("transformers.js_config") or {})
    tjs["use_external_data_format"] = chunks
    if "q4f16" in precisions:
        tjs["kv_cache_dtype"] = {"q4f16": "float16"}
    data["transformers.js_config"] = tjs
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return written


def write_manifest(output: Path, *, config, layout: DecoderLayout, source: str, precisions: dict,
                   parity: dict | None) -> Path:
    facts = _processor_facts(output)
    video, image = facts.get("video", {}), facts.get("image", {})
    vision = config.vision_config
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_type": "gemma4",
        "source": source,
        "precisions": precisions,
        "special_tokens": special_tokens(config, output),
        "video": {"num_frames": int(video.get("num_frames", 32)),
                  "max_soft_tokens": int(video.get("max_soft_tokens", 70)),
                  "default_fps": 24.0},
        "image": {"max_soft_tokens": int(image.get("max_soft_tokens", 280))},
        "vision": {"patch_size": vision.patch_size, "pooling_kernel_size": vision.pooling_kernel_size,
                   "hidden_size": vision.hidden_size, "position_embedding_size": vision.position_embedding_size},
        "audio": None,
        "decoder": decoder_facts(config, layout),
        "parity": parity if parity is not None else {"skipped": True},
    }
    path = output / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
