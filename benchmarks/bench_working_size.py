"""Peak memory and time to sample 32 frames from an 8K and a 4K clip, with and without working-size scaling.

    python benchmarks/bench_working_size.py              # clips generated once into the cache folder
    python benchmarks/bench_working_size.py --frames 64  # longer clips (the sample is always 32 frames)

"before" = ``sample_video(..., working_size=None)``: frames held at the source size (what edgevid did);
"after"  = ``working_size=WorkingSize()`` (Gemma 4's 70-soft-token video budget): each frame is scaled at
decode to its preprocessing size. Each measurement runs in a fresh process and reports that process's
peak RSS (``ru_maxrss``) and wall time; both also check that the preprocessed encoder input is
bit-identical between the two.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("EDGEVID_BENCH_CACHE", Path.home() / ".cache" / "edgevid-bench"))
SIZES = {"8K": (7680, 4320), "4K": (3840, 2160)}


def make_clip(path: Path, size: tuple[int, int], frames: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from clips import write_clip
    write_clip(path, frames=frames, fps=24, size=size, gop=12)


def measure(path: str, scaled: bool) -> dict:
    """Runs in the child process."""
    from edgevid.media import WorkingSize, sample_video
    from edgevid.model.preprocess import preprocess_video

    start = time.perf_counter()
    video = sample_video(path, num_frames=32, working_size=WorkingSize() if scaled else None)
    seconds = time.perf_counter() - start
    vision = preprocess_video(video.frames, 70, source_size=(video.height, video.width))
    total = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "total_seconds": round(total, 2), "peak_rss_mb": round(peak_rss_mb()),
            "held_mb": round(video.frames.nbytes / 2**20, 1),
            "frames": int(video.frames.shape[0]),
            "vision_sha256": hashlib.sha256(vision.pixel_values.tobytes()).hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="frames in each generated clip")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1] == "scaled")))
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, size in SIZES.items():
        clip = CACHE / f"{name}-{args.frames}.mp4"
        if not clip.exists():
            make_clip(clip, size, args.frames)
        results = {}
        for mode in ("source", "scaled"):
            out = subprocess.run([sys.executable, __file__, "--child", str(clip), mode], check=True,
                                 capture_output=True, text=True).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
        assert results["source"]["vision_sha256"] == results["scaled"]["vision_sha256"], "not bit-exact"
        for mode, label in (("source", "before (source size)"), ("scaled", "after (working size)")):
            r = results[mode]
            rows.append(f"| {name} {size[0]}x{size[1]} | {label} | {r['frames']} | {r['seconds']} | "
                        f"{r['total_seconds']} | {r['peak_rss_mb']} | {r['held_mb']} |")
    print(f"load: {os.getloadavg()}")
    print("| clip | frames held at | sampled | sample_video (s) | + preprocess (s) | peak RSS (MB) | frames held (MB) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("encoder input identical before/after: yes (sha256 of pixel_values compared per clip)")


if __name__ == "__main__":
    main()
