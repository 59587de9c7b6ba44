"""Ctrl-C / SIGTERM / Ctrl-Break handling shared by the long-running commands (``serve``, ``watch``)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

# SIGBREAK: Ctrl-Break on Windows, which has no SIGTERM delivery from the console
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


@contextlib.contextmanager
def on_stop_signals(stop: Callable[[int], None]):
    """Call ``stop(signum)`` on a stop signal while the block runs; the previous handlers come back after.

    Handlers can only be installed from the main thread; elsewhere (tests driving a command in a thread)
    the block runs without them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, lambda signum, frame: stop(signum)) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
