"""Live sources for ``edgevid watch``: a reader thread filling a bounded frame ring, a window sampler,
reconnect with backoff, and the loop that asks the model about each window.

    from edgevid.live import WatchOptions, WatchLoop, start_reader
"""
from edgevid.live.clock import Stamp, StreamClock
from edgevid.live.probe import Diagnosis, diagnose
from edgevid.live.reader import Gap, ReaderOptions, StreamEvent, StreamReader
from edgevid.live.ring import Frame, FrameRing
from edgevid.live.source import LiveSource, open_capture, parse_source
from edgevid.live.watch import WatchLoop, WatchOptions, WatchSummary, start_reader
from edgevid.live.window import pick_uniform, sample_window

__all__ = ["Diagnosis", "Frame", "FrameRing", "Gap", "LiveSource", "ReaderOptions", "Stamp", "StreamClock",
           "StreamEvent", "StreamReader", "WatchLoop", "WatchOptions", "WatchSummary", "diagnose", "open_capture",
           "parse_source", "pick_uniform", "sample_window", "start_reader"]
