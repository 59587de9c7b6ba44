"""What an export will need (peak memory, disk) and whether this machine clearly has it, said before starting.

The figures come from the checkpoint's tensor shapes and the streamed export's measured behaviour
(docs/real-size.md): the graphs are written one tensor at a time, the PyTorch reference keeps the decoder
layers in bf16 (fp32 only while a layer runs), the gate's onnxruntime sessions map the fp32 weights and give
their pages back while they run, and the quantiser reads one weight at a time.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgevid.errors import ExportError

GB = 1024 ** 3
BASE_BYTES = int(1.5 * GB)           # interpreter, torch, transformers, onnxruntime, the graph structures
# bytes on disk per fp32 weight byte of the decoder + tables, per precision (q4: 4.5 bits + fp32 leftovers)
DISK_PER_FP32_BYTE = {"fp32": 1.0, "fp16": 0.5, "int8": 0.27, "q4": 0.18}


@dataclass(frozen=True)
class Needs:
    memory_bytes: int
    disk_bytes: int
    parameters: int
    streamed: bool
    stages: dict                      # stage -> estimated peak bytes

    def describe(self) -> str:
        how = "weights streamed from the checkpoint" if self.streamed else "whole model loaded in fp32"
        return (f"edgevid export: {self.parameters / 1e9:.2f} B parameters ({how}); needs about "
                f"{self.memory_bytes / GB:.1f} GB of memory at peak and {self.disk_bytes / GB:.1f} GB of disk")


def _groups(config, tensors) -> dict:
    """Element counts: layers, embed (tied lm_head), per_layer table, other (vision, projections, norms)."""
    counts = {"layers": 0, "embed": 0, "per_layer": 0, "other": 0, "largest_layer": 0, "largest": 0}
    per_layer_total: dict = {}
    if tensors is not None:
        items = [(name, info.numel) for name, info in tensors.infos.items()
                 if not name.startswith(("model.audio_tower.", "model.embed_audio."))]
    else:
        from .skeleton import parameters_on_meta
        from transformers import Gemma4ForConditionalGeneration

        with parameters_on_meta():
            model = Gemma4ForConditionalGeneration(config)
        items = [(name, p.numel()) for name, p in model.named_parameters()
                 if not name.startswith(("model.audio_tower.", "model.embed_audio."))]
    for name, numel in items:
        if name.startswith("model.language_model.layers."):
            counts["layers"] += numel
            index = name.split(".")[3]
            per_layer_total[index] = per_layer_total.get(index, 0) + numel
        elif name == "model.language_model.embed_tokens.weight":
            counts["embed"] += numel
            continue                              # tables are read and written in row chunks
        elif name == "model.language_model.embed_tokens_per_layer.weight":
            counts["per_layer"] += numel
            continue
        elif name != "lm_head.weight":
            counts["other"] += numel
        counts["largest"] = max(counts["largest"], numel)
    counts["largest_layer"] = max(per_layer_total.values(), default=0)
    return counts


def estimate_needs(config, tensors, precisions, validate: bool = True, streamed: bool | None = None) -> Needs:
    """``streamed``: whether the weights will be streamed (default: when ``tensors`` were found); an estimate
    for a config without its checkpoint (E4B from E2B's measurement) passes True."""
    c = _groups(config, tensors)
    params = c["layers"] + c["embed"] + c["per_layer"] + c["other"]
    text = config.get_text_config()
    logits = 600 * text.vocab_size * 4 * 2        # the parity prompt's (~550 tokens) logits and a temporary
    decoder_fp32 = (c["layers"] + c["embed"] + c["other"]) * 4      # lm_head = the embedding table
    stages = {"graphs": BASE_BYTES + 3 * c["largest"] * 4}
    streamed = tensors is not None if streamed is None else streamed
    if streamed:
        # layers bf16, one widened; the tied table mapped and read in chunks (reference_model)
        stages["reference"] = (BASE_BYTES + c["layers"] * 2 + c["other"] * 4 + 2 * c["largest_layer"] * 4
                               + logits)
    else:
        stages["load"] = BASE_BYTES + params * 4 * 3
    if validate:
        stages["gate"] = BASE_BYTES + 2 * c["largest_layer"] * 4 + c["embed"] * 4 // 4 + logits
    if any(p != "fp32" for p in precisions):
        stages["quantize"] = BASE_BYTES + 3 * c["largest"] * 4 + decoder_fp32 // 6
    disk = sum(DISK_PER_FP32_BYTE[p] * (decoder_fp32 + (c["embed"] + c["per_layer"]) * 4) for p in precisions)
    return Needs(memory_bytes=int(max(stages.values())), disk_bytes=int(disk * 1.05), parameters=params,
                 streamed=streamed, stages=stages)


def check_machine(needs: Needs, output: Path, force: bool = False) -> None:
    """Refuse (``ExportError``) when the machine's RAM or the output's free disk is clearly below the needs."""
    if force:
        return
    import psutil

    total = psutil.virtual_memory().total
    free = shutil.disk_usage(_existing(output)).free + _existing_size(output)
    problems = []
    if needs.memory_bytes > total:
        problems.append(f"about {needs.memory_bytes / GB:.1f} GB of memory (this machine has {total / GB:.1f} GB)")
    if needs.disk_bytes > free:
        problems.append(f"about {needs.disk_bytes / GB:.1f} GB of disk ({free / GB:.1f} GB free at {output})")
    if problems:
        raise ExportError("this export needs " + " and ".join(problems) + "; free some, choose fewer "
                          "precisions, or pass --force to try anyway", source=str(output))


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _existing_size(folder: Path) -> int:
    """Bytes of graphs already in ``folder`` (an export over an old one overwrites them)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.glob("*.onnx*") if p.is_file())
