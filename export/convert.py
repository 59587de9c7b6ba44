"""``export_model``: a Gemma 4 checkpoint (folder or hub id) -> a verified edgevid model folder.

Stages (each reported through ``progress``): load -> vision graph -> embed graph -> decoder graph ->
side files -> parity gate -> other precisions -> interop files -> edgevid.json. Graphs go to ``onnx/``
(onnx-community's layout); a folder whose gate failed has its graphs moved to ``onnx.rejected/``, so the
runtime (which finds graphs by name, edgevid.json or not) refuses it.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Callable

from edgevid.errors import ExportError
from edgevid.model.folder_format import PRECISIONS      # one list with the CLI

from . import model_folder, onnx_graphs
from .checkpoint_tensors import CheckpointTensors
from .decoder import DecoderLayout
from edgevid.model.mapped_pages import MADV_DONTNEED, TrimMappedPages
from .parity import FP32_TOLERANCE, OnnxGemma, ParityReport, compare, top1_agreement, torch_greedy, torch_noise
from .parity_prompt import build_parity_prompt
from .reference_model import load_reference_model
from .resources import check_machine, estimate_needs
from .skeleton import Skeleton

log = logging.getLogger(__name__)

GREEDY_STEPS = 32


class _Stages:
    """Prints "[i] what ... done in N s" lines through ``progress``."""

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.start = time.perf_counter()

    def run(self, label: str, fn, *args, **kwargs):
        self.progress(f"edgevid export: {label} ...")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.progress(f"edgevid export: {label} done in {time.perf_counter() - t0:.1f} s "
                      f"(peak RSS so far {peak_rss_bytes() / 1024 ** 3:.2f} GB)")
        return result


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (what ``/usr/bin/time -v`` reports)."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except ImportError:              # Windows
        import psutil

        return int(getattr(psutil.Process().memory_info(), "peak_wset", 0))


def read_config(source: str):
    """The checkpoint's ``Gemma4Config`` (audio dropped), after checking it is a Gemma 4 with vision."""
    try:
        from transformers import AutoConfig
    except ImportError as exc:  # pragma: no cover - guarded by the CLI as well
        raise ExportError(f'edgevid export needs torch and transformers: pip install "edgevid[export]" ({exc})') from exc
    from .compat import check_version

    check_version()
    folder = Path(source)
    if not folder.exists() and (source.startswith((".", "/", "\\")) or ":" in source[:3]):
        raise ExportError(f"checkpoint folder not found: {source}", source=source)
    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:
        raise ExportError(f"cannot read a model config from {source}: {exc}", source=source) from exc
    if getattr(config, "model_type", None) != "gemma4":
        raise ExportError(f"not a Gemma 4 checkpoint: model_type is {getattr(config, 'model_type', None)!r}, "
                          "expected 'gemma4'", source=source)
    if config.vision_config is None:
        raise ExportError("the checkpoint has no vision tower (vision_config is null); edgevid needs one",
                          source=source)
    config.audio_config = None          # audio is out of scope: do not hold the audio tower's weights
    return config


def local_folder(source: str) -> Path | None:
    """``source`` itself when it is a folder, else the hub snapshot with weights and side files."""
    folder = Path(source)
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json", *model_folder.SIDE_FILES]))
    except Exception as exc:
        log.info("no local snapshot of %s: %s", source, exc)
        return None


def load_checkpoint(source: str):
    """``Gemma4ForConditionalGeneration`` in float32, eval mode, plus the local folder (or None)."""
    import torch
    from transformers import Gemma4ForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    config = read_config(source)
    folder = Path(source)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()      # the skipped audio weights would print a long report
    transformers_logging.disable_progress_bar()     # our stage lines say what is happening
    try:
        model = Gemma4ForConditionalGeneration.from_pretrained(source, config=config, dtype=torch.float32).eval()
    except Exception as exc:
        raise ExportError(f"cannot load the checkpoint {source}: {exc}", source=source) from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()
    return model, (folder if folder.is_dir() else _snapshot_folder(source))


def _snapshot_folder(source: str) -> Path | None:
    """The local hub cache folder of a hub id (side files only; weights are already loaded)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=list(model_folder.SIDE_FILES)))
    except Exception as exc:
        log.info("no snapshot folder for %s: %s", source, exc)
        return None


def _check_precisions(precisions) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(p.strip().lower() for p in precisions if p.strip()))
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    if "fp32" not in chosen:           # the others are made from it and measured against it
        chosen = ("fp32",) + chosen
    return chosen


def export_graphs(model, output: Path, opset: int | None, stages: _Stages, weights=None) -> dict:
    """The three fp32 graphs. ``weights`` = (skeleton, checkpoint tensors): ``model`` is weightless and the
    weights are streamed from the checkpoint (``skeleton``)."""
    files = model_folder.graph_files("fp32")
    stages.run("vision encoder -> " + files["vision_encoder"], onnx_graphs.export_vision,
               model, output / files["vision_encoder"], opset, weights)
    stages.run("embed tokens -> " + files["embed_tokens"], onnx_graphs.export_embed_tokens,
               model, output / files["embed_tokens"], opset, weights)
    stages.run("decoder -> " + files["decoder"], onnx_graphs.export_decoder, model, output / files["decoder"], opset,
               weights)
    return files


def torch_reference(model, steps: int = GREEDY_STEPS):
    """The PyTorch side of the gate on the parity prompt (run before the model is released), with PyTorch's
    own fp32 spread on it (``parity.torch_noise``), which sets the logits limit on large models."""
    prompt = build_parity_prompt(model.config)
    reference = torch_greedy(model, prompt, steps)
    return dataclasses.replace(reference, noise=torch_noise(model, prompt, reference))


def onnx_parity(config, reference, output: Path, files: dict, steps: int = GREEDY_STEPS,
                tolerance: float = FP32_TOLERANCE):
    """(report, onnx-decoded) for the graphs ``files`` in ``output`` against ``reference``."""
    layout = DecoderLayout.from_text_config(config.get_text_config())
    with TrimMappedPages(advice=MADV_DONTNEED):     # the fp32 weights run mapped; their pages handed back as it goes
        onnx = OnnxGemma(output, files, layout, config.video_token_id, mapped=True)
        candidate = onnx.greedy(build_parity_prompt(config), steps, forced=reference.tokens)
        del onnx
    return compare(reference, candidate, tolerance), candidate


def _release(model):
    """Keep the config, drop the weights: the gate's onnxruntime sessions then need the RAM."""
    config = model.config
    for parameter in model.parameters():
        parameter.data = parameter.data.new_empty(0)
    gc.collect()
    return config


def _gate(report: ParityReport, output: Path, hint: str) -> None:
    if report.passed:
        return
    decided = [step for step in report.mismatches if step not in report.ties]
    detail = (f"prefill logits max |diff| {report.prefill_max_abs_diff:.3g}, decoding {report.decode_max_abs_diff:.3g} "
              f"(limit {report.limit:.3g}; PyTorch itself varies by {report.torch_noise:.2g}), "
              f"greedy tokens {'match' if not decided else f'differ at decided step {decided[0]}'} "
              f"over {report.greedy_steps} steps")
    raise ExportError(f"parity gate failed for {output}: {detail}; {hint}. If only the logits limit is "
                      "missed and the tokens match, --tolerance raises the limit", source=str(output))


def _reject_graphs(output: Path) -> None:
    """Move the graphs of a folder that failed the gate out of the runtime's sight (kept for debugging)."""
    import shutil

    graphs, rejected = output / model_folder.GRAPH_DIR, output / f"{model_folder.GRAPH_DIR}.rejected"
    if rejected.exists():
        shutil.rmtree(rejected)
    if graphs.is_dir():
        graphs.rename(rejected)


def quantize_precisions(output: Path, precisions, reference_onnx, config, stages: _Stages) -> dict:
    """Write the quantised variants and measure them. ``reference_onnx`` is the fp32 ONNX run (or None)."""
    entries = {}
    others = [p for p in precisions if p != "fp32"]
    if not others:
        return entries
    try:
        from .quantize import quantize_graph, scheme_for
    except ImportError as exc:
        raise ExportError(f"precision {', '.join(others)} needs edgevid_export.quantize, which is missing ({exc})") from exc
    from .quantize_q4f16 import quantize_q4f16

    fp32_files = model_folder.graph_files("fp32")
    for precision in others:
        files = model_folder.graph_files(precision)
        for key in model_folder.GRAPH_NAMES:
            if precision == "q4f16":
                stages.run(f"{precision}: {files[key]}", quantize_q4f16, output / fp32_files[key], output / files[key],
                           key, key == "embed_tokens")
            else:
                stages.run(f"{precision}: {files[key]}", quantize_graph,
                           output / fp32_files[key], output / files[key], precision, key == "embed_tokens", key)
        schemes = {key: precision if precision == "q4f16" else scheme_for(precision, key)
                   for key in model_folder.GRAPH_NAMES}
        entry = dict(files, size_bytes=model_folder.files_size(output, files), schemes=schemes)
        if reference_onnx is not None:
            layout = DecoderLayout.from_text_config(config.get_text_config())
            prompt = build_parity_prompt(config)
            decoded = stages.run(f"{precision}: top-1 agreement", OnnxGemma(
                output, files, layout, config.video_token_id).greedy, prompt, GREEDY_STEPS)
            entry["top1_agreement"] = top1_agreement(reference_onnx, decoded)
            entry["prefill_max_abs_diff_vs_fp32"] = float(abs(reference_onnx.prefill_logits - decoded.prefill_logits).max())
        entries[precision] = entry
    return entries


def prefill_chunk(text_config) -> int:
    """Prompt tokens per prefill run: as many as keep one chunk's MLP activations ([chunk, intermediate] in
    fp32) within 4 MiB, a power of two from 128 to 512: larger chunks run fewer, fuller matmuls until the
    activations outgrow the cache and the peak (docs/benchmarks.md, "Session options")."""
    width = max(int(getattr(text_config, "intermediate_size", 0) or 0), 1)
    fits = (4 * 1024 ** 2) // (4 * width)
    return max(128, min(512, 1 << max(fits, 1).bit_length() - 1))


def write_ring_variants(output: Path, entries: dict, stages: _Stages, chunk: int | None = None) -> None:
    """Each precision's decoder gets its CPU variant (same weights files; see ``ring_graph``)."""
    from .ring_graph import write_ring_variant

    for precision, entry in entries.items():
        ring = stages.run(f"{precision}: ring-cache decoder variant", write_ring_variant, output / entry["decoder"],
                          chunk)
        if ring is not None:
            entry["decoder_ring"] = ring.relative_to(output).as_posix()


def export_model(model_id_or_dir, output_dir, precisions=("fp32",), opset=None, validate=True,
                 progress: Callable[[str], None] = print, tolerance: float = FP32_TOLERANCE,
                 force: bool = False) -> Path:
    """Export ``model_id_or_dir`` into ``output_dir`` (see docs/ARCHITECTURE.md). Raises ``ExportError``
    on a bad checkpoint or a failed parity gate (prefill logits max |diff| > ``tolerance`` or any greedy
    token different), or before starting when the machine clearly lacks the memory or disk it needs
    (``force`` skips that check). Returns the output folder."""
    chosen = _check_precisions(precisions)
    source = str(model_id_or_dir)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stale = output / "edgevid.json"
    if stale.exists():
        stale.unlink()
    stages = _Stages(progress)
    config = read_config(source)
    folder = local_folder(source)
    tensors = CheckpointTensors.find(folder)
    needs = estimate_needs(config, tensors, chosen, validate)
    progress(needs.describe())
    check_machine(needs, output, force=force)
    if tensors is not None:            # safetensors: stream the weights, never hold the model in fp32
        skeleton = stages.run(f"read {source} (shapes only)", Skeleton, config)
        files = export_graphs(skeleton.model, output, opset, stages, weights=(skeleton, tensors))
        stages.run("config, tokenizer, template, processor", model_folder.copy_side_files, folder, output,
                   skeleton.model, source)
        del skeleton
        gc.collect()
        model = stages.run("parity gate: load PyTorch reference (bf16 storage, fp32 compute)",
                           load_reference_model, config, tensors) if validate else None
    else:
        model, folder = stages.run(f"load {source}", load_checkpoint, source)
        files = export_graphs(model, output, opset, stages)
        stages.run("config, tokenizer, template, processor", model_folder.copy_side_files, folder, output, model,
                   source)
    parity, reference_onnx = None, None
    reference = stages.run("parity gate: PyTorch reference", torch_reference, model) if validate else None
    if model is not None:
        config = _release(model)
    del model
    if validate:
        report, reference_onnx = stages.run("parity gate (onnxruntime vs PyTorch)", onnx_parity,
                                            config, reference, output, files, GREEDY_STEPS, tolerance)
        ties = f", {len(report.ties)} ties PyTorch does not decide" if report.ties else ""
        progress(f"edgevid export: parity prefill max|diff| {report.prefill_max_abs_diff:.2e}, decoding "
                 f"{report.decode_max_abs_diff:.2e} (limit {report.limit:.2e}), greedy {report.greedy_steps} steps "
                 f"{'identical' if report.greedy_match else 'identical where decided' if report.decided_match else 'DIFFERENT'}"
                 f"{ties}")
        try:
            _gate(report, output, "the graphs were moved to onnx.rejected/ (--no-validate skips the gate)")
        except ExportError:
            _reject_graphs(output)
            raise
        parity = report.as_dict()
    entries = {"fp32": dict(files, size_bytes=model_folder.files_size(output, files))}
    entries.update(quantize_precisions(output, chosen, reference_onnx, config, stages))
    write_ring_variants(output, entries, stages, prefill_chunk(config.get_text_config()))
    layout = DecoderLayout.from_text_config(config.get_text_config())
    model_folder.write_interop_files(output, config, entries)
    model_folder.write_manifest(output, config=config, layout=layout, source=source,
                                precisions=entries, parity=parity)
    progress(f"edgevid export: wrote {output} in {time.perf_counter() - stages.start:.1f} s")
    return output


def verify_export(model_id_or_dir, output_dir, progress: Callable[[str], None] = print,
                  tolerance: float = FP32_TOLERANCE) -> ParityReport:
    """Re-run the fp32 parity gate on an existing folder against the checkpoint; raises ``ExportError``
    when it fails and records the fresh figures in edgevid.json when it passes."""
    output = Path(output_dir)
    manifest_path = output / "edgevid.json"
    files = model_folder.existing_graph_files(output, "fp32")
    missing = [name for name in files.values() if not (output / name).is_file()]
    if missing:
        raise ExportError(f"not an exported folder: missing {', '.join(missing)}", source=str(output))
    stages = _Stages(progress)
    source = str(model_id_or_dir)
    tensors = CheckpointTensors.find(local_folder(source))
    if tensors is not None:
        model = stages.run(f"load {source} (bf16 storage, fp32 compute)", load_reference_model,
                           read_config(source), tensors)
    else:
        model, _ = stages.run(f"load {source}", load_checkpoint, source)
    reference = stages.run("parity gate: PyTorch reference", torch_reference, model)
    config = _release(model)
    del model
    report, _ = stages.run("parity gate (onnxruntime vs PyTorch)", onnx_parity, config, reference, output, files,
                           GREEDY_STEPS, tolerance)
    _gate(report, output, "the graphs do not match the checkpoint; export again")
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["parity"] = report.as_dict()
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report
