"""Measure what an export costs in RAM: the vision tower at its REAL size (``Gemma4VisionConfig()``
defaults, as in E2B/E4B), random weights, exported through the same code path, peak RSS sampled.

    python -m edgevid_export.memory_probe --output /tmp/probe

Prints one JSON object: parameter bytes, RSS before/after building, peak RSS during export, graph size,
and the ratio (peak export overhead) / (weight bytes) used to extrapolate to the whole model.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds in a thread (psutil: portable)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def probe_vision(output: Path, optimize: bool = True, external: bool = False) -> dict:
    import psutil
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

    from . import onnx_graphs
    from .onnx_graphs import export_vision

    onnx_graphs.OPTIMIZE = optimize

    process = psutil.Process()
    torch.set_grad_enabled(False)
    start = process.memory_info().rss
    tiny_text = Gemma4TextConfig(vocab_size=256, hidden_size=1536, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1, head_dim=8, global_head_dim=8,
                                 hidden_size_per_layer_input=0, layer_types=["full_attention"])
    config = Gemma4Config(text_config=tiny_text, vision_config=Gemma4VisionConfig(), audio_config=None,
                          boi_token_id=250, eoi_token_id=251, image_token_id=252, video_token_id=253)
    model = Gemma4ForConditionalGeneration(config).eval()
    vision_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    vision_params += sum(p.numel() for p in model.model.embed_vision.parameters())
    built = process.memory_info().rss
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        path = export_vision(model, output / "vision_encoder.onnx")
    seconds = time.perf_counter() - t0
    weight_bytes = vision_params * 4
    return {
        "optimize": optimize,
        "external_data": external,
        "vision_params": vision_params,
        "weight_bytes": weight_bytes,
        "rss_start": start,
        "rss_after_build": built,
        "rss_peak_export": peak.peak,
        "export_overhead_bytes": peak.peak - built,
        "overhead_per_weight_byte": round((peak.peak - built) / weight_bytes, 2),
        "graph_bytes": path.stat().st_size + sum(
            p.stat().st_size for p in path.parent.glob(path.name + "*data")),
        "export_seconds": round(seconds, 1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxscript's optimizer")
    parser.add_argument("--external", action="store_true", help="no effect: every graph is saved with external data now (kept for old command lines)")
    args = parser.parse_args(argv)
    print(json.dumps(probe_vision(args.output, optimize=not args.no_optimize, external=args.external), indent=2))


if __name__ == "__main__":
    main()
