"""A live MJPEG-over-HTTP camera on loopback for tests (``multipart/x-mixed-replace`` JPEG frames).

    with MJPEGServer(fps=10) as cam:            # port 0 -> cam.url == "http://127.0.0.1:PORT/stream.mjpg"
        cv2.VideoCapture(cam.url)               # OpenCV's bundled FFmpeg reads it
        cam.drop()                              # close every connection and refuse new ones ...
        cam.restore()                           # ... until restored (the camera "comes back")
        cam.stall()                             # keep connections open but stop sending frames

Frame ``k`` shows ``tests.clips.frame_id`` ``k`` where ``k`` counts frames since the server started at the
server's own clock, like a real camera: frames missed while a client is away are gone.
"""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler

import cv2
import numpy as np

from clips import frame_image
from loopback_server import LoopbackServer

BOUNDARY = "edgevidframe"


class MJPEGServer(LoopbackServer):
    PATH = "/stream.mjpg"

    def __init__(self, *, fps: float = 10.0, size: tuple[int, int] = (160, 120), quality: int = 90):
        self.fps = fps
        self.size = size
        self.quality = quality
        self.started = time.monotonic()
        self.connections = 0          # successful stream requests so far
        self.frames_sent = 0
        self._down = threading.Event()
        self._stalled = threading.Event()
        self._jpegs: dict[int, bytes] = {}
        super().__init__("mjpeg-server")

    def __exit__(self, *exc) -> None:
        self._down.set()
        super().__exit__(*exc)

    def drop(self) -> None:
        self._down.set()

    def restore(self) -> None:
        self._stalled.clear()
        self._down.clear()

    def stall(self) -> None:
        self._stalled.set()

    def current_index(self) -> int:
        return int((time.monotonic() - self.started) * self.fps)

    def jpeg(self, index: int) -> bytes:
        data = self._jpegs.get(index % 256)
        if data is None:    # 256 distinct pictures are enough; cache them so serving stays cheap
            rgb = frame_image(index % 256, self.size)
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            assert ok
            data = self._jpegs[index % 256] = buf.tobytes()
        return data

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):       # keep test output quiet
                pass

            def do_GET(self):
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                if server._down.is_set():
                    self.close_connection = True   # camera unreachable: hang up without answering
                    return
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                self._stream()

            def _stream(self):
                last = -1
                while not server._down.is_set():
                    index = server.current_index()
                    if index == last or server._stalled.is_set():
                        time.sleep(0.25 / server.fps)
                        continue
                    last = index
                    data = server.jpeg(index)
                    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(data)}\r\n\r\n").encode()
                    try:
                        self.wfile.write(head + data + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return
                    server.frames_sent += 1

        return Handler
