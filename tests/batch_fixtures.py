"""A folder of real good and broken clips for the `edgevid batch` tests, and helpers to read results.

    folder = make_archive(tmp_path / "archive")     # GOOD clips + BROKEN files + a note that is not media
    records = read_records(tmp_path / "results.jsonl")
"""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from clips import write_clip

import edgevid

QUESTIONS = ("Describe the video.", "What colour is the circle?")
DEMO_SAMPLE = Path(edgevid.__file__).parent / "demo" / "sample.mp4"

# name -> what makes it broken
BROKEN = {
    "broken/text.mp4": "unrecognised media data",
    "broken/empty.mov": "empty",
    "broken/truncated.mp4": "could not be opened",
}
GOOD = ("cam1/a.mp4", "cam1/b.webm", "cam2/c.mp4", "cam2/night/d.mkv", "cam2/night/no-extension", "still.png",
        "sample.mp4")


def make_archive(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "sample.mp4":
            shutil.copy(DEMO_SAMPLE, path)
        elif name == "still.png":
            from PIL import Image

            Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
        elif name.endswith("no-extension"):
            write_clip(root / "tmp.mp4", frames=12, fps=12, start=100 * i).rename(path)   # found by content
        else:
            write_clip(path, frames=12 + 4 * i, fps=12, start=100 * i)
    (root / "broken").mkdir()
    (root / "broken/text.mp4").write_text("this is not a video\n")
    (root / "broken/empty.mov").write_bytes(b"")
    (root / "broken/truncated.mp4").write_bytes(write_clip(root / "full.mp4", frames=24, fps=12).read_bytes()[:1500])
    (root / "full.mp4").unlink()
    (root / "cam1/notes.txt").write_text("camera 1: north gate\n")                   # not media: skipped
    return root


def expected_sources(root: Path) -> set[str]:
    return {str(root / name) for name in (*GOOD, *BROKEN)}


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pairs(records: list[dict]) -> Counter:
    return Counter((r["source"], r["question"]) for r in records)


def answers(records: list[dict]) -> dict:
    return {(r["source"], r["question"]): (r["text"], r["error"]) for r in records}


def check_complete(records: list[dict], root: Path, questions=QUESTIONS) -> None:
    """Exactly one record per (source, question); broken files recorded with their error."""
    counts = pairs(records)
    assert set(counts) == {(s, q) for s in expected_sources(root) for q in questions}
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    for r in records:
        broken = next((why for name, why in BROKEN.items() if r["source"].endswith(name)), None)
        if broken:
            assert r["text"] is None and broken in r["error"], r
        else:
            assert r["error"] is None and r["text"], r
            assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["frames"] >= 1
        assert r["model"] == "demo" and r["key"] and r["worker"] is not None


def edgevid_cli(*args, cwd=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevid", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


class _Trickle(BaseHTTPRequestHandler):
    """Headers at once, then one byte every 0.2 s: a source that never finishes in time."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(300):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def trickle_server():
    """The URL of a clip that takes a minute to download (on loopback: needs allow_private_urls)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/slow.mp4"
    finally:
        httpd.shutdown()
        httpd.server_close()
