"""Reuse of already-prefilled prompt prefixes: the decoder's KV cache, kept by exact prompt prefix.

A chat's next turn and a second question about an already-seen video start with the same tokens as an
earlier prompt; their prefill then runs only from where the two differ:

    cache = PrefixCache(max_bytes=512 * 2**20, identity=decoder_identity(path, "fp32"))
    hit = cache.lookup(signature, bounds)            # None, or the KV of the longest reusable prefix
    logits, kv = prefill(decoder, inputs_from(hit.length), start=hit.cache(decoder.device) if hit else None)
    cache.store(signature, bounds, kv, logits)

Exact by construction (the same logits, bit for bit, as a prefill without the cache): a prefix is reused
only up to a position that is a chunk boundary of both prompts with the same chunks before it
(``edgevid.model.generate.prefill_bounds`` cuts at media ends and turn starts, and between them depends
only on earlier tokens), so the reused KV rows were computed by exactly the runs the new prompt would
have made. The key is a :class:`PromptSignature`: the token ids plus the content digest of every media
item (placeholder tokens alone do not say which video they hold), and the cache belongs to one decoder
graph and precision (``identity``). Bidirectional-vision blocks are never split by a chunk boundary;
KV-shared layers own no cache tensors; sliding layers keep full-length caches in this graph layout, so a
stored cache can be cut at any earlier boundary.

Entries are evicted least-recently-used by bytes; an entry whose prefix a newer one covers is dropped
(its last logits move to the newer entry). Thread-safe; the stored OrtValues are never written to (each
decoder run makes new present tensors), so a hit shares them until it has to cut a shorter prefix.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgevid.model.sessions import KVCache

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 512 * 2**20


@dataclass(frozen=True)
class MediaSpan:
    start: int          # first placeholder position of the item
    stop: int           # last placeholder position + 1
    digest: str         # content of what fills the placeholders (see media_digest)


@dataclass(frozen=True)
class PromptSignature:
    """What the decoder's KV at each position depends on: the token ids and the media in them."""

    input_ids: np.ndarray                  # int64 [seq], read-only
    media: tuple[MediaSpan, ...] = ()      # in prompt order

    def __post_init__(self):
        ids = np.array(self.input_ids, dtype=np.int64).reshape(-1)
        ids.flags.writeable = False
        object.__setattr__(self, "input_ids", ids)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def prefix(self, length: int) -> "PromptSignature":
        """The signature of the first ``length`` positions (media wholly inside them)."""
        return PromptSignature(self.input_ids[:length], tuple(m for m in self.media if m.stop <= length))

    def common_prefix(self, other: "PromptSignature") -> int:
        """Length of the longest prefix the two prompts share, media content included."""
        n = min(len(self), len(other))
        differ = np.flatnonzero(self.input_ids[:n] != other.input_ids[:n])
        common = int(differ[0]) if differ.size else n
        for i in range(max(len(self.media), len(other.media))):
            a = self.media[i] if i < len(self.media) else None
            b = other.media[i] if i < len(other.media) else None
            if a is not None and a == b:
                continue
            starts = [m.start for m in (a, b) if m is not None]
            return min(common, *starts)
        return common


_digests: dict[int, tuple[weakref.ref, str]] = {}
_digests_lock = threading.Lock()


def media_digest(vision: Any) -> str:
    """Content digest of a media item's vision-encoder input (``VisionInput``), memoised per object: a
    video from the media cache is the same object on every request, so it is hashed once."""
    with _digests_lock:
        known = _digests.get(id(vision))
        if known is not None and known[0]() is vision:
            return known[1]
    from edgevid.model.cache import vision_input_key

    digest = vision_input_key(vision)
    try:
        ref = weakref.ref(vision, lambda _, key=id(vision): _forget(key))
    except TypeError:          # not weak-referenceable: just do not memoise
        return digest
    with _digests_lock:
        _digests[id(vision)] = (ref, digest)
    return digest


def _forget(key: int) -> None:
    with _digests_lock:
        known = _digests.get(key)
        if known is not None and known[0]() is None:
            del _digests[key]


def decoder_identity(graph_path: str | os.PathLike, precision: str) -> str:
    """Identity of a decoder graph: resolved path, size, modification time and precision."""
    path = os.path.realpath(os.fspath(graph_path))
    stat = os.stat(path)
    return hashlib.sha256("\0".join(("decoder", path, str(stat.st_size), str(stat.st_mtime_ns),
                                     f"precision={precision}")).encode()).hexdigest()


@dataclass
class _Entry:
    signature: PromptSignature
    ends: tuple[int, ...]                  # chunk ends of its prefill, ascending (last = its length)
    values: dict                           # past name -> OrtValue [1, kv_heads, length, head_dim]
    logits: dict[int, np.ndarray]          # position -> logits of the row before it (at least at length)
    nbytes: int
    cuttable: bool = True                  # False when it holds ring caches: reusable at its length only
    ring: frozenset = frozenset()

    @property
    def length(self) -> int:
        return len(self.signature)


@dataclass
class PrefixHit:
    """The KV cache of the first ``length`` prompt positions (and the logits there, when the whole prompt
    was seen)."""

    length: int
    values: dict
    stored_length: int
    logits: np.ndarray | None = None
    ring: frozenset = frozenset()
    _cut: dict | None = field(default=None, repr=False)

    def cache(self, device: str = "cpu") -> KVCache:
        """A fresh :class:`KVCache` over the reused prefix (cut to ``length`` when the entry is longer)."""
        if self.length == self.stored_length:
            return KVCache(dict(self.values), self.length, borrowed=True, ring=self.ring)
        if self._cut is None:
            import onnxruntime as ort

            cut = {}
            for name, value in self.values.items():
                array = np.ascontiguousarray(value.numpy()[:, :, : self.length])
                cut[name] = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            self._cut = cut
        return KVCache(dict(self._cut), self.length, borrowed=True)


@dataclass(frozen=True)
class PrefixCacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int
    reused_tokens: int


class PrefixCache:
    """Size-bounded (LRU by bytes), thread-safe store of prefilled KV caches keyed by exact prompt prefix."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, identity: str = ""):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.identity = identity
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._reused = 0

    def lookup(self, signature: PromptSignature, bounds: Sequence[tuple[int, int]]) -> PrefixHit | None:
        """The longest reusable prefix of a prompt about to be prefilled in chunks ``bounds``, or None."""
        ends = tuple(b for _, b in bounds)
        best, best_key, best_len = None, None, 0
        with self._lock:
            for key, entry in self._entries.items():
                length = _reusable(entry, signature, ends)
                if length > best_len or (length == best_len and length and entry.length == length):
                    best, best_key, best_len = entry, key, length
            if best is None:
                self._misses += 1
                return None
            self._entries.move_to_end(best_key)
            self._hits += 1
            self._reused += best_len
            logits = best.logits.get(best_len) if best_len == len(signature) else None
            return PrefixHit(best_len, dict(best.values), best.length, logits, ring=best.ring)

    def store(self, signature: PromptSignature, bounds: Sequence[tuple[int, int]], cache: KVCache,
              logits: np.ndarray) -> bool:
        """Keep the KV cache of a prompt just prefilled in chunks ``bounds`` (``cache.length`` must be the
        prompt's length). Returns whether it was kept (an entry larger than the cache is not)."""
        ends = tuple(b for _, b in bounds)
        if cache.length != len(signature) or not ends or ends[-1] != len(signature):
            raise ValueError("store() takes the cache of the whole prefilled prompt")
        with self._lock:
            for key, old in self._entries.items():
                if old.ends == ends and old.signature.common_prefix(signature) == len(signature) == old.length:
                    self._entries.move_to_end(key)          # the same prefix, chunked the same way: kept already
                    old.logits.setdefault(len(signature), np.array(logits, copy=True))
                    return True
        kept = cache.snapshot()
        values = kept.values
        nbytes = sum(_ort_nbytes(v) for v in values.values()) + signature.input_ids.nbytes + 2 * logits.nbytes
        if nbytes > self.max_bytes:
            log.debug("not keeping a %d-token prefix: %d bytes > prefix cache size %d", len(signature), nbytes,
                      self.max_bytes)
            return False
        entry = _Entry(signature, ends, values, {len(signature): np.array(logits, copy=True)}, nbytes,
                       cuttable=not kept.ring, ring=kept.ring)
        with self._lock:
            for key, old in list(self._entries.items()):
                if old.signature is signature or (entry.cuttable and _covers(entry, old)):
                    if old.length not in entry.logits and old.length in old.logits:
                        entry.logits[old.length] = old.logits[old.length]
                    self._drop(key)
            self._entries[self._next] = entry
            self._next += 1
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self._evictions += 1
        return True

    def stats(self) -> PrefixCacheStats:
        with self._lock:
            return PrefixCacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._bytes,
                                    self.max_bytes, self._reused)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes


def _reusable(entry: _Entry, signature: PromptSignature, ends: tuple[int, ...]) -> int:
    """The largest position up to which ``entry`` holds exactly what prefilling ``signature`` in chunks
    ending at ``ends`` would compute (0 = none): a shared prefix, a chunk end of both with the same chunk
    ends before it, and the logits there when it is the whole new prompt."""
    common = entry.signature.common_prefix(signature)
    best = 0
    for i, (a, b) in enumerate(zip(entry.ends, ends)):
        if a != b or a > common:
            break
        if a == len(signature) and a not in entry.logits:
            break
        best = a
    if not entry.cuttable and best != entry.length:
        return 0            # a ring cache's rows are the kernel's layout at its length: no shorter prefix in it
    return best


def _covers(new: _Entry, old: _Entry) -> bool:
    """``new`` serves every lookup ``old`` could (old's prompt is a chunk-aligned prefix of new's)."""
    k = len(old.ends)
    return (old.length <= new.length and new.ends[:k] == old.ends
            and new.signature.common_prefix(old.signature) >= old.length)


def _ort_nbytes(value: Any) -> int:
    shape = value.shape()
    return int(np.prod(shape)) * np.dtype(_ORT_TYPES.get(value.data_type(), np.float32)).itemsize


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
