"""A progress bar for the long export stages (streaming weights, quantising), on stderr.

On a terminal it redraws one line; otherwise (logs, CI) it prints a line every 10 %.
"""
from __future__ import annotations

import sys
import time


class Bar:
    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.last_decile = -1
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if total <= 0:
            return
        fraction = min(1.0, done / total)
        elapsed = time.perf_counter() - self.start
        width = 30
        filled = int(width * fraction)
        line = (f"  {self.label} [{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% "
                f"({done}/{total}, {elapsed:.0f} s)")
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
            self.shown = True
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
