"""Video preprocessing (resize + rescale + patchify) of 32 frames, the banded float32 path against the
integer gather path it replaced; both bit-exact with torchvision (tests/test_preprocess.py).

    python benchmarks/bench_preprocess.py                  # 32 x 1280x720, 5 rounds, 2 workers
    python benchmarks/bench_preprocess.py --size 1920x1080 --rounds 9 --workers 1

Prints wall and CPU seconds (medians, the two paths interleaved) and the load average beside them: on a
shared machine wall time follows the load, CPU time much less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from edgevid.model import preprocess as pp


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720", help="frame size WxH")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="threads (default: CPU count, max 4)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
    h, w = pp.target_size(height, width, 70)

    def banded():
        pp._vision_input(pp.resize_bicubic_aa(frames, h, w, workers=args.workers), "divide", 16, 3, 70)

    def gather():
        pp._vision_input(pp._resize_gather(frames, h, w, workers=args.workers), "divide", 16, 3, 70)

    assert np.array_equal(pp.resize_bicubic_aa(frames[:2], h, w), pp._resize_gather(frames[:2], h, w))
    runs = {"banded float32": [], "integer gather": []}
    for _ in range(args.rounds):
        runs["banded float32"].append(timed(banded))
        runs["integer gather"].append(timed(gather))
    load = os.getloadavg()
    print(f"{args.frames} x {width}x{height} -> {w}x{h}, workers {args.workers or min(4, os.cpu_count() or 1)}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds}, load average {load[0]:.1f} / {load[1]:.1f}\n")
    print("| path | wall s | CPU s |")
    print("|---|---|---|")
    for label, rows in runs.items():
        print(f"| {label} | {statistics.median(r[0] for r in rows):.3f} | {statistics.median(r[1] for r in rows):.3f} |")
    ratio = statistics.median(r[1] for r in runs["integer gather"]) / statistics.median(r[1] for r in runs["banded float32"])
    print(f"\nbanded path: {ratio:.1f}x less CPU")


if __name__ == "__main__":
    main()
