"""Hand freed activation memory back to the OS between the big runs of a request.

With onnxruntime's CPU arena off (see ``sessions``), every tensor is a plain ``malloc``. glibc serves big
blocks with ``mmap`` at first but raises that threshold after the first big ``free`` (up to 32 MB), so
a prefill chunk's multi-MB activations then come from the heap, and what is freed stays resident until
the heap is trimmed. ``trim_heap()`` (glibc's ``malloc_trim(0)``, which also releases free pages inside
the heap) is called after each vision-encoder run and each prefill chunk: a few ms against runs of
hundreds of ms. Measured on the benchmark's ~258M config: q4 peak RSS 569 -> 534 MB.
Fixing the mmap threshold instead (``M_MMAP_THRESHOLD``) saved as much but made prefill ~25% and decode
~35% slower (a page fault per fresh tensor page), so it is not done.

Elsewhere than Linux/glibc this is a no-op (the Windows heap and macOS' allocator decommit big blocks
themselves).
"""
from __future__ import annotations

import ctypes
import sys

_trim = None
_looked = False


def _malloc_trim():
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                _trim = ctypes.CDLL("libc.so.6").malloc_trim
                _trim.argtypes = [ctypes.c_size_t]
                _trim.restype = ctypes.c_int
            except (OSError, AttributeError):       # not glibc (musl has no malloc_trim)
                _trim = None
    return _trim


def trim_heap() -> bool:
    """Release free heap pages to the OS; True when something could be asked of the allocator."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
