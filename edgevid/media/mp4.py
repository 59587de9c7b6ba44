"""Read the index (``moov``) of an MP4/MOV file: tracks, their handlers, and the video sample table.

Pure Python + numpy, no FFmpeg: used to tell audio-only files apart from broken ones and, in fast mode,
to find keyframes (``stss``), their byte ranges and presentation times without decoding anything.

Counts are checked against the bytes that hold them before anything is allocated from them: a table's
entry count against its box, sample counts against the file size and :data:`MAX_SAMPLES`, run lengths
(``stts``/``ctts``/``stsc``) against the sample count. A count no real file can have raises
:class:`InconsistentIndex` (the caller answers 400: FFmpeg's own MP4 reader would allocate from the
same counts, so there is no safe fallback); an index that is merely unusable gives None.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np

MAX_MOOV_BYTES = 256 * 2**20
MAX_SAMPLES = 2_000_000        # 23 h at 24 fps; ~100 MB of index arrays here, ~50 MB in FFmpeg's index


class InconsistentIndex(Exception):
    """A sample table whose counts cannot be true for this file (an index bomb or a corrupt file)."""
MIME_TYPES = ("video/mp4", "video/quicktime", "video/3gpp")    # sniffed types that carry this index


@dataclass
class Track:
    handler: str                       # "vide", "soun", ...
    codec: str = ""                    # sample entry: "avc1", "hvc1", "mp4v", ...
    timescale: int = 0
    config: bytes = b""                # avcC / hvcC payload
    stbl: dict | None = None           # raw sample-table boxes
    media_time: int = 0                # first edit list entry's media time (timescale units)
    rotation: int = 0                  # display rotation from the track matrix, degrees counter-clockwise


@dataclass
class VideoIndex:
    codec: str
    config: bytes
    pts: np.ndarray          # seconds, per sample in decode order, relative to the first displayed frame
    offsets: np.ndarray      # file offset per sample (decode order)
    sizes: np.ndarray        # bytes per sample
    keyframes: np.ndarray    # decode-order sample numbers (0-based) of sync samples
    display_order: np.ndarray   # decode-order sample number of display frame i
    duration: float          # seconds, first displayed frame to the end of the last
    rotation: int            # degrees counter-clockwise (as FFmpeg's display matrix rotation)
    trimmed: bool            # the edit list hides frames at the start (players show fewer than the index)

    @property
    def frame_count(self) -> int:
        return len(self.sizes)

    def keyframe_positions(self) -> np.ndarray:
        """Sorted display indices of the keyframes."""
        display_of = np.empty(self.frame_count, np.int64)
        display_of[self.display_order] = np.arange(self.frame_count)
        return np.sort(display_of[self.keyframes])


def load_index(path: str, mime: str | None, source: str | None = None) -> VideoIndex | None:
    """:func:`video_index` for sniffed MP4/MOV files; None for other types or an unreadable index.
    Raises :class:`~edgevid.errors.UnreadableMediaError` when a count cannot be true (see module doc)."""
    if mime not in MIME_TYPES:
        return None
    try:
        return video_index(path)
    except InconsistentIndex as exc:
        from edgevid.errors import UnreadableMediaError
        raise UnreadableMediaError(f"the MP4 index is inconsistent: {exc}", source=source or path) from None
    except (ValueError, IndexError, OSError, struct.error):
        return None


def boxes(data: bytes, start: int = 0, end: int | None = None):
    """Yield (type, payload_start, payload_end) for the boxes in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind.decode("latin-1"), pos + header, min(pos + size, end)
        pos += size


def read_moov(path: str) -> bytes | None:
    """The ``moov`` box payload, found by walking top-level boxes (None if absent or not ISO-BMFF)."""
    with open(path, "rb") as f:
        pos = 0
        while True:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                return None
            size, kind = struct.unpack_from(">I4s", header)
            head_len = 8
            if size == 1 and len(header) == 16:
                size, head_len = struct.unpack_from(">Q", header, 8)[0], 16
            elif size == 0:
                size = None
            if kind == b"moov":
                length = (size - head_len) if size else MAX_MOOV_BYTES
                if length > MAX_MOOV_BYTES:
                    return None
                f.seek(pos + head_len)
                return f.read(length)
            if not size or size < head_len:
                return None
            pos += size


def tracks(moov: bytes) -> list[Track]:
    result = []
    for kind, a, b in boxes(moov):
        if kind == "trak":
            track = _track(moov, a, b)
            if track is not None:
                result.append(track)
    return result


def _child(data: bytes, a: int, b: int, path: str) -> tuple[int, int] | None:
    for name in path.split("/"):
        for kind, ca, cb in boxes(data, a, b):
            if kind == name:
                a, b = ca, cb
                break
        else:
            return None
    return a, b


def _track(data: bytes, a: int, b: int) -> Track | None:
    hdlr = _child(data, a, b, "mdia/hdlr")
    if hdlr is None:
        return None
    track = Track(handler=data[hdlr[0] + 8: hdlr[0] + 12].decode("latin-1"))
    tkhd = _child(data, a, b, "tkhd")
    if tkhd:
        track.rotation = _rotation(data, tkhd[0])
    mdhd = _child(data, a, b, "mdia/mdhd")
    if mdhd:
        version = data[mdhd[0]]
        track.timescale = struct.unpack_from(">I", data, mdhd[0] + (20 if version == 1 else 12))[0]
    elst = _child(data, a, b, "edts/elst")
    if elst:
        track.media_time = _first_media_time(data, *elst)
    stbl = _child(data, a, b, "mdia/minf/stbl")
    if stbl:
        track.stbl = {kind: data[ca:cb] for kind, ca, cb in boxes(data, *stbl)}
        stsd = track.stbl.get("stsd", b"")
        if len(stsd) >= 16:
            entry_size, entry = struct.unpack_from(">I4s", stsd, 8)
            track.codec = entry.decode("latin-1")
            # visual sample entry: 8 (box header) + 78 bytes of fields, then child boxes (avcC, hvcC...)
            for kind, ca, cb in boxes(stsd, 8 + 8 + 78, 8 + entry_size):
                if kind in ("avcC", "hvcC"):
                    track.config = stsd[ca:cb]
    return track


def _rotation(data: bytes, a: int) -> int:
    matrix_at = a + (52 if data[a] == 1 else 40)
    m00, m01 = struct.unpack_from(">ii", data, matrix_at)
    m10, m11 = struct.unpack_from(">ii", data, matrix_at + 12)
    if (m00, m01, m10, m11) == (65536, 0, 0, 65536):
        return 0
    # FFmpeg: rotation = atan2(m01, m00) read with the matrix transposed -> counter-clockwise degrees
    return round(math.degrees(math.atan2(m10, m00))) % 360


def _first_media_time(data: bytes, a: int, b: int) -> int:
    version, count = data[a], struct.unpack_from(">I", data, a + 4)[0]
    pos = a + 8
    for _ in range(count):
        if version == 1:
            duration, media_time = struct.unpack_from(">Qq", data, pos)
            pos += 20
        else:
            duration, media_time = struct.unpack_from(">Ii", data, pos)
            pos += 12
        if media_time != -1:          # -1 = empty edit (a delay)
            return media_time
    return 0


def video_index(path: str) -> VideoIndex | None:
    """The first video track's sample table, or None when the file is not an indexed MP4/MOV."""
    moov = read_moov(path)
    if moov is None:
        return None
    file_size = os.path.getsize(path)
    found = tracks(moov)
    for track in found:                  # every track: FFmpeg reads them all if it gets this file
        if track.stbl:
            check_tables(track.stbl, file_size)
    video = next((t for t in found if t.handler == "vide" and t.stbl), None)
    if video is None or not video.timescale:
        return None
    return _index(video)


def check_tables(stbl: dict, file_size: int) -> None:
    """Raise :class:`InconsistentIndex` for counts the file cannot hold (nothing is allocated here)."""
    n = 0
    box = stbl.get("stsz", b"")
    if len(box) >= 12:
        sample_size, n = struct.unpack_from(">II", box, 4)
        if n > MAX_SAMPLES:
            raise InconsistentIndex(f"stsz claims {n} samples (edgevid reads at most {MAX_SAMPLES})")
        if sample_size and n * sample_size > file_size:
            raise InconsistentIndex(f"stsz claims {n} samples of {sample_size} bytes in a {file_size}-byte file")
        if not sample_size and 12 + 4 * n > len(box):
            raise InconsistentIndex(f"stsz claims {n} sample sizes but its box holds {(len(box) - 12) // 4}")
    for name, width in (("stts", 8), ("ctts", 8), ("stsc", 12), ("stss", 4), ("stco", 4), ("co64", 8)):
        box = stbl.get(name, b"")
        if len(box) < 8:
            continue
        entries = struct.unpack_from(">I", box, 4)[0]
        if 8 + entries * width > len(box):
            raise InconsistentIndex(f"{name} claims {entries} entries but its box holds {(len(box) - 8) // width}")
        if name in ("stts", "ctts"):
            total = int(np.frombuffer(box, ">u4", 2 * entries, 8)[0::2].astype(np.int64).sum())
            if total > max(n, 1) and total > MAX_SAMPLES:
                raise InconsistentIndex(f"{name} runs cover {total} samples, the file has {n}")
        if name == "stsc" and entries:
            per_chunk = np.frombuffer(box, ">u4", 3 * entries, 8)[1::3]
            if int(per_chunk.max()) > max(n, 1):
                raise InconsistentIndex(f"stsc puts {int(per_chunk.max())} samples in one chunk, the file has {n}")


def _index(track: Track) -> VideoIndex | None:
    stbl = track.stbl
    sizes = _stsz(stbl.get("stsz", b""))
    if sizes is None or not len(sizes):
        return None
    n = len(sizes)
    dts = np.cumsum(np.concatenate([[0], _runs(stbl.get("stts", b""), n)[:-1]]))
    cts = _runs(stbl.get("ctts", b""), n, signed=True) if "ctts" in stbl else np.zeros(n, np.int64)
    pts_units = dts + cts
    display = np.argsort(pts_units, kind="stable")
    pts = (pts_units - pts_units[display[0]]) / track.timescale
    offsets = _offsets(stbl, sizes)
    if offsets is None:
        return None
    if "stss" in stbl:
        count = struct.unpack_from(">I", stbl["stss"], 4)[0]
        keyframes = np.frombuffer(stbl["stss"], ">u4", count, 8).astype(np.int64) - 1
        keyframes = keyframes[(keyframes >= 0) & (keyframes < n)]
        if not len(keyframes):
            return None
    else:
        keyframes = np.arange(n, dtype=np.int64)       # every sample is a sync sample
    deltas = _runs(stbl.get("stts", b""), n)
    duration = float(pts.max()) + (deltas[-1] / track.timescale if n else 0.0)
    return VideoIndex(codec=track.codec, config=track.config, pts=pts, offsets=offsets, sizes=sizes,
                      keyframes=keyframes, display_order=display, duration=duration, rotation=track.rotation,
                      trimmed=track.media_time > int(pts_units.min()))


def _stsz(box: bytes) -> np.ndarray | None:
    if len(box) < 12:
        return None
    sample_size, count = struct.unpack_from(">II", box, 4)
    if sample_size:
        return np.full(count, sample_size, dtype=np.int64)
    return np.frombuffer(box, ">u4", count, 12).astype(np.int64)


def _runs(box: bytes, n: int, signed: bool = False) -> np.ndarray:
    """Expand (count, value) runs (stts / ctts) to ``n`` values."""
    if len(box) < 8:
        return np.zeros(n, np.int64)
    entries = struct.unpack_from(">I", box, 4)[0]
    counts = _clip_runs(np.frombuffer(box, ">u4", 2 * entries, 8)[0::2].astype(np.int64), n)
    deltas = np.frombuffer(box, ">i4" if signed else ">u4", 2 * entries, 8)[1::2].astype(np.int64)
    values = np.repeat(deltas, counts)
    if len(values) < n:
        values = np.concatenate([values, np.full(n - len(values), values[-1] if len(values) else 0)])
    return values[:n]


def _clip_runs(counts: np.ndarray, n: int) -> np.ndarray:
    """Run lengths cut so that they cover at most ``n`` items (never expand past what is needed)."""
    ends = np.minimum(np.cumsum(counts), n)
    return np.diff(np.concatenate([[0], ends]))


def _offsets(stbl: dict, sizes: np.ndarray) -> np.ndarray | None:
    if "stco" in stbl:
        box, dtype = stbl["stco"], ">u4"
    elif "co64" in stbl:
        box, dtype = stbl["co64"], ">u8"
    else:
        return None
    count = struct.unpack_from(">I", box, 4)[0]
    chunks = np.frombuffer(box, dtype, count, 8).astype(np.int64)
    stsc = stbl.get("stsc", b"")
    entries = struct.unpack_from(">I", stsc, 4)[0] if len(stsc) >= 8 else 0
    table = np.frombuffer(stsc, ">u4", 3 * entries, 8).reshape(-1, 3).astype(np.int64)
    per_chunk = np.zeros(count, np.int64)
    for k, (first, samples, _) in enumerate(table):
        last = table[k + 1][0] - 1 if k + 1 < len(table) else count
        per_chunk[first - 1: last] = samples
    chunk_of = np.repeat(np.arange(count), _clip_runs(per_chunk, len(sizes)))
    if len(chunk_of) < len(sizes):
        return None
    starts = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])
    sizes_cum = np.concatenate([[0], np.cumsum(sizes)])
    offset_in_chunk = sizes_cum[np.arange(len(sizes))] - sizes_cum[starts[chunk_of]]
    return chunks[chunk_of] + offset_in_chunk
