"""Everything in the model folder besides the graphs: checkpoint side files and ``edgevid.json``."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from edgevid.model.folder_format import (  # noqa: F401  (the schema the runtime reads: one definition)
    FORMAT_VERSION, GRAPH_FILES, GRAPHS as GRAPH_NAMES, MANIFEST, SUFFIX, graph_files,
)

from .decoder import DecoderLayout

log = logging.getLogger(__name__)

SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
)
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
