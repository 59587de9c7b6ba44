"""`edgevid batch` throughput (videos/min) for 1 vs N local workers and Ray, and the gain of asking
several questions about one video in a row (what batch does) over independent requests.

    python benchmarks/bench_batch.py                          # bundled demo model, 12 clips of 640x360
    python benchmarks/bench_batch.py --model DIR --clips 20 --questions 4 --workers 2 --no-ray

Throughput: each configuration answers every question about every clip into a fresh results file;
"wall" includes starting the workers and loading the model, "steady" counts the clips finished after
the first record over the time since it. Shared prefix: one Pipeline answers Q questions about each
clip back to back (media cache on, and the runtime's prompt-prefix reuse where it has one) against Q
independent requests (a Pipeline with no caches: each request decodes, encodes and prefills again).
The machine's load average is printed beside the numbers: on a shared box they move with it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import write_clip  # noqa: E402

from edgevid.batch import run_batch  # noqa: E402
from edgevid.batch.local import bundled_demo_dir  # noqa: E402
from edgevid.model.generate import GenerationOptions  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402

QUESTIONS = ("Describe the video.", "What colour is the circle?", "What shape is the yellow object?",
             "How many shapes are there?", "Where does the circle move?", "Is anything standing still?")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def throughput(label: str, clips: list[Path], questions, out: Path, model, **kwargs) -> dict:
    stamps = []
    summary = run_batch(clips, questions, out, model=model, demo=model is None, progress=False,
                        on_record=lambda r: stamps.append(time.monotonic()), **kwargs)
    assert summary.done == len(clips) * len(questions) and summary.failed == 0, summary.line()
    per_clip = len(questions)
    steady_clips = (len(stamps) - per_clip) / per_clip
    steady = 60 * steady_clips / (stamps[-1] - stamps[per_clip - 1]) if steady_clips > 0 else float("nan")
    return {"label": label, "workers": summary.workers, "wall_s": summary.seconds,
            "wall_vpm": summary.videos_per_minute, "steady_vpm": steady, "load": load()}


def shared_prefix(clips: list[Path], questions, model_dir: str, threads: int, options) -> dict:
    together = Pipeline.load(model_dir, device="cpu", threads=threads)
    alone = Pipeline.load(model_dir, device="cpu", threads=threads, cache_bytes=0, **_no_prefix_cache(Pipeline))

    def ask(pipeline, clip, q):
        return pipeline.chat([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}},
                                                           {"type": "text", "text": q}]}], options)

    times = {"in a row": [], "independent": []}
    cached_tokens = 0
    for clip in clips:
        for label, pipeline in (("independent", alone), ("in a row", together)):
            start = time.perf_counter()
            results = [ask(pipeline, clip, q) for q in questions]
            times[label].append(time.perf_counter() - start)
            if label == "in a row":
                cached_tokens += sum((r.timings.get("prefix_cached_tokens") or 0) for r in results)
                assert [r.text for r in results] == [ask(alone, clip, q).text for q in questions]
    return {k: statistics.median(v) for k, v in times.items()} | {"prefix_cached_tokens": cached_tokens,
                                                                   "load": load()}


def _no_prefix_cache(pipeline_class) -> dict:
    import inspect

    params = inspect.signature(pipeline_class.load).parameters
    return {"prefix_cache_bytes": 0} if "prefix_cache_bytes" in params else {}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled demo model)")
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--questions", type=int, default=2, help="questions per clip for the throughput runs")
    parser.add_argument("--workers", type=int, default=2, help="N of the 'N local workers' run")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = args.model
    model_dir = model or bundled_demo_dir()
    options = GenerationOptions(max_tokens=args.max_tokens)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = [write_clip(tmp / f"clip{i:03d}.mp4", frames=int(args.seconds * 24), fps=24, size=(width, height),
                            texture=True, start=1000 * i) for i in range(args.clips)]
        questions = QUESTIONS[:args.questions]
        rows = [throughput("local, 1 worker x 2 threads", clips, questions, tmp / "a.jsonl", model, workers=1,
                           threads=2, options=options),
                throughput(f"local, {args.workers} workers x 1 thread", clips, questions, tmp / "b.jsonl", model,
                           workers=args.workers, threads=1, options=options)]
        if not args.no_ray:
            rows.append(throughput(f"Ray (local instance), {args.workers} actors x 1 thread", clips, questions,
                                   tmp / "c.jsonl", model, workers=args.workers, threads=1, ray=True,
                                   options=options))
        prefix = shared_prefix(clips[:4], QUESTIONS[:4], model_dir, 2, options)
    print(f"model {Path(model_dir).name}, {args.clips} clips {width}x{height} {args.seconds:g} s, "
          f"{len(questions)} questions each, max {args.max_tokens} tokens, {cores} cores\n")
    print("| run | workers | wall s | videos/min (wall) | videos/min (steady) | load avg 1/5/15 min |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['workers']} | {r['wall_s']:.1f} | {r['wall_vpm']:.1f} | {r['steady_vpm']:.1f} | "
              f"{r['load']} |")
    gain = prefix["independent"] / prefix["in a row"]
    print(f"\n4 questions about one clip (median over 4 clips, 2 threads): in a row {prefix['in a row']:.2f} s, "
          f"as 4 independent requests {prefix['independent']:.2f} s -> {gain:.2f}x "
          f"(prompt tokens taken from the prefix cache: {prefix['prefix_cached_tokens']}; load {prefix['load']})")


if __name__ == "__main__":
    main()
