"""A model folder without graphs, for tests of the input side (manifest, prompt, tokenizer).

``write_model_folder(out)`` writes the shared demo tokenizer + chat template + processor config
(``edgevid_export.demo.build_demo_tokenizer``) and the JSON files the export writes beside the graphs
(``edgevid.json``, ``config.json``, ``generation_config.json``). ``graphs=True`` adds empty fp32 graph files
so ``graph_path`` finds them; the q4 entry is listed but its files are absent.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgevid.model.folder_format import MANIFEST, graph_files

_BUILT: dict[str, Path] = {}   # one demo tokenizer build per test process (it takes seconds)

FP32 = {**graph_files("fp32", "."), "size_bytes": 0}      # a format 1 folder: graphs at the root
Q4 = {**graph_files("q4", "."), "size_bytes": 0}


def _demo_tokenizer_files(scratch: Path) -> Path:
    if "demo" not in _BUILT:
        from edgevid_export.demo import build_demo_tokenizer

        out = scratch / "demo-tokenizer"
        build_demo_tokenizer(out)
        _BUILT["demo"] = out
    return _BUILT["demo"]


def write_model_folder(out: Path, scratch: Path | None = None, *, graphs: bool = True,
                       special_tokens: bool = True) -> Path:
    from edgevid_export.demo import demo_token_ids

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = _demo_tokenizer_files(Path(scratch or out.parent))
    for file in source.iterdir():
        shutil.copy(file, out / file.name)
    ids = demo_token_ids()
    manifest = {
        "format_version": 1, "model_type": "gemma4", "source": "demo",
        "precisions": {"fp32": FP32, "q4": Q4},
        "video": {"num_frames": 32, "max_soft_tokens": 70, "default_fps": 24.0},
        "image": {"max_soft_tokens": 280},
        "vision": {"patch_size": 16, "pooling_kernel_size": 3},
        "decoder": {"max_position_embeddings": 4096, "vocab_size": ids.vocab_size},
    }
    if special_tokens:
        manifest["special_tokens"] = {
            "bos": ids.bos, "eos": [ids.eos, ids.end_of_turn], "pad": ids.pad, "boi": ids.boi, "eoi": ids.eoi,
            "image": ids.image, "video": ids.video, "boi_text": "<|image>", "eoi_text": "<image|>",
            "image_text": "<|image|>", "video_text": "<|video|>"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({
        "model_type": "gemma4", "boi_token_id": ids.boi, "eoi_token_id": ids.eoi, "image_token_id": ids.image,
        "video_token_id": ids.video,
        "text_config": {"vocab_size": ids.vocab_size, "max_position_embeddings": 4096, "eos_token_id": ids.eos}}),
        encoding="utf-8")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids.bos, "pad_token_id": ids.pad, "eos_token_id": [ids.eos, ids.end_of_turn]}),
        encoding="utf-8")
    if graphs:
        for name in graph_files("fp32", ".").values():
            (out / name).write_bytes(b"")
    return out
