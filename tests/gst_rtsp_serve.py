"""Serve an H.264 MP4 over RTSP in real time with GStreamer's gst-rtsp-server (run by the SYSTEM python).

    /usr/bin/python3 tests/gst_rtsp_serve.py CLIP.mp4 [--port 0] [--path /cam] [--shared]

Needs Debian's ``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-plugins-good`` and ``python3-gi`` (PyGObject is
not in the test venv, which is why ``tests/rtsp_server.py`` starts this as a subprocess). Prints
``READY <port>`` once it listens, then serves until killed. The clip is demuxed and payloaded, never
re-encoded, and played by the pipeline clock, so frames leave at their presentation times like a camera's.
"""
from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clip")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--shared", action="store_true", help="one pipeline for every client (a camera)")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{args.clip}" ! qtdemux ! h264parse ! '
                       f'rtph264pay name=pay0 pt=96 config-interval=1 )')
    factory.set_shared(args.shared)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print(f"READY {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
