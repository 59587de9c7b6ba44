"""Keep the pages of memory-mapped weight files from piling up in this process's resident set.

onnxruntime maps a graph's external weights (``*.onnx_data``) into the process. On the CPU it pre-packs most
of them (matmul weights into MLAS's layout) and afterwards reads only the small rest, but every page it read
while packing stays resident until the mapping goes away: for an E2B-size q4 decoder, ~370 MB of scales the
packed copy already holds, and during the load the whole weight file beside its packed copy. An embedding
table used in place piles up the rows of every token a process has seen. Mapped file pages can be read again
from the file at any time, so this module hands them back with ``madvise``:

- :func:`release_weight_pages` once, after a graph is loaded and after each vision run / prefill chunk
  (embedding tables with ``MADV_DONTNEED``, so their rows stay in the page cache);
- :class:`TrimMappedPages`, a thread doing it every ``interval`` seconds while a graph loads (its weights are
  packed one after another, so the load's peak is the packed copy, not the packed copy plus the file) and
  while the export's parity gate runs fp32 graphs mapped with pre-packing off.

The runtime uses ``MADV_PAGEOUT`` (Linux 5.4+): it reclaims clean file pages only, so a page onnxruntime
had copied on write is kept. The gate uses ``MADV_DONTNEED``, which keeps the pages in the page cache
(cheap to fault in again: it reads 12 GB of mapped weights per step) and is safe there because those
sessions never write their initializers. Linux only; a no-op elsewhere.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
MADV_PAGEOUT = 21
WEIGHT_SUFFIXES = (".onnx_data", ".onnx.data")
TABLE_PREFIX = "embed_tokens"
_ENABLED = sys.platform.startswith("linux") and Path("/proc/self/maps").exists()
_madvise = None
_unsupported: set[int] = set()
_directories: set[str] = set()          # folders of loaded graphs: their weight files are released


def _libc_madvise():
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise = libc.madvise
    return _madvise


def _mappings(accept) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and accept(parts[5].strip()):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end - start))
    return ranges


def release(accept, advice: int = MADV_PAGEOUT) -> int:
    """Advise ``advice`` on every mapping whose file path ``accept`` takes; bytes of the mappings advised."""
    if not _ENABLED or advice in _unsupported:
        return 0
    madvise = _libc_madvise()
    released = 0
    for start, length in _mappings(accept):
        if madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) == 0:
            released += length
        elif ctypes.get_errno() == 22:          # EINVAL: this kernel lacks the advice; stop asking
            log.debug("madvise(%d) is not supported here: mapped weight pages stay resident", advice)
            _unsupported.add(advice)
            return released
    return released


def is_weight_file(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES)


def register_weights(directory: str | os.PathLike) -> None:
    """Weight files under ``directory`` (a loaded graph's folder) are released from now on."""
    _directories.add(os.path.join(os.path.realpath(directory), ""))


def _registered(path: str) -> bool:
    return is_weight_file(path) and any(path.startswith(d) for d in _directories)


def is_table_file(path: str) -> bool:
    """An embedding graph's weight file: its tables are read a row per token, never written."""
    return os.path.basename(path).startswith(TABLE_PREFIX)


def release_weight_pages() -> int:
    """Hand back the resident pages of the loaded graphs' mapped weight files (they fault in again on use).
    Embedding tables get ``MADV_DONTNEED``: the pages leave this process but stay in the page cache, so the
    next prompt's rows fault in from memory. ``MADV_PAGEOUT`` would evict them, and every later lookup of those
    rows (this process's decode steps, the next request) would wait for the disk (docs/performance.md). Nothing
    writes a lookup table, so no private copy can be lost."""
    if not _directories:
        return 0
    return (release(lambda path: _registered(path) and is_table_file(path), MADV_DONTNEED)
            + release(lambda path: _registered(path) and not is_table_file(path)))


class TrimMappedPages:
    """Context manager: while inside, a thread releases the pages of mapped weight files every ``interval`` s
    (``directory``: only files under it; default: every ``*.onnx_data``)."""

    def __init__(self, directory: str | os.PathLike | None = None, interval: float = 0.05,
                 advice: int = MADV_PAGEOUT):
        prefix = os.path.join(os.path.realpath(directory), "") if directory is not None else ""
        self.accept = lambda path: is_weight_file(path) and path.startswith(prefix)
        self.interval, self.advice = interval, advice
        self.enabled = _ENABLED
        self._stop = threading.Event()
        self._thread = None
        self.trims = 0

    def trim(self) -> int:
        released = release(self.accept, self.advice)
        self.trims += 1
        return released

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.trim()
            except OSError as exc:          # a mapping vanished between reading and advising: next round
                log.debug("trim: %s", exc)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="trim-mapped-pages", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            self.trim()
