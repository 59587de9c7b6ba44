"""Frames from MP4/MOV H.264/HEVC through the container index, decoded by OpenCV with no wasted work.

OpenCV's FFmpeg seek always starts from the keyframe at or before ``target - 16`` and decodes forward,
so a target just after a keyframe costs a whole extra GOP, and it cannot stop at a keyframe at all.
This module reads the index itself (:mod:`edgevid.media.mp4`) and plans *segments*: runs of samples (in
decode order) that start at a keyframe and end at the last sample a target needs. The segments are
written, each preceded by the parameter sets, as one H.264/HEVC Annex-B stream to a temporary file,
which OpenCV decodes in one pass. Only the frames PyAV's "seek to the previous keyframe and decode
forward" would decode are decoded.

* accurate: the targets ``floor(i * total / n)``; consecutive targets share a segment when decoding on
  is cheaper than restarting from a keyframe.
* fast: each target snaps to the keyframe at or before it (targets sharing a keyframe give one frame);
  one-sample segments, one decode per frame. Clips with no more than ``n`` frames give all of them.

Timestamps are the index's presentation times (exact on VFR clips), rotation comes from the track
matrix. Every plan is checked: the decoder must output exactly the planned number of pictures, or the
caller falls back to the OpenCV reader (logged). Returns None whenever this path does not apply: other
containers/codecs, a truncated file (the index points past its end), an edit list that trims frames,
segments that would start at a keyframe that is not IDR (open GOP).
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
from dataclasses import dataclass, field

import cv2
import numpy as np

from . import mp4
from .limits import check_pixels
from .sources import MediaSource
from .limits import DecodeLimits
from .sampled import SampledVideo, sample_indices

log = logging.getLogger(__name__)

START = b"\x00\x00\x00\x01"
ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
RESTART_COST = 4      # decoded frames a new segment is worth (parameter sets, decoder reset)
MAX_STREAM_BYTES = 512 * 2**20   # beyond this the temporary stream is not worth writing (one-GOP clips)


@dataclass
class Segment:
    first: int                                     # decode-order sample numbers, inclusive
    last: int
    targets: list[int] = field(default_factory=list)   # display indices to keep from this segment


def sample_indexed(media: MediaSource, num_frames: int, mode: str,
                   limits: DecodeLimits | None = None) -> SampledVideo | None:
    limits = limits or DecodeLimits.default(media.source)
    index = usable_index(media)
    if index is None:
        return None
    total = index.frame_count
    targets = sample_indices(total, num_frames)
    if mode == "fast" and total > num_frames:       # a short clip gives all its frames in either mode
        keys = index.keyframe_positions()
        targets = np.unique(keys[np.searchsorted(keys, targets, side="right") - 1])
    segments = plan(index, targets)
    if not all_idr(media.path, index, [s.first for s in segments]):
        log.info("%s: keyframes that are not IDR (open GOP): reading through OpenCV", media.source)
        return None
    size = sum(int(index.sizes[s.first: s.last + 1].sum()) for s in segments)
    if size > MAX_STREAM_BYTES:
        log.info("%s: keyframes too sparse (%d MiB to copy): reading through OpenCV", media.source, size >> 20)
        return None
    decoded = decode_segments(media, index, segments, limits)
    if decoded is None:
        return None
    frames, (height, width) = decoded
    samples = index.display_order[targets]
    fps = total / index.duration if index.duration > 0 else 0.0
    return SampledVideo(frames=frames, timestamps=index.pts[samples].astype(np.float64),
                        indices=targets.astype(np.int64), fps=float(fps), duration=float(index.duration),
                        frame_count=total, width=int(width), height=int(height), source=media.source)


def usable_index(media: MediaSource) -> mp4.VideoIndex | None:
    index = mp4.load_index(media.path, media.mime, media.source)
    if index is None or parameter_sets(index) is None:
        log.info("%s: no H.264/HEVC MP4 index (%s): reading through OpenCV", media.source, media.mime)
        return None
    if int((index.offsets + index.sizes).max()) > os.path.getsize(media.path):
        log.info("%s: the index points past the end of the file (truncated): reading through OpenCV",
                 media.source)
        return None
    if index.trimmed:
        log.info("%s: an edit list trims frames: reading through OpenCV", media.source)
        return None
    return index


def plan(index: mp4.VideoIndex, targets: np.ndarray) -> list[Segment]:
    """Segments covering ``targets`` (sorted display indices) with the fewest decoded samples."""
    display_of = np.empty(index.frame_count, np.int64)
    display_of[index.display_order] = np.arange(index.frame_count)
    keys = np.sort(index.keyframes)
    segments: list[Segment] = []
    for target in (int(t) for t in targets):
        sample = int(index.display_order[target])
        start = _keyframe_for(keys, display_of, sample, target)
        current = segments[-1] if segments else None
        if current is not None and current.first <= sample and \
                max(sample - current.last, 0) <= sample - start + RESTART_COST:
            current.last = max(current.last, sample)
        else:
            segments.append(Segment(start, sample))
        segments[-1].targets.append(target)
    return segments


def _keyframe_for(keys: np.ndarray, display_of: np.ndarray, sample: int, target: int) -> int:
    """The latest keyframe at or before ``sample`` in decode order that also displays no later than the
    target (so leading pictures of an open GOP start one GOP earlier)."""
    at = int(np.searchsorted(keys, sample, side="right")) - 1
    while at > 0 and display_of[keys[at]] > target:
        at -= 1
    return int(keys[at]) if at >= 0 else 0


def decode_segments(media: MediaSource, index: mp4.VideoIndex, segments: list[Segment],
                    limits: DecodeLimits) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(frames, source (height, width) after rotation), or None when the plan did not decode as planned."""
    picks, expected, offset = {}, 0, 0
    display_of = np.empty(index.frame_count, np.int64)
    display_of[index.display_order] = np.arange(index.frame_count)
    for segment in segments:
        shown = np.sort(display_of[segment.first: segment.last + 1])
        for target in segment.targets:          # output order within a segment is display order
            picks[offset + int(np.searchsorted(shown, target))] = target
        offset += len(shown)
    expected = offset
    path = _write_stream(media.path, index, segments)
    try:
        frames = _read(path, expected, picks, index.rotation, limits, media.source)
    finally:
        _remove(path)
    if frames is None:
        log.warning("%s: the index plan did not decode as expected: reading through OpenCV", media.source)
    return frames


def _write_stream(path: str, index: mp4.VideoIndex, segments: list[Segment]) -> str:
    units, length_size = parameter_sets(index)
    header = b"".join(START + unit for unit in units)
    fd, out_path = tempfile.mkstemp(prefix="edgevid-", suffix=".h264" if index.codec.startswith("avc")
                                    else ".hevc")
    with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
        for segment in segments:
            out.write(header)
            for sample in range(segment.first, segment.last + 1):
                src.seek(int(index.offsets[sample]))
                out.write(_annexb(src.read(int(index.sizes[sample])), length_size))
    return out_path


def _read(path: str, expected: int, picks: dict[int, int], rotation: int, limits: DecodeLimits,
          source: str) -> tuple[np.ndarray, tuple[int, int]] | None:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames, position, size = [], 0, (0, 0)
    try:
        if cap.isOpened():
            check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         limits.max_pixels, source, "video frame")
        while True:
            limits.deadline.check()
            if not cap.grab():
                break
            if position in picks:
                ok, bgr = cap.retrieve()
                if not ok:
                    return None
                if rotation in ROTATE:
                    bgr = cv2.rotate(bgr, ROTATE[rotation])
                size = bgr.shape[:2]
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                del bgr
                frames.append(limits.scale(rgb))
            position += 1
    finally:
        cap.release()
    if position != expected or len(frames) != len(picks):
        return None
    return np.stack(frames), size


def all_idr(path: str, index: mp4.VideoIndex, samples) -> bool:
    """Whether every sample holds an IDR picture: decodable alone, order reset, no leading pictures that
    need the previous GOP. Open-GOP keyframes (H.264 recovery points, HEVC CRA) are not, and spliced
    segments starting at them decode to a different number or order of pictures: those clips go through
    OpenCV's own reader."""
    _, length_size = parameter_sets(index)
    idr = {19, 20} if _is_hevc(index) else {5}
    with open(path, "rb") as src:
        for sample in samples:
            src.seek(int(index.offsets[sample]))
            data, pos, types = src.read(int(index.sizes[sample])), 0, set()
            while pos + length_size < len(data):
                size = int.from_bytes(data[pos: pos + length_size], "big")
                head = data[pos + length_size]
                types.add((head >> 1) & 0x3F if _is_hevc(index) else head & 0x1F)
                pos += length_size + size
            if not types & idr:
                return False
    return True


def _is_hevc(index: mp4.VideoIndex) -> bool:
    return index.codec in ("hvc1", "hev1")


def parameter_sets(index: mp4.VideoIndex) -> tuple[list[bytes], int] | None:
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


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
