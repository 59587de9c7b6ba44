"""Explain why OpenCV could not open a file: no video stream (audio-only), empty, or unreadable."""
from __future__ import annotations

import os

from edgevid.errors import EmptyMediaError, MediaError, NoVideoStreamError, UnreadableMediaError

from . import mp4

_MATROSKA = b"\x1a\x45\xdf\xa3"
_TRACK_TYPE = b"\x83\x81"        # EBML TrackType element with a one-byte value: 1 video, 2 audio


def describe_unopenable(path: str, source: str) -> MediaError:
    if os.path.getsize(path) == 0:
        return EmptyMediaError("the media is empty (0 bytes)", source=source)
    handlers = _track_kinds(path)
    if handlers and "video" not in handlers:
        found = ", ".join(sorted(handlers))
        return NoVideoStreamError(f"the file has no video stream (found: {found})", source=source)
    return UnreadableMediaError("the video could not be opened (corrupt, truncated or an unsupported codec)",
                                source=source)


def _track_kinds(path: str) -> set[str]:
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    if head[:4] == _MATROSKA:
        kinds = set()
        for value, name in ((1, "video"), (2, "audio"), (17, "subtitles")):
            if _TRACK_TYPE + bytes([value]) in head:
                kinds.add(name)
        return kinds
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        try:
            moov = mp4.read_moov(path)
        except (OSError, ValueError):
            return set()
        if moov is None:
            return set()
        names = {"vide": "video", "soun": "audio", "text": "text", "sbtl": "subtitles"}
        return {names.get(t.handler, t.handler) for t in mp4.tracks(moov)}
    return set()
