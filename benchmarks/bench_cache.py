"""Second-turn latency on the same 32-frame video: no cache, the media reuse cache, media + KV prefix cache.

    python benchmarks/bench_cache.py                       # the demo model (exported once, cached)
    python benchmarks/bench_cache.py --model DIR --repeat 5 --size 1280x720

A chat's second turn resends the video of the first: without the caches the pipeline downloads/decodes,
preprocesses, vision-encodes and prefills it again; with the media cache, decoded frames and vision
features come from memory; with the prefix cache too, the prefill starts after the first turn's prompt.
Each run: turn 1 (video + question), then turn 2 (the same video, the first answer, a new question) timed,
then a new one-turn question about the same video (``question``); the median over ``--repeat`` fresh
pipelines is reported, with turn 2's stages and time to first token against turn 1's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import write_clip  # noqa: E402

from edgevid.model.generate import GenerationOptions  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402

STAGES = ("media_s", "vision_s", "prefill_s", "decode_s", "total_s")


def model_folder(path: str | None) -> Path:
    if path:
        return Path(path)
    from demo_model import demo_model_dir          # exports the demo checkpoint once (needs edgevid[export])

    return demo_model_dir()


def turns(video: str, first_answer: str | None = None):
    first = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                         {"type": "text", "text": "What happens in this video?"}]}
    if first_answer is None:
        return [first]
    return [first, {"role": "assistant", "content": first_answer},
            {"role": "user", "content": "And what colour is the last frame?"}]


def second_turn(model: Path, video: str, cache_bytes: int, prefix_bytes: int, options: GenerationOptions) -> dict:
    pipeline = Pipeline.load(model, device="cpu", cache_bytes=cache_bytes, prefix_cache_bytes=prefix_bytes)
    first = pipeline.chat(turns(video), options)
    started = time.perf_counter()
    second = pipeline.chat(turns(video, first.text), options)
    timings = dict(second.timings, wall_s=time.perf_counter() - started)
    timings["prompt_tokens"] = second.prompt_tokens
    timings["first_ttft_s"] = first.timings["ttft_s"]
    question = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                             {"type": "text", "text": "Which shape moves first?"}]}]
    timings["question_ttft_s"] = pipeline.chat(question, options).timings["ttft_s"]
    return timings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model folder (default: the demo model)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="1280x720", help="clip size WxH")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = model_folder(args.model)
    options = GenerationOptions(max_tokens=args.max_tokens, num_frames=32)
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", frames=int(args.seconds * 30), fps=30, size=(width, height),
                          texture=True)
        variants = (("no cache", 0, 0), ("media cache", 256 * 2**20, 0), ("media + prefix", 256 * 2**20, 512 * 2**20))
        runs = {label: [second_turn(model, str(clip), cache, prefix, options) for _ in range(args.repeat)]
                for label, cache, prefix in variants}
    print(f"model {model.name}, {width}x{height} {args.seconds:g} s clip, 32 frames, "
          f"{runs['media cache'][0]['prompt_tokens']} prompt tokens, median of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| second turn | wall s | media s | vision s | prefill s | frames cached | features cached | "
          "prefix tokens | TTFT turn 2 / turn 1 | TTFT new question / turn 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, rows in runs.items():
        med = {k: statistics.median(r.get(k) or 0.0 for r in rows)
               for k in ("wall_s", "ttft_s", "first_ttft_s", "question_ttft_s") + STAGES}
        last = rows[-1]
        print(f"| {label} | {med['wall_s']:.3f} | {med['media_s']:.3f} | {med['vision_s']:.3f} | "
              f"{med['prefill_s']:.3f} | {last.get('frames_cached', 0)} | {last.get('features_cached', 0)} | "
              f"{last.get('prefix_cached_tokens', 0)} | {med['ttft_s'] / med['first_ttft_s']:.2f} | "
              f"{med['question_ttft_s'] / med['first_ttft_s']:.2f} |")
    for label in ("media cache", "media + prefix"):
        speedup = statistics.median(r["wall_s"] for r in runs["no cache"]) / statistics.median(
            r["wall_s"] for r in runs[label])
        print(f"\nsecond turn {speedup:.1f}x faster with the {label}")
    if args.json:
        print(json.dumps(runs, indent=1, default=float))


if __name__ == "__main__":
    main()
