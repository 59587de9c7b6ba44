"""Accuracy of the trained demo per question kind: PyTorch vs ONNX fp32 / int8 / q4 through edgevid.Pipeline.

Held-out clips are freshly generated from seeds training never saw (``edgevid_export.synthetic``), written
as H.264 MP4 and asked one question of every kind (describe, colour, shape, count, direction). Answers
are compared by exact string match.

    python benchmarks/bench_demo_accuracy.py --model build/demo                       # ONNX precisions in the folder
    python benchmarks/bench_demo_accuracy.py --model build/demo --torch               # + PyTorch (build/demo/checkpoint)
    python benchmarks/bench_demo_accuracy.py --model edgevid/demo --clips 20

The PyTorch column runs the checkpoint in transformers on the same sampled and preprocessed frames;
greedy exact match is measured with teacher forcing (every answer token is the argmax given the right
prefix, then ``<turn|>``), which is the same event as greedy decoding reproducing the answer.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevid.model.generate import GenerationOptions
from edgevid.pipeline import Pipeline
from edgevid_export import synthetic

SEED_BASE = 30_000_000      # training < 10_000_000, tests 20_000_000+
OPTIONS = GenerationOptions(max_tokens=24)


def held_out(clips: int, seed: int) -> list[tuple[synthetic.ClipSpec, list[synthetic.QA]]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(clips):
        spec = synthetic.make_clip_spec(SEED_BASE + seed * 100_000 + i)
        out.append((spec, synthetic.questions_for(spec, rng)))
    return out


def onnx_accuracy(model_dir: Path, precision: str, items, workdir: Path) -> tuple[dict, float]:
    pipeline = Pipeline.load(model_dir, device="cpu", precision=precision)
    hits: dict[str, list[bool]] = {k: [] for k in synthetic.QUESTION_KINDS}
    started = time.perf_counter()
    for spec, qas in items:
        path = workdir / f"clip_{spec.seed}.mp4"
        if not path.exists():
            synthetic.write_mp4(path, synthetic.render_clip(spec), spec.fps)
        for qa in qas:
            messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(path)}},
                                                     {"type": "text", "text": qa.question}]}]
            hits[qa.kind].append(pipeline.chat(messages, OPTIONS).text.strip() == qa.answer)
    return {k: float(np.mean(v)) for k, v in hits.items()}, time.perf_counter() - started


def torch_accuracy(checkpoint: Path, items, workdir: Path) -> tuple[dict, float]:
    import torch
    from transformers import Gemma4ForConditionalGeneration

    from edgevid_export import train_demo

    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint).eval()
    recipe = train_demo.DemoRecipe(**json.loads((checkpoint / "demo_recipe.json").read_text(encoding="utf-8")))
    prompts = train_demo.PromptBuilder(checkpoint)
    hits: dict[str, list[bool]] = {k: [] for k in synthetic.QUESTION_KINDS}
    started = time.perf_counter()
    with torch.no_grad():
        for spec, qas in items:
            clip = train_demo.encode_clip(spec, recipe, workdir)
            for qa in qas:
                ids, start = prompts.encode(qa.question, qa.answer, clip.timestamps, clip.soft_tokens)
                logits = model(input_ids=torch.tensor([ids]),
                               pixel_values_videos=torch.from_numpy(clip.pixel_values),
                               video_position_ids=torch.from_numpy(clip.position_ids),
                               num_frames_per_video=torch.tensor([clip.pixel_values.shape[0]])).logits[0]
                predicted = logits[start - 1:len(ids) - 1].argmax(-1).tolist()
                hits[qa.kind].append(predicted == ids[start:])
    return {k: float(np.mean(v)) for k, v in hits.items()}, time.perf_counter() - started


def table(rows: dict[str, dict], times: dict[str, float], questions: int) -> str:
    kinds = list(synthetic.QUESTION_KINDS)
    lines = ["| backend | " + " | ".join(kinds) + " | all | s / question |",
             "|---|" + "---:|" * (len(kinds) + 2)]
    for name, acc in rows.items():
        overall = float(np.mean([acc[k] for k in kinds]))
        lines.append(f"| {name} | " + " | ".join(f"{100 * acc[k]:.0f}%" for k in kinds)
                     + f" | {100 * overall:.0f}% | {times[name] / questions:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported demo folder")
    parser.add_argument("--precisions", default=None, help="comma list; default: every precision in edgevid.json")
    parser.add_argument("--torch", action="store_true", help="also run the PyTorch checkpoint (MODEL/checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    manifest = json.loads((args.model / "edgevid.json").read_text(encoding="utf-8"))
    precisions = args.precisions.split(",") if args.precisions else list(manifest["precisions"])
    items = held_out(args.clips, args.seed)
    questions = sum(len(q) for _, q in items)
    rows, times = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgevid-bench-") as tmp:
        work = Path(tmp)
        if args.torch or args.checkpoint:
            rows["PyTorch fp32"], times["PyTorch fp32"] = torch_accuracy(
                args.checkpoint or args.model / "checkpoint", items, work)
        for precision in precisions:
            name = f"ONNX {precision}"
            rows[name], times[name] = onnx_accuracy(args.model, precision, items, work)
            print(f"{name}: done", file=sys.stderr)
    print(f"{args.clips} held-out clips, {questions} questions (exact match)\n")
    print(table(rows, times, questions))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clips": args.clips, "accuracy": rows, "seconds": times}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
