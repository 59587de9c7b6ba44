"""The low-memory export path at a small size: weights are streamed from the checkpoint, never held whole.

The real-size measurement (a 5 B-parameter E2B-size checkpoint within 12 GB) is benchmarks/bench_real_size.py;
here the same code runs on a checkpoint whose weights are big next to the interpreter (~0.8 GB in fp32) and
the export's peak RSS (the kernel's high-water mark of the ``edgevid export`` process, as ``/usr/bin/time``
reports it) must stay below a bound that the old path (load everything in fp32, export through torch: ~3x the
fp32 weights) cannot meet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from gemma_configs import SPECIAL_IDS, _gemma4_config, _text_config, build_random_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 8192


def _weighty_config():
    """E2B's shape (per-layer inputs, KV sharing, double-wide MLP) with big matrices and few layers."""
    return _gemma4_config(_text_config(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, hidden_size=1536, intermediate_size=6144,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=256, global_head_dim=512,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        hidden_size_per_layer_input=256, num_kv_shared_layers=2, use_double_wide_mlp=True,
        initializer_range=0.02,
    ))


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    import torch

    folder = tmp_path_factory.mktemp("weighty") / "checkpoint"
    model = build_random_model(_weighty_config(), seed=5).to(torch.bfloat16)
    model.generation_config.eos_token_id = [SPECIAL_IDS["eos"], SPECIAL_IDS["end_of_turn"]]
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    return folder, params


def test_skeleton_holds_no_weights(bf16_checkpoint):
    from torch._subclasses.fake_tensor import is_fake

    from edgevid_export.convert import read_config
    from edgevid_export.skeleton import Skeleton

    folder, _ = bf16_checkpoint
    skeleton = Skeleton(read_config(str(folder)))
    params = list(skeleton.model.parameters())
    assert params and all(is_fake(p) for p in params)


def test_tables_are_read_in_chunks(bf16_checkpoint, monkeypatch):
    """The embedding graph's tables come from the checkpoint row chunk by row chunk, never whole."""
    from edgevid_export import embed_graph
    from edgevid_export.checkpoint_tensors import CheckpointTensors
    from edgevid_export.convert import read_config
    from edgevid_export.skeleton import Skeleton

    folder, _ = bf16_checkpoint
    tensors = CheckpointTensors(folder)
    reads = []
    original = tensors.read

    def spy(name, start=None, stop=None):
        reads.append((name, start, stop))
        return original(name, start, stop)

    monkeypatch.setattr(tensors, "read", spy)
    monkeypatch.setattr(embed_graph, "CHUNK_ROWS", 1024)
    skeleton = Skeleton(read_config(str(folder)))
    out = folder.parent / "embed"
    embed_graph.write_embed_graph(skeleton.model, out / "embed_tokens.onnx", checkpoint=tensors)
    table_reads = [r for r in reads if r[0].endswith("embed_tokens_per_layer.weight")]
    assert len(table_reads) == VOCAB // 1024 and all(stop - start == 1024 for _, start, stop in table_reads)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "embed_tokens.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 700, VOCAB - 1]], dtype=np.int64)
    per_layer = session.run(None, {"input_ids": ids})[1]
    table = tensors.read("model.language_model.embed_tokens_per_layer.weight", 700, 701)
    scale = skeleton.model.model.language_model.embed_tokens_per_layer.scalar_embed_scale
    np.testing.assert_allclose(per_layer[0, 1].reshape(-1), table[0] * np.float32(scale), rtol=1e-6)


def test_export_peak_stays_below_the_fp32_weights(bf16_checkpoint, tmp_path):
    """``edgevid export --precision fp32,q4`` with the parity gate, in its own process: peak RSS minus
    what the same interpreter holds after importing everything stays under the fp32 weight bytes, i.e. the
    model is never held in fp32 (the old path held them plus ~2.3x them for the exporter). Expected: ~0.5x
    (the gate's PyTorch side keeps the layers in bf16) plus a fixed ~0.2 GB of export structures."""
    folder, params = bf16_checkpoint
    fp32_bytes = params * 4
    code = ("import resource, torch, transformers, onnxruntime, onnx, onnxscript; "
            "import edgevid_export.convert, edgevid_export.quantize; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    baseline = int(base.stdout.strip().splitlines()[-1]) * 1024
    # a fresh wrapper whose only child is the export: its RUSAGE_CHILDREN high-water mark is the export's
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    result = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "edgevid", "export", "--model", str(folder),
         "--output", str(tmp_path / "model"), "--precision", "fp32,q4"],
        capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    peak = int(result.stdout.strip().splitlines()[-1]) * 1024
    assert "needs about" in result.stderr and "parity prefill" in result.stderr
    extra = peak - baseline
    assert extra < fp32_bytes, (f"export peak {peak / 1e9:.2f} GB = baseline {baseline / 1e9:.2f} GB + "
                                      f"{extra / 1e9:.2f} GB for {fp32_bytes / 1e9:.2f} GB of fp32 weights")
    manifest = json.loads((tmp_path / "model" / "edgevid.json").read_text(encoding="utf-8"))
    assert manifest["parity"]["passed"] and "q4" in manifest["precisions"]


def test_refuses_when_the_machine_clearly_lacks_memory(bf16_checkpoint, tmp_path, monkeypatch):
    import psutil

    from edgevid.errors import ExportError
    from edgevid_export.convert import export_model

    folder, _ = bf16_checkpoint

    class Tiny:
        total = 256 * 1024 ** 2

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    lines = []
    with pytest.raises(ExportError, match="needs about .* of memory .*this machine has 0.2 GB.*--force"):
        export_model(folder, tmp_path / "model", progress=lines.append)
    assert not (tmp_path / "model" / "decoder_model_merged.onnx").exists()
    assert any("needs about" in line for line in lines)
