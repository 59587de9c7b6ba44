"""Keep the pages of memory-mapped weight files from piling up in this process's resident set.

The parity gate runs the fp32 graphs, whose weights (12 GB for the E2B-size decoder) are more than the
export's memory budget. onnxruntime maps external weights in place when pre-packing is off
(``session.disable_prepacking``), and mapped file pages are page cache: the kernel can drop them and
read them again at any time. Left alone they would still count as this process's memory until the
mapping goes away. :class:`TrimMappedPages` gives them back every ``interval`` seconds with
``madvise(MADV_DONTNEED)`` (Linux; a no-op elsewhere), so the gate's peak is its working set, not the
whole graph: the next access faults the page in again from the page cache (or disk).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4


def _mappings(suffix: str) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip().endswith(suffix):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((start, end - start))
    return ranges


class TrimMappedPages:
    """Context manager: while inside, a thread drops the resident pages of mapped ``*suffix`` files."""

    def __init__(self, suffix: str = ".onnx_data", interval: float = 0.05):
        self.suffix, self.interval = suffix, interval
        self.enabled = sys.platform.startswith("linux") and Path("/proc/self/maps").exists()
        self._stop = threading.Event()
        self._thread = None
        self.trims = 0

    def trim(self) -> int:
        if not self.enabled:
            return 0
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        released = 0
        for start, length in _mappings(self.suffix):
            if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_DONTNEED) == 0:
                released += length
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
