"""A benchmark process's own peak RSS."""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB. Linux: VmHWM (``ru_maxrss`` carries the parent's peak over fork + exec,
    so a side process started by a parent that exported a model would report the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024      # bytes on macOS, KiB elsewhere
