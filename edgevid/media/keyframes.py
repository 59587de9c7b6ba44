"""Fast mode: for each target, the keyframe at or before it, decoding nothing else.

OpenCV's FFmpeg backend cannot stop at a keyframe: every seek (``POS_FRAMES`` or ``POS_MSEC``) lands
on the keyframe at or before ``target - 16`` and then decodes forward to the exact frame. So fast mode
reads the MP4/MOV index itself (:mod:`edgevid.media.mp4`): sync samples (``stss``) give the keyframes,
the sample table gives their bytes and presentation times. The chosen keyframes, each preceded by the
parameter sets, are written as one H.264/HEVC Annex-B stream to a temporary file that OpenCV decodes in
one pass: one decoded picture per sampled frame. Rotation from the track matrix is applied here, since
a raw stream carries none.

Returns None (the caller then samples accurately, and says so in the log) for anything else: other
containers or codecs, a clip that is not longer than ``num_frames``, or an index pointing past the end
of the file (truncated).
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile

import cv2
import numpy as np

from . import mp4
from .sources import MediaSource
from .video import SampledVideo, sample_indices

log = logging.getLogger(__name__)

START = b"\x00\x00\x00\x01"
ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}


def sample_keyframes(media: MediaSource, num_frames: int) -> SampledVideo | None:
    index = _usable_index(media)
    if index is None:
        return None
    total = index.frame_count
    if total <= num_frames:
        return None
    key_display = index.keyframe_positions()
    targets = sample_indices(total, num_frames)
    chosen = np.unique(key_display[np.searchsorted(key_display, targets, side="right") - 1])
    samples = index.display_order[chosen]
    frames = _decode(media, index, samples)
    if frames is None:
        return None
    fps = total / index.duration if index.duration > 0 else 0.0
    return SampledVideo(frames=frames, timestamps=index.pts[samples].astype(np.float64), indices=chosen,
                        fps=float(fps), duration=float(index.duration), frame_count=total,
                        width=int(frames.shape[2]), height=int(frames.shape[1]), source=media.source)


def _usable_index(media: MediaSource) -> mp4.VideoIndex | None:
    index = mp4.load_index(media.path, media.mime)
    if index is None or _parameter_sets(index) is None:
        log.info("%s: fast mode needs H.264 or HEVC in an MP4/MOV index (%s): sampling accurately",
                 media.source, media.mime)
        return None
    if int((index.offsets + index.sizes).max()) > os.path.getsize(media.path):
        log.info("%s: the index points past the end of the file (truncated): sampling accurately", media.source)
        return None
    return index


def _parameter_sets(index: mp4.VideoIndex) -> tuple[list[bytes], int] | None:
    """(SPS/PPS or VPS/SPS/PPS NAL units, NAL length size) from avcC / hvcC."""
    config = index.config
    try:
        if index.codec in ("avc1", "avc3") and len(config) >= 7:
            return _avcc(config)
        if index.codec in ("hvc1", "hev1") and len(config) >= 23:
            return _hvcc(config)
    except (struct.error, IndexError):
        return None
    return None


def _avcc(c: bytes) -> tuple[list[bytes], int]:
    length_size = (c[4] & 3) + 1
    units, pos = [], 5
    for mask in (0x1F, 0xFF):                    # SPS count (low 5 bits), then PPS count
        count, pos = c[pos] & mask, pos + 1
        for _ in range(count):
            size = struct.unpack_from(">H", c, pos)[0]
            units.append(c[pos + 2: pos + 2 + size])
            pos += 2 + size
    return units, length_size


def _hvcc(c: bytes) -> tuple[list[bytes], int]:
    length_size = (c[21] & 3) + 1
    units, pos = [], 23
    for _ in range(c[22]):
        count = struct.unpack_from(">H", c, pos + 1)[0]
        pos += 3
        for _ in range(count):
            size = struct.unpack_from(">H", c, pos)[0]
            units.append(c[pos + 2: pos + 2 + size])
            pos += 2 + size
    return units, length_size


def _annexb(sample: bytes, length_size: int) -> bytes:
    out, pos = [], 0
    while pos + length_size <= len(sample):
        size = int.from_bytes(sample[pos: pos + length_size], "big")
        out.append(START + sample[pos + length_size: pos + length_size + size])
        pos += length_size + size
    return b"".join(out)


def _decode(media: MediaSource, index: mp4.VideoIndex, samples: np.ndarray) -> np.ndarray | None:
    units, length_size = _parameter_sets(index)
    header = b"".join(START + unit for unit in units)
    fd, stream_path = tempfile.mkstemp(prefix="edgevid-keys-", suffix=".h264" if index.codec.startswith("avc")
                                       else ".hevc")
    try:
        with os.fdopen(fd, "wb") as out, open(media.path, "rb") as src:
            for sample in samples:
                src.seek(int(index.offsets[sample]))
                out.write(header + _annexb(src.read(int(index.sizes[sample])), length_size))
        return _read_all(stream_path, len(samples), index.rotation, media.source)
    finally:
        try:
            os.remove(stream_path)
        except OSError:
            pass


def _read_all(path: str, expected: int, rotation: int, source: str) -> np.ndarray | None:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames = []
    try:
        while len(frames) < expected:
            ok, bgr = cap.read()
            if not ok:
                break
            if rotation in ROTATE:
                bgr = cv2.rotate(bgr, ROTATE[rotation])
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if len(frames) != expected:
        log.warning("%s: keyframe stream gave %d of %d pictures: sampling accurately", source, len(frames),
                    expected)
        return None
    return np.stack(frames)
