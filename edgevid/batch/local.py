"""Local backend: N worker processes on this machine, each loading the model once.

Each worker holds one item at a time and streams an outcome per answer back over its own pipe, so the
driver always knows which answers of the item in flight are in. A worker that dies (killed, out of
memory, a crashing decoder) is replaced; the answers of its item that never arrived are queued again,
and a key that did arrive is never written twice. Workers ignore SIGINT: Ctrl-C reaches the driver,
which stops them.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Iterator

from edgevid.batch.job import BatchJob, Item
from edgevid.batch.sink import Sink
from edgevid.errors import BatchError

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0


def bundled_demo_dir() -> str:
    """This machine's bundled demo model (each node of a cluster has its own copy)."""
    from edgevid.bundled_demo import demo_dir

    return str(demo_dir())


def job_model_dir(job: BatchJob) -> str:
    return bundled_demo_dir() if job.demo else job.model_dir


def quiet_opencv() -> None:
    """OpenCV's per-file warnings (a corrupt clip) would break the progress line; errors are recorded."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")      # read when the first capture opens
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def worker_main(conn, job: BatchJob, slot: str, log_level: int) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but the arguments)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_opencv()
    logging.basicConfig(level=log_level, format=f"%(levelname)s worker {slot} %(name)s: %(message)s")
    from edgevid.batch.answer import answer_item, load_pipeline, worker_name

    name = worker_name("local", slot)
    try:
        pipeline = load_pipeline(job, job_model_dir(job))
    except Exception as exc:
        conn.send(("fatal", str(exc)))
        return
    conn.send(("ready", name))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):       # the driver went away
            return
        if item is None:
            return
        for outcome in answer_item(pipeline, item, job, name):
            conn.send(("outcome", outcome))
        conn.send(("item_done", None))


@dataclass
class _Slot:
    index: int
    generation: int
    process: multiprocessing.Process
    conn: object
    ready: bool = False
    dead: bool = False
    item: Item | None = None
    finished: set[int] = field(default_factory=set)
    deadline: float = float("inf")       # the answer in progress must arrive by then
    timed_out: bool = False

    @property
    def name(self) -> str:
        return f"{self.index}.{self.generation}"


class LocalBackend:
    name = "local"

    def __init__(self, job: BatchJob, workers: int, answer_timeout: float | None = None):
        self.job = job
        self.workers = workers
        self.answer_timeout = answer_timeout or float("inf")
        self._context = multiprocessing.get_context("spawn")
        self._restarts = 0
        self.pids: list[int] = []

    def run(self, items: Iterator[Item], sink: Sink) -> None:
        slots = [self._start(i, 0) for i in range(self.workers)]
        queue: deque[Item] = deque()          # items whose worker died, before new ones
        exhausted = False
        try:
            while True:
                for slot in slots:
                    if slot.ready and not slot.dead and slot.item is None:
                        item = queue.popleft() if queue else None
                        if item is None and not exhausted:
                            item = next(items, None)
                            exhausted = item is None
                        if item is not None:
                            self._send(slot, item)
                if exhausted and not queue and all(s.item is None for s in slots):
                    return
                handles = {}
                for slot in slots:
                    handles[slot.conn] = slot
                    handles[slot.process.sentinel] = slot
                for handle in wait(list(handles), timeout=1.0):
                    slot = handles[handle]
                    if slot.dead:
                        continue
                    if handle is slot.conn and self._receive(slot, sink):
                        continue
                    retry = self._lost(slot, sink)
                    if retry is not None:
                        queue.appendleft(retry)
                    slots[slot.index] = self._start(slot.index, slot.generation + 1)
                self._stop_overdue(slots)
        finally:
            self._stop(slots)

    # ---- messages ------------------------------------------------------------------------------------
    def _send(self, slot: _Slot, item: Item) -> None:
        slot.item, slot.finished = item, set()
        slot.deadline = time.monotonic() + self.answer_timeout
        try:
            slot.conn.send(item)
        except OSError:           # it just died: the sentinel reports it and the item is queued again
            pass

    def _receive(self, slot: _Slot, sink: Sink) -> bool:
        """Handle every message waiting on the slot's pipe; False when the pipe is closed (worker gone)."""
        try:
            while slot.conn.poll():
                kind, payload = slot.conn.recv()
                if kind == "ready":
                    slot.ready = True
                elif kind == "fatal":
                    raise BatchError(f"a worker could not start: {payload}")
                elif kind == "outcome":
                    slot.deadline = time.monotonic() + self.answer_timeout
                    slot.finished.add(payload.question)
                    sink.outcome(slot.item, payload)
                elif kind == "item_done":
                    sink.item_done(slot.item)
                    slot.item = None
        except (EOFError, OSError):
            return False
        return True

    def _lost(self, slot: _Slot, sink: Sink) -> Item | None:
        slot.dead = True
        self._receive(slot, sink)                # whatever it sent before dying still counts
        slot.conn.close()
        slot.process.join(STOP_TIMEOUT)
        code = slot.process.exitcode
        reason = f"worker {slot.name} exited ({_describe_exit(code)})"
        self._restarts += not slot.timed_out
        if not slot.ready or self._restarts > 3 * self.workers + 10:
            raise BatchError(f"{reason} {'while loading the model' if not slot.ready else 'too often'}; "
                             "the run cannot go on")
        log.warning("%s", reason)
        item, slot.item = slot.item, None
        if item is None:
            return None
        if slot.timed_out:
            return sink.retry_or_give_up(item, slot.finished, f"no answer within {self.answer_timeout:g} s "
                                         "(the worker was stopped)", final=True)
        return sink.retry_or_give_up(item, slot.finished, "its worker died")

    def _stop_overdue(self, slots: list[_Slot]) -> None:
        now = time.monotonic()
        for slot in slots:
            if slot.item is not None and not slot.dead and not slot.timed_out and now > slot.deadline:
                slot.timed_out = True
                slot.process.kill()              # noticed as a death on the next wait

    # ---- processes -----------------------------------------------------------------------------------
    def _start(self, index: int, generation: int) -> _Slot:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child, self.job, f"{index}.{generation}", logging.getLogger().level),
            name=f"edgevid-batch-{index}", daemon=True)
        with _main_module_hidden():
            process.start()
        child.close()
        self.pids.append(process.pid)
        return _Slot(index, generation, process, parent)

    def _stop(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.process.is_alive():
                try:
                    slot.conn.send(None)
                except OSError:
                    pass
        for slot in slots:
            if slot.item is not None and slot.process.is_alive():
                slot.process.terminate()          # interrupted mid-item: its answers are redone on resume
            slot.process.join(STOP_TIMEOUT)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            if not slot.conn.closed:
                slot.conn.close()


@contextlib.contextmanager
def _main_module_hidden():
    """Spawned workers need only edgevid, never the caller's script: without this, spawn re-runs the
    caller's ``__main__`` in each worker (a script with no ``if __name__ == "__main__"`` guard would start
    the batch again there; code read from stdin cannot be re-run at all)."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    with _MAIN_LOCK:
        try:
            if "__spec__" in saved:
                main.__spec__ = None
            if "__file__" in saved:
                del main.__file__
            yield
        finally:
            for name, value in saved.items():
                setattr(main, name, value)


_MAIN_LOCK = threading.Lock()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
