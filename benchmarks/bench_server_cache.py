"""The same clip sent to `edgevid serve` several times: request wall times and how often it was decoded.

    python benchmarks/bench_server_cache.py [--frames 4 32] [--repeat 3]

Runs the server in this process on the shipped demo model (port 0), writes a 1280x720 10 s clip, and posts
identical requests naming it by path. The first request fetches, decodes, preprocesses and vision-encodes;
the next ones take frames and features from the media cache. Report the numbers with the machine's load.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import requests  # noqa: E402
from clips import write_clip  # noqa: E402

import edgevid.media  # noqa: E402
from edgevid import DEMO_DIR, Pipeline  # noqa: E402
from edgevid.server.app import create_app  # noqa: E402
from edgevid.server.config import ServerConfig, server_policy  # noqa: E402
from edgevid.server.http_server import HttpServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    decodes = []
    real = edgevid.media.sample_video
    edgevid.media.sample_video = lambda *a, **k: decodes.append(1) or real(*a, **k)
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.mp4", frames=240, fps=24, size=(1280, 720))
        policy = server_policy(local_dirs=(tmp,))
        for frames in args.frames:
            pipeline = Pipeline.load(DEMO_DIR, device="cpu", policy=policy)
            app = create_app(pipeline, ServerConfig(policy=policy, max_frames=max(args.frames)))
            http = HttpServer(app, host="127.0.0.1", port=0)
            threading.Thread(target=http.serve_forever, daemon=True).start()
            body = {"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": str(clip)}},
                {"type": "text", "text": "What happens in this video?"}]}], "max_tokens": 16, "num_frames": frames}
            times = []
            decodes.clear()
            for _ in range(args.repeat):
                start = time.perf_counter()
                reply = requests.post(http.url + "/v1/chat/completions", json=body, timeout=600)
                times.append(time.perf_counter() - start)
                reply.raise_for_status()
            print(f"{frames} frames: requests {' -> '.join(f'{t:.2f} s' for t in times)}; decoded {len(decodes)}x")
            http.shutdown(wait=True)
            app.extensions["edgevid"].worker.stop()


if __name__ == "__main__":
    main()
