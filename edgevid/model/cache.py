"""Reuse of already-seen media: decoded frames and vision-encoder features, cached by content.

A second question about the same video (the next turn of a chat, another client sending the same clip)
skips decoding and vision encoding. Keys are content hashes, never names: the sha256 of the media bytes
plus the frame count and sampling mode for frames; for features, the hash of the encoder's input
(pixel values and positions) plus the vision graph's identity. Two files that share a name, or two clips
that differ in a single frame, never share an entry.

    cache = MediaCache(max_bytes=256 * 2**20)
    with open_source(url, policy) as media:                 # downloads once, hashes the bytes
        key = frames_key(media.sha256, num_frames=32, mode="accurate")
        video, hit = cache.frames(key, lambda: sample_video(media, 32, "accurate", policy))
    key = features_key(vision_input_key(vision_input), encoder=encoder_identity(graph_path, "fp32"))
    features, hit = cache.features(key, lambda: session.encode(vision_input.pixel_values, ...))

:mod:`edgevid.model.media_parts` is the one caller for frames (every surface's media goes through it); the
pipeline caches features. Entries are evicted least-recently-used by bytes. The cache is thread-safe and computes each key once:
a request that asks for a key another thread is computing waits for that result instead of decoding the
same video twice. Cached arrays are made read-only, so a caller cannot corrupt what the next one gets.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int


def frames_key(media_sha256: str, *, num_frames: int, mode: str, preprocess: str = "") -> str:
    """Key of the frames sampled from the media whose bytes hash to ``media_sha256`` (and of their
    preprocessing, described by ``preprocess``, when the entry holds the encoder input too)."""
    if not media_sha256:
        raise ValueError("frames_key needs the sha256 of the media bytes")
    return _digest("frames", media_sha256, f"n={int(num_frames)}", f"mode={mode}", preprocess)


def vision_input_key(vision: Any) -> str:
    """Key of what enters the vision encoder (a ``VisionInput``: pixel values, positions, soft tokens).
    Hashing the encoder's input makes the features entry content-addressed whatever the media came
    from (a file, a URL, a ``SampledVideo`` or an image passed in by a Python caller): ~70 ms for 32
    full-size frames."""
    h = hashlib.sha256(b"vision-input\0")
    for array in (vision.pixel_values, vision.position_ids):
        array = np.ascontiguousarray(array)
        h.update(repr((array.shape, str(array.dtype))).encode())
        h.update(memoryview(array).cast("B"))
    h.update(repr(list(vision.soft_tokens)).encode())
    return h.hexdigest()


def encoder_identity(graph_path: str | os.PathLike, precision: str) -> str:
    """Identity of a vision graph: its resolved path, size and modification time plus the precision
    (cheap to compute; a re-exported graph gets a new identity)."""
    path = os.path.realpath(os.fspath(graph_path))
    stat = os.stat(path)
    return _digest("encoder", path, str(stat.st_size), str(stat.st_mtime_ns), f"precision={precision}")


def features_key(input_key: str, *, encoder: str) -> str:
    """Key of the vision-encoder output for the input keyed ``input_key`` (see :func:`vision_input_key`)
    run through the graph ``encoder`` (see :func:`encoder_identity`)."""
    return _digest("features", input_key, encoder)


@dataclass
class CacheUse:
    """What one request took from the cache (the pipeline reports it in ``ChatResult.timings``)."""

    frames_cached: int = 0       # videos whose decoded frames came from the cache
    features_cached: int = 0     # videos/images whose vision features came from the cache
    cached_tokens: int = 0       # soft tokens (prompt tokens) whose features came from the cache

    def as_timings(self) -> dict:
        return {"frames_cached": self.frames_cached, "features_cached": self.features_cached,
                "cached_tokens": self.cached_tokens}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class MediaCache:
    """Size-bounded (LRU by bytes), thread-safe store of sampled frames and vision features."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()
        self._pending: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0

    # ---- public -------------------------------------------------------------------------------------
    def frames(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The sampled video for ``key`` and whether it came from the cache (``compute()`` on a miss)."""
        return self._get("frames", key, compute)

    def features(self, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The vision features (an array or a tuple of arrays) for ``key`` and whether they were cached."""
        return self._get("features", key, compute)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes,
                              self.max_bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, kind_key: tuple[str, str]) -> bool:
        with self._lock:
            return kind_key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ---- internals ----------------------------------------------------------------------------------
    def _get(self, kind: str, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        slot = (kind, key)
        while True:
            with self._lock:
                entry = self._entries.get(slot)
                if entry is not None:
                    self._entries.move_to_end(slot)
                    self._hits += 1
                    return entry[0], True
                waiting = self._pending.get(slot)
                if waiting is None:
                    done = self._pending[slot] = threading.Event()
                    self._misses += 1
                    break
            waiting.wait()      # another thread is computing this key; then look again
        try:
            value = _freeze(compute())
            self._store(slot, value)
            return value, False
        finally:
            with self._lock:
                del self._pending[slot]
            done.set()

    def _store(self, slot: tuple[str, str], value: Any) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            log.debug("not caching %s %s: %d bytes > cache size %d", slot[0], slot[1][:12], size, self.max_bytes)
            return
        with self._lock:
            old = self._entries.pop(slot, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[slot] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if dataclasses.is_dataclass(value):
        return sum(_nbytes(getattr(value, f.name)) for f in dataclasses.fields(value)) + 256
    return 64


def _freeze(value: Any) -> Any:
    """Make the arrays inside ``value`` read-only (in place; the object itself is returned)."""
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, (tuple, list)):
        for v in value:
            _freeze(v)
    elif isinstance(value, dict):
        for v in value.values():
            _freeze(v)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _freeze(getattr(value, f.name))
    return value
