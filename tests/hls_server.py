"""A live HLS stream on loopback for tests: a sliding ``live.m3u8`` over 1-second MPEG-TS segments.

    with HLSServer(fps=10) as hls:
        hls.url          # "http://127.0.0.1:PORT/live.m3u8"

Segment ``k`` (encoded with PyAV on first request) holds frames ``k * fps ... k * fps + fps - 1``, each
showing its number (``tests.clips.frame_id``); the playlist lists the last three segments by the server's
clock and has no end tag, so players keep refreshing it like a real live stream.
"""
from __future__ import annotations

import io
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler

import av

from clips import frame_image
from loopback_server import LoopbackServer


class HLSServer(LoopbackServer):
    PATH = "/live.m3u8"

    def __init__(self, *, fps: int = 10, size: tuple[int, int] = (160, 120), listed: int = 3):
        self.fps, self.size, self.listed = fps, size, listed
        self.started = time.monotonic()
        self._segments: dict[int, bytes] = {}
        self._lock = threading.Lock()
        super().__init__("hls-server")

    def playlist(self) -> bytes:
        newest = int(time.monotonic() - self.started) + self.listed      # segments 0..listed-1 exist at once
        first = max(0, newest - self.listed)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for k in range(first, newest):
            lines += ["#EXTINF:1.0,", f"seg{k}.ts"]
        return ("\n".join(lines) + "\n").encode()

    def segment(self, k: int) -> bytes:
        with self._lock:
            if k not in self._segments:
                self._segments[k] = self._encode(k)
            return self._segments[k]

    def _encode(self, k: int) -> bytes:
        buf = io.BytesIO()
        rate = Fraction(self.fps)
        with av.open(buf, "w", format="mpegts") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = self.size[0], self.size[1], "yuv420p"
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
            stream.codec_context.time_base = 1 / rate
            for i in range(self.fps):
                index = k * self.fps + i
                frame = av.VideoFrame.from_ndarray(frame_image(index % 2**16, self.size), format="rgb24")
                frame.pts, frame.time_base = index, 1 / rate
                for packet in stream.encode(frame.reformat(format="yuv420p")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        return buf.getvalue()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/live.m3u8":
                    body, kind = server.playlist(), "application/vnd.apple.mpegurl"
                elif self.path.startswith("/seg") and self.path.endswith(".ts"):
                    body, kind = server.segment(int(self.path[4:-3])), "video/mp2t"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
