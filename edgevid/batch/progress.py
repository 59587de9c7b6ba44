"""The progress line on stderr and the run's summary.

On a terminal the line is redrawn in place (at most 5 times a second); into a log file it is printed
every 15 s. The total is counted by a background walk of the sources, so work starts at once and the
bar shows ``?`` until the count is in.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass


@dataclass
class BatchSummary:
    """What a run did: ``done`` answers written (``failed`` of them with an error), ``skipped`` answers
    already in the results, ``sources`` sources finished, ``seconds`` wall time."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    sources: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    output: str = ""
    workers: int = 0
    backend: str = "local"

    @property
    def videos_per_minute(self) -> float:
        return 60.0 * self.sources / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        state = "interrupted" if self.interrupted else "batch"
        return (f"{state}: done {self.done}, failed {self.failed}, skipped {self.skipped} in {self.seconds:.1f} s "
                f"({self.sources} sources, {self.videos_per_minute:.1f} videos/min, {self.workers} {self.backend} "
                f"worker{'s' if self.workers != 1 else ''}) -> {self.output}")


class Progress:
    def __init__(self, questions: int, stream=None, enabled: bool = True):
        self.questions = questions
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_sources: int | None = None
        self.answered = self.failed = self.skipped = self.sources = 0
        self.start = time.monotonic()
        self._last = 0.0 if self.tty else self.start      # into a log: the first line after 15 s
        self._lock = threading.Lock()

    def count_in_background(self, counter) -> None:
        def run():
            try:
                self.total_sources = counter()
            except Exception:       # the count is cosmetic; the listing itself reports real errors
                self.total_sources = None
        threading.Thread(target=run, name="edgevid-batch-count", daemon=True).start()

    def answer(self, failed: bool) -> None:
        self.answered += 1
        self.failed += failed
        self.draw()

    def skip(self, count: int = 1) -> None:
        self.skipped += count
        self.draw()

    def source_done(self) -> None:
        self.sources += 1
        self.draw()

    def text(self) -> str:
        elapsed = time.monotonic() - self.start
        total = None if self.total_sources is None else self.total_sources * self.questions
        done = self.answered + self.skipped
        rate = self.sources / elapsed * 60 if elapsed > 0 else 0.0
        parts = [f"{done}/{total if total is not None else '?'} answers"]
        if self.skipped:
            parts.append(f"{self.skipped} already done")
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{rate:.1f} videos/min")
        if total is not None and self.answered and done < total:
            eta = (total - done) * elapsed / self.answered
            parts.append(f"ETA {_clock(eta)}")
        return "[batch] " + " · ".join(parts)

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < (0.2 if self.tty else 15.0):
                return
            self._last = now
            if self.tty:
                self.stream.write("\r\x1b[2K" + self.text())
            else:
                self.stream.write(self.text() + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
