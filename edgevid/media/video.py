"""Sample frames from a video: :func:`sample_video` -> :class:`SampledVideo`.

Indices are ``floor(i * total / n)`` (transformers' Gemma 4 video processor), every frame when the clip
has fewer than ``n``. Timestamps are the container's presentation times, so variable-frame-rate clips get
true times. Rotation metadata is honoured (width/height are after rotation).

Two readers, both OpenCV (bundled FFmpeg) underneath:

* H.264/HEVC in MP4/MOV (most inputs) go through :mod:`edgevid.media.indexed`, which plans the decode from
  the container index: exactly the frames from each target's previous keyframe are decoded (``fast``:
  the keyframes alone).
* Everything else, and any MP4 whose index cannot be trusted (truncated, trimmed), goes through the
  reader below: ``CAP_PROP_POS_MSEC`` read after each grab; per gap it grabs forward or seeks, whichever
  its measured costs say is cheaper; a seek is trusted only if the frame it lands on has the time a
  constant-rate clip gives that index, otherwise the clip is read sequentially. Frame counts from
  headers are not trusted: a target past the real end, or a frame after the claimed end, means the
  count was wrong; the true count is then measured (grabbing from the last frame known to exist) and the
  right indices are sampled. Nothing falls back to "the first n frames".

Memory holds only the sampled frames, each scaled right after decode to the vision preprocessing's
target size when a :class:`~edgevid.media.working_size.WorkingSize` is given (bit-exact: it is the
preprocessing's own resize, done early), so a run's peak is O(frames x working size) whatever the source
resolution. Frames over ``policy.max_pixels`` are refused from the stream header before decoding, and
``policy.decode_timeout`` bounds the whole sampling run.
"""
from __future__ import annotations

import logging
import math
import os
import time

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")   # FFmpeg's own warnings (truncated files...) off
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edgevid.errors import EmptyMediaError, InvalidRequestError, UnreadableMediaError

from . import mp4
from .gif import sample_gif
from .images import image_as_video
from .indexed import sample_indexed
from .limits import DecodeLimits, Deadline, check_pixels
from .policy import SourcePolicy
from .sampled import DEFAULT_FPS, SampledVideo, sample_indices  # noqa: F401  (sample_indices: the old import path)
from .sources import MediaSource, open_source
from .working_size import WorkingSize

log = logging.getLogger(__name__)

MODES = ("accurate", "fast")
FIRST_SEEK_GAP_SECONDS = 2.0    # before any seek was timed, seek across gaps longer than this
OPENCV_SEEK_BACKOFF = 16        # OpenCV's FFmpeg seek starts from the keyframe before target - 16
SEEK_OVERHEAD_FRAMES = 8        # a seek's fixed cost (flush, demuxer seek), in decoded frames


def sample_video(source, num_frames: int = 32, mode: str = "accurate",
                 policy: SourcePolicy | None = None, working_size: WorkingSize | None = None) -> SampledVideo:
    """Decode ``num_frames`` frames from a path, URL, data URL, bytes or :class:`MediaSource`.

    ``mode="accurate"`` returns the exact frames ``floor(i * total / n)``; ``mode="fast"`` returns, for
    long H.264/HEVC MP4/MOV clips, the keyframe at or before each target (duplicates merged, so possibly
    fewer than ``n``) and is accurate for other inputs. ``policy`` None means
    :meth:`SourcePolicy.permissive`. ``working_size`` scales each frame at decode to the vision
    preprocessing's target size (exactly as the preprocessing would; None keeps the source size).
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise InvalidRequestError(f"num_frames must be a positive integer, not {num_frames!r}", param="num_frames")
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of {list(MODES)}, not {mode!r}", param="mode")
    policy = policy or SourcePolicy.permissive()
    owned = not isinstance(source, MediaSource)
    media = open_source(source, policy)
    try:
        limits = DecodeLimits(policy.max_pixels, Deadline(policy.decode_timeout, media.source), working_size)
        if media.kind == "gif":
            return sample_gif(media, num_frames, limits)
        if media.kind == "image":
            return image_as_video(media, limits)
        sampled = sample_indexed(media, num_frames, mode, limits)
        if sampled is not None:
            return sampled
        return _sample_opencv(media, num_frames, limits)
    except MemoryError as exc:      # a backstop: the caps above are meant to make this unreachable
        raise UnreadableMediaError("decoding the media ran out of memory", source=media.source) from exc
    finally:
        if owned:
            media.close()


# ---- OpenCV reader with an exactly known position --------------------------------------------------------
class _Reader:
    """A cv2.VideoCapture that knows the index of its current frame exactly (``current``; ``pos`` is the
    index the next grab returns)."""

    def __init__(self, path: str, source: str, limits: DecodeLimits, keyframes: np.ndarray | None = None):
        self.path, self.source, self.limits = path, source, limits
        self.keyframes = keyframes         # sorted display indices of keyframes, when an index says so
        self.cap = _open_capture(path, source, limits.max_pixels)
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps_known = math.isfinite(fps) and 0 < fps < 1000
        self.fps = fps if self.fps_known else DEFAULT_FPS
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.header_count = int(count) if math.isfinite(count) and count > 0 else 0
        self.pos, self.current, self.last_good = 0, None, -1
        self.first_ms: float | None = None
        self.current_ms: float | None = None
        self.times_ok = True
        self.seekable = self.fps_known and self.header_count > 1
        self.grab_seconds = 0.004          # running cost estimates (seconds)
        self.seek_seconds: float | None = None
        self.grabs = self.seeks = 0

    def close(self) -> None:
        self.cap.release()

    def reopen(self) -> None:
        self.cap.release()
        self.cap = _open_capture(self.path, self.source, self.limits.max_pixels)
        self.pos, self.current, self.current_ms = 0, None, None

    @property
    def frame_ms(self) -> float:
        return 1000.0 / self.fps

    def grab(self) -> bool:
        self.limits.deadline.check()
        start = time.perf_counter()
        if not self.cap.grab():
            return False
        self.grabs += 1
        self.grab_seconds = 0.9 * self.grab_seconds + 0.1 * (time.perf_counter() - start)
        ms = self._time_ms(self.pos)
        if self.pos == 0:
            self.first_ms = ms
        elif self.current == self.pos - 1 and self.current_ms is not None and ms < self.current_ms:
            self.times_ok = False          # presentation times running backwards: OpenCV lost the start time
        if self.pos > 0 and self.seekable and not self._on_grid(self.pos, ms):
            log.info("%s: frame %d at %.1f ms is off the %.3f fps grid: variable frame rate, no seeking",
                     self.source, self.pos, ms, self.fps)
            self.seekable = False
        self._landed(self.pos, ms)
        return True

    def _time_ms(self, index: int) -> float:
        """The current frame's presentation time; a frame without one (0 after frame 0, as the last
        frame of some MPEG streams) is placed one frame after the previous."""
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if index > 0 and ms <= 0 and self.current == index - 1 and self.current_ms is not None:
            return self.current_ms + self.frame_ms
        return ms

    def _landed(self, index: int, ms: float) -> None:
        self.current, self.pos, self.current_ms = index, index + 1, ms
        self.last_good = max(self.last_good, index)

    def _on_grid(self, index: int, ms: float) -> bool:
        return abs(ms - (self.first_ms or 0.0) - index * self.frame_ms) <= 0.5 * self.frame_ms

    def seek(self, index: int) -> bool | None:
        """Make ``index`` the current frame by seeking. True = landed (time verified), False = past the
        end, None = the landing time proves the clip variable-rate (position unknown: reopen)."""
        self.limits.deadline.check()
        start = time.perf_counter()
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok = self.cap.grab()
        elapsed = time.perf_counter() - start
        self.seek_seconds = elapsed if self.seek_seconds is None else 0.7 * self.seek_seconds + 0.3 * elapsed
        self.seeks += 1
        self.current = None
        if not ok:
            return False
        ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        if not self._on_grid(index, ms):
            log.info("%s: seek to frame %d landed at %.1f ms: variable frame rate, reading sequentially",
                     self.source, index, ms)
            self.seekable = False
            return None
        self._landed(index, ms)
        return True

    def should_seek(self, target: int) -> bool:
        """Seek when it decodes fewer frames than grabbing forward (exact when the keyframes are known
        from the MP4 index, otherwise from measured grab and seek times)."""
        gap = target - self.pos
        if not self.seekable or gap <= 1:
            return False
        if self.keyframes is not None:
            # OpenCV seeks to the keyframe at or before target - 16, then decodes up to the target
            at = np.searchsorted(self.keyframes, target - OPENCV_SEEK_BACKOFF, side="right") - 1
            start = int(self.keyframes[at]) if at >= 0 else 0
            return target - start + SEEK_OVERHEAD_FRAMES < gap
        if self.seek_seconds is None:
            return gap > max(FIRST_SEEK_GAP_SECONDS * self.fps, 48)
        return gap * self.grab_seconds > self.seek_seconds

    def retrieve(self) -> tuple[np.ndarray, float, float]:
        """(RGB frame, seconds from POS_MSEC, seconds from CAP_PROP_PTS) of the current frame."""
        ok, bgr = self.cap.retrieve()
        if not ok or bgr is None:
            raise UnreadableMediaError(f"could not decode frame {self.current}", source=self.source)
        frame_units = self.cap.get(cv2.CAP_PROP_PTS)      # pts in 1/fps units, not start-relative
        self.height, self.width = bgr.shape[:2]
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        del bgr
        return (self.limits.scale(rgb), (self.current_ms - (self.first_ms or 0.0)) / 1000.0,
                frame_units / self.fps)

    def fetch(self, target: int) -> None:
        """Make frame ``target`` current (grab forward or seek, whichever is cheaper); raises _Short."""
        if self.current == target:
            return
        if target < self.pos or self.should_seek(target):
            if self.seekable and target > 0:
                landed = self.seek(target)
                if landed:
                    return
                if landed is False:
                    raise _Short(None)
            self.reopen()
        while self.pos <= target:
            if not self.grab():
                raise _Short(self.pos)


class _Short(Exception):
    """The clip ended before a wanted frame; ``count`` is the true frame count when known exactly."""

    def __init__(self, count: int | None):
        super().__init__(count)
        self.count = count


def _open_capture(path: str, source: str, max_pixels: int) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        from .probe import describe_unopenable
        raise describe_unopenable(path, source)
    try:
        check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), max_pixels,
                     source, "video frame")
    except BaseException:
        cap.release()
        raise
    return cap


# ---- sampling ---------------------------------------------------------------------------------------------
def _sample_opencv(media: MediaSource, num_frames: int, limits: DecodeLimits | None = None) -> SampledVideo:
    limits = limits or DecodeLimits.default(media.source)
    reader = _Reader(media.path, media.source, limits, _index_keyframes(media))
    try:
        total = reader.header_count or _count_frames(reader)
        cache: dict[int, tuple[np.ndarray, float, float]] = {}
        for _ in range(3):
            if total == 0:
                raise EmptyMediaError("the video decodes to zero frames", source=media.source)
            targets = [int(t) for t in sample_indices(total, num_frames)]
            cache = {i: item for i, item in cache.items() if i in set(targets)}
            try:
                for target in targets:
                    if target not in cache:
                        reader.fetch(target)
                        cache[target] = reader.retrieve()
                true_total = _check_end(reader, total)
            except _Short as short:
                true_total = short.count if short.count is not None else _count_rest(reader)
            if true_total == total:
                break
            log.warning("%s: the container claims %d frames but holds %d; resampling", media.source, total,
                        true_total)
            total = true_total
        else:
            raise UnreadableMediaError("the frame count could not be established", source=media.source)
        log.debug("%s: %d grabs, %d seeks", media.source, reader.grabs, reader.seeks)
        return _result(media.source, reader, [cache[t] for t in targets], targets, total)
    finally:
        reader.close()


def _index_keyframes(media: MediaSource) -> np.ndarray | None:
    """Keyframe positions (display order) from an MP4/MOV index, to plan seeks; None when unknown."""
    index = mp4.load_index(media.path, media.mime, media.source)
    return None if index is None else index.keyframe_positions()


def _check_end(reader: _Reader, total: int) -> int:
    """Prove ``total``: frame total-1 must exist and frame total must not. Returns the true count."""
    reader.fetch(total - 1)
    while reader.grab():                  # frames beyond the claimed end: count them
        pass
    return reader.pos


def _count_rest(reader: _Reader) -> int:
    """The true count after a seek found no frame: grab on from the last frame known to exist."""
    if reader.seekable and reader.last_good > 0:
        if reader.seek(reader.last_good):
            while reader.grab():
                pass
            return reader.pos
    return _count_frames(reader)


def _count_frames(reader: _Reader) -> int:
    """Count frames by grabbing from the start (when no count is known or seeking cannot be trusted)."""
    log.info("%s: counting frames", reader.source)
    reader.reopen()
    while reader.grab():
        pass
    return reader.pos


def _result(source: str, reader: _Reader, items: list, targets: list[int], total: int) -> SampledVideo:
    frames = np.stack([item[0] for item in items])
    timestamps = np.array([item[1] for item in items], dtype=np.float64)
    if not reader.times_ok or np.any(np.diff(timestamps) <= 0):
        log.warning("%s: container times are inconsistent; using frame-rate times instead", source)
        pts = np.array([item[2] for item in items], dtype=np.float64)
        timestamps = pts - pts[0] + (targets[0] / reader.fps if targets[0] else 0.0)
    fps = reader.fps
    duration = max(total / fps, float(timestamps[-1]) + 1.0 / fps)
    return SampledVideo(frames=frames, timestamps=timestamps, indices=np.array(targets, dtype=np.int64),
                        fps=float(fps), duration=float(duration), frame_count=int(total),
                        width=int(reader.width), height=int(reader.height), source=source)

