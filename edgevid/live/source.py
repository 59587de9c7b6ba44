"""What ``edgevid watch SOURCE`` opens: a network stream, a camera, or a file played at its own speed.

``parse_source(text)`` decides the kind without touching the network; ``open_capture(source, ...)``
opens an OpenCV capture (its bundled FFmpeg for URLs and files) with open/read timeouts, so a stream
that stalls makes ``grab()`` fail instead of blocking forever.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2

from edgevid.errors import MediaNotFoundError

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")
_DEVICE = re.compile(r"^/dev/video(\d+)$")


@dataclass(frozen=True)
class LiveSource:
    text: str                 # what the user typed (shown in output)
    kind: str                 # "stream" | "camera" | "file"
    target: int | str         # what cv2.VideoCapture opens

    @property
    def paced(self) -> bool:
        """Files are played in real time by their timestamps; live sources pace themselves."""
        return self.kind == "file"


def parse_source(text: str) -> LiveSource:
    """``rtsp://`` / ``http(s)://`` ... -> stream; ``0`` or ``/dev/video0`` -> camera; else a file."""
    text = str(text).strip()
    if text.isdigit():
        return LiveSource(text, "camera", int(text))
    device = _DEVICE.match(text)
    if device:
        if not os.path.exists(text):
            raise MediaNotFoundError(f"no camera device {text}", source=text)
        return LiveSource(text, "camera", text)
    scheme = urlparse(text).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return LiveSource(text, "stream", text)
    if scheme == "file":
        text_path = unquote(urlparse(text).path)
        return _file_source(text, text_path)
    return _file_source(text, text)


def _file_source(text: str, path: str) -> LiveSource:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise MediaNotFoundError(
            f"no such file, and not a stream URL ({', '.join(s + '://' for s in STREAM_SCHEMES[:6])}) "
            f"or a camera index", source=text)
    return LiveSource(text, "file", str(resolved))


def open_capture(source: LiveSource, *, open_timeout: float, read_timeout: float) -> cv2.VideoCapture | None:
    """An opened capture, or ``None`` when the source cannot be opened right now."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]
    if source.kind == "camera":
        capture = cv2.VideoCapture(source.target, cv2.CAP_ANY)
    else:
        capture = cv2.VideoCapture(source.target, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        return None
    return capture
