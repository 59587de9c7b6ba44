"""`edgevid serve` scaled horizontally: requests/min through 1 vs K instances behind a round-robin balancer.

    python benchmarks/bench_serve_scaling.py                   # bundled demo model, K = 1 and 2
    python benchmarks/bench_serve_scaling.py --model DIR --instances 1 2 4 --requests 40

Each instance is a separate `edgevid serve` process on its own port (what a load balancer would sit in
front of); one is ready when GET /health answers 200. A client sends ``--requests`` chat requests (a clip
+ a question) from 2 threads per instance, round-robin over the instances, the way a balancer spreads
them; requests/min = requests / wall time. The load average is printed beside the numbers.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from clips import write_clip  # noqa: E402


def start_instance(model: str | None, media_dir: Path) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "edgevid", "serve", "--port", "0", "--allowed-local-media-path", str(media_dir)]
    args += ["-m", model] if model else ["--demo"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)/v1", line)
    if not match:
        process.kill()
        raise RuntimeError(f"edgevid serve did not start: {line!r}")
    return process, match.group(1)


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def measure(k: int, model, clips: list[Path], media_dir: Path, n: int, max_tokens: int) -> dict:
    instances = [start_instance(model, media_dir) for _ in range(k)]
    try:
        for _, url in instances:
            wait_ready(url)
        targets = itertools.cycle(url for _, url in instances)
        lock = threading.Lock()

        def one(i: int) -> float:
            with lock:
                url = next(targets)
            body = {"model": "default", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": str(clips[i % len(clips)])}},
                {"type": "text", "text": "Describe the video."}]}]}
            while True:
                response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=600)
                if response.status_code != 503:           # queue full: a balancer retries elsewhere
                    response.raise_for_status()
                    return time.monotonic()
                time.sleep(float(response.headers.get("Retry-After", 1)))

        start = time.monotonic()
        with ThreadPoolExecutor(2 * k) as pool:
            list(pool.map(one, range(n)))
        wall = time.monotonic() - start
    finally:
        for process, _ in instances:
            process.terminate()
            process.wait(30)
    return {"instances": k, "wall_s": wall, "rpm": 60 * n / wall, "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the bundled demo model)")
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp)
        clips = [write_clip(media / f"clip{i}.mp4", frames=96, fps=24, size=(640, 360), texture=True, start=1000 * i)
                 for i in range(args.requests)]                # distinct clips: no media-cache hits
        rows = [measure(k, args.model, clips, media, args.requests, args.max_tokens) for k in args.instances]
    print(f"{args.requests} requests (a 4 s 640x360 clip + a question each), {os.cpu_count()} cores\n")
    print("| instances | wall s | requests/min | load avg 1/5/15 min |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['instances']} | {r['wall_s']:.1f} | {r['rpm']:.1f} | {r['load']} |")


if __name__ == "__main__":
    main()
