"""A real RTSP camera on loopback for tests: GStreamer's gst-rtsp-server, run by the system python.

    with RTSPServer(clip) as cam:       # cam.url == "rtsp://127.0.0.1:PORT/cam"
        cam.hang()                      # SIGSTOP: the server keeps its sockets but answers nothing
        cam.resume()                    # SIGCONT
        cam.kill(); cam.restart()       # the camera reboots (same port)

The server is a subprocess because PyGObject (``python3-gi``) belongs to the system python, not to the test
venv. Each client gets its own pipeline playing the clip from its start in real time, so frame ``k`` of a
connection left the server ``k / fps`` seconds after that connection began; ``shared=True`` plays one
pipeline for every client instead (a camera), which after a hang sends out what it owed at once. ``gst_rtsp_missing()`` says
what is not installed (the tests skip with it; CI counts such a skip as a failure).
"""
from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SYSTEM_PYTHON = os.environ.get("EDGEVID_SYSTEM_PYTHON", "/usr/bin/python3")
SERVE = Path(__file__).resolve().parent / "gst_rtsp_serve.py"
INSTALL = "apt-get install -y --no-install-recommends gir1.2-gst-rtsp-server-1.0 python3-gi"


@functools.lru_cache(maxsize=1)
def gst_rtsp_missing() -> str | None:
    """None when the system python can run gst-rtsp-server with the elements the tests use, else why not."""
    check = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('filesrc', 'qtdemux', 'h264parse', 'rtph264pay') "
             "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))")
    try:
        run = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc} ({INSTALL})"
    if run.returncode != 0:
        return f"gst-rtsp-server is not usable from {SYSTEM_PYTHON}: {run.stderr.strip()[-200:]} ({INSTALL})"
    if run.stdout.strip():
        return f"GStreamer elements missing: {run.stdout.strip()} ({INSTALL})"
    return None


class RTSPServer:
    def __init__(self, clip: Path, *, path: str = "/cam", port: int = 0, shared: bool = False):
        self.clip, self.path, self.port, self.shared = Path(clip), path, port, shared
        self.proc: subprocess.Popen | None = None
        self.sessions_started: list[float] = []      # time.time() of each start (for the tests' own record)

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self) -> "RTSPServer":
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVE), str(self.clip), "--port", str(self.port),
                                      "--path", self.path, *(["--shared"] if self.shared else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"gst-rtsp-server did not start: {line!r} {self.proc.stderr.read()[-500:]}")
        self.port = int(line.split()[1])
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()    # never let stderr fill up
        self.sessions_started.append(time.time())
        return self

    def hang(self) -> float:
        os.kill(self.proc.pid, signal.SIGSTOP)
        return time.time()

    def resume(self) -> float:
        os.kill(self.proc.pid, signal.SIGCONT)
        return time.time()

    def kill(self) -> float:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        return time.time()

    def restart(self) -> float:
        deadline = time.monotonic() + 10
        while True:                                      # the port may linger a moment after the kill
            try:
                self.start()
                return time.time()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> "RTSPServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte (a wedged camera)."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self._sock.getsockname()[1]}/cam"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)
            self.accepted += 1

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()
