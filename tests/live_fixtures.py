"""Fixtures shared by the live-source tests (import them into a test module to use them).

``join_readers`` (autouse where imported): a stopped :class:`edgevid.live.StreamReader` may still sit in a
blocking FFmpeg call (the watch loop never waits for it). Python 3.11 ends such a thread at interpreter exit
with ``pthread_exit``, which aborts through OpenCV's C++ frames, so each test waits for its readers to end.
"""
from __future__ import annotations

import threading

import pytest


@pytest.fixture(autouse=True)
def join_readers():
    yield
    for thread in threading.enumerate():
        if thread.name == "edgevid-reader":
            thread.join(20)
