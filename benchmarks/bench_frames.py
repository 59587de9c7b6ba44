"""Sampling 32 frames from a long 720p H.264 clip with a long GOP: edgevid vs the alternatives.

    python benchmarks/bench_frames.py                  # 10-minute clip (generated once, cached)
    python benchmarks/bench_frames.py --minutes 2      # quicker

Methods, all returning the same 32 frames (checked through the frame numbers drawn into the clip):
  accurate     edgevid.media.sample_video(mode="accurate")
  grab-all     OpenCV grab() on every frame, retrieve() on the targets
  seek-each    OpenCV set(CAP_PROP_POS_FRAMES) + read() per target
  pyav-key     PyAV: seek to the keyframe before each target and decode forward (the practical floor)
  fast         edgevid.media.sample_video(mode="fast")  (keyframes, so not the same frames)
Needs PyAV (test extra) for the clip and the pyav-key baseline; edgevid itself uses OpenCV only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import GRID, OFF, ON, frame_id  # noqa: E402

from edgevid.media import sample_indices, sample_video  # noqa: E402

CACHE = Path(os.environ.get("EDGEVID_BENCH_CACHE", Path.home() / ".cache" / "edgevid-bench"))


def make_clip(path: Path, minutes: float, fps: int = 30, gop: int = 250, size=(1280, 720)) -> int:
    """H.264 ultrafast, keyframe every ``gop`` frames, a moving texture plus the frame-number blocks."""
    width, height = size
    frames = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    texture = np.repeat(np.repeat(rng.integers(-25, 26, size=(height // 4, width // 4 + 64)), 4, 0), 4, 1)
    rows, cols = np.arange(height) * GRID // height, np.arange(width) * GRID // width
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        chroma = np.full((height // 2, width), 128, np.uint8)
        for i in range(frames):
            bits = np.array([(i >> (GRID * GRID - 1 - k)) & 1 for k in range(GRID * GRID)]).reshape(GRID, GRID)
            luma = np.where(bits[rows][:, cols] == 1, ON, OFF).astype(np.int16)
            shift = (2 * i) % 256
            luma += texture[:, shift // 4: shift // 4 + width]
            plane = np.vstack([np.clip(luma, 0, 255).astype(np.uint8), chroma])
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return frames


def grab_all(path: str, targets: list[int]) -> list[np.ndarray]:
    cap, wanted, out, i = cv2.VideoCapture(path), set(targets), [], 0
    while cap.grab():
        if i in wanted:
            out.append(cap.retrieve()[1])
        i += 1
    return out


def seek_each(path: str, targets: list[int]) -> list[np.ndarray]:
    cap, out = cv2.VideoCapture(path), []
    for t in targets:
        cap.set(cv2.CAP_PROP_POS_FRAMES, t)
        out.append(cap.read()[1])
    return out


def pyav_keyframe(path: str, targets: list[int]) -> list[np.ndarray]:
    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = int(round(1 / (stream.average_rate * stream.time_base)))      # pts per frame (CFR)
        for t in targets:
            container.seek(t * step, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts >= t * step:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
    return out


def timed(fn, *args):
    """(wall seconds, result); the CPU seconds of the last call are kept in ``timed.cpu``."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval in frames (default 250)")
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], help="methods to skip, e.g. grab-all")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs (grab-all runs once)")
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"bench_720p_{args.minutes:g}min_gop{args.gop}.mp4"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        seconds, _ = timed(make_clip, path, args.minutes, 30, args.gop)
        print(f"  generated in {seconds:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
    total = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
    targets = [int(t) for t in sample_indices(total, args.num_frames)]

    results = {}
    for name, fn in [("accurate", lambda p, t: list(sample_video(p, args.num_frames).frames)),
                     ("pyav-key", pyav_keyframe), ("seek-each", seek_each), ("grab-all", grab_all)]:
        if name in args.skip:
            continue
        runs = []
        for _ in range(1 if name == "grab-all" else args.repeat):
            seconds, frames = timed(fn, str(path), targets)
            runs.append((seconds, timed.cpu, frames))
        seconds, cpu, frames = min(runs, key=lambda run: run[0])
        ids = [frame_id(f) for f in frames]
        results[name] = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "exact": ids == targets}
        print(f"{name:10s} {seconds:8.3f} s  (cpu {cpu:7.3f} s)  exact={ids == targets}", flush=True)
    runs = []
    for _ in range(args.repeat):
        seconds, fast = timed(sample_video, str(path), args.num_frames, "fast")
        runs.append((seconds, timed.cpu, fast))
    seconds, cpu, fast = min(runs, key=lambda run: run[0])
    keys_ok = all(frame_id(f) == i for f, i in zip(fast.frames, fast.indices))
    results["fast"] = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "frames": len(fast.indices),
                       "keyframes_ok": keys_ok}
    print(f"{'fast':10s} {seconds:8.3f} s  (cpu {cpu:7.3f} s)  {len(fast.indices)} keyframes, ids ok={keys_ok}")

    acc = results["accurate"]["seconds"]
    ratios = {f"accurate/{k}": round(acc / v["seconds"], 2) for k, v in results.items()
              if k not in ("accurate", "fast")}
    summary = {"clip": path.name, "frames": total, "gop": args.gop, "cores": os.cpu_count(),
               "load_average": [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
               "results": results, "ratios": ratios}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
