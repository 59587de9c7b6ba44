"""One model worker thread behind a bounded set of request slots.

The pipeline is used by this thread only. A request takes a slot (:meth:`ModelWorker.admit`) before its
media is fetched, so a full server answers 503 at once instead of downloading first; the slot is given
back when the worker is done with the job (or the request fails before it is queued). Each job carries
its own event queue, which the HTTP thread drains: ``("start", prompt_tokens)``, ``("piece", TextPiece)``,
``("end", (finish_reason, completion_tokens))`` for streams, ``("result", ChatResult)`` otherwise, and
``("error", EdgevidError)`` for any failure. Setting ``job.cancelled`` (client gone) stops generation at
the next token and frees the worker.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from edgevid.errors import EdgevidError
from edgevid.server.errors import ServerBusyError

log = logging.getLogger(__name__)


class Ticket:
    """One of the worker's slots; released exactly once."""

    def __init__(self, give_back):
        self._give_back = give_back
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._give_back()


@dataclass
class Job:
    messages: list
    options: object
    stream: bool
    ticket: Ticket
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value) -> None:
        self.events.put((kind, value))

    def next_event(self, timeout: float | None = None):
        """The next event, or None when ``timeout`` passes first."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class WorkerStats:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0


class ModelWorker:
    def __init__(self, pipeline, *, queue_size: int, policy=None):
        self.pipeline = pipeline
        self.policy = policy
        self.capacity = queue_size + 1               # the running job + queue_size waiting
        self._in_use = 0
        self._slot_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._current: Job | None = None
        self._stopping = threading.Event()
        self.stats = WorkerStats()
        self._thread = threading.Thread(target=self._run, name="edgevid-model-worker", daemon=True)

    # ---- HTTP side --------------------------------------------------------------------------------
    def start(self) -> "ModelWorker":
        self._thread.start()
        return self

    def admit(self) -> Ticket:
        if self._stopping.is_set():
            raise ServerBusyError("the server is shutting down")
        with self._slot_lock:
            if self._in_use >= self.capacity:
                raise ServerBusyError(f"the server is busy: all {self.capacity} request slots are taken "
                                      "(--queue-size); retry shortly")
            self._in_use += 1
        return Ticket(self._give_back_slot)

    def _give_back_slot(self) -> None:
        with self._slot_lock:
            self._in_use -= 1

    def submit(self, ticket: Ticket, messages: list, options, *, stream: bool) -> Job:
        job = Job(messages=messages, options=options, stream=stream, ticket=ticket)
        if self._stopping.is_set():
            ticket.release()
            raise ServerBusyError("the server is shutting down")
        self._jobs.put(job)
        return job

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def slots_in_use(self) -> int:
        return self._in_use

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the running job, fail the waiting ones, and join the thread."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("model worker did not stop within %.0f s", timeout)
        else:
            self._fail_waiting()         # a job submitted while the worker was stopping

    # ---- worker thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            if self._stopping.is_set():
                job.emit("error", ServerBusyError("the server is shutting down"))
                job.ticket.release()
                continue
            self._current = job
            try:
                self._process(job)
            except EdgevidError as err:
                self.stats.failed += 1
                job.emit("error", err)
            except Exception:  # a bug: keep serving, answer 500, keep the traceback
                log.exception("generation failed")
                self.stats.failed += 1
                job.emit("error", EdgevidError("internal error while generating; see the server log"))
            finally:
                self._current = None
                job.ticket.release()
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.emit("error", ServerBusyError("the server is shutting down"))
                job.ticket.release()

    def _process(self, job: Job) -> None:
        if job.cancelled.is_set():
            self._stop_cancelled(job, tokens=0)
            return
        stream = self.pipeline.stream(job.messages, job.options, policy=self.policy)
        try:
            if job.stream:
                job.emit("start", stream.prompt_tokens)
            finish = None
            for piece in stream:
                if job.cancelled.is_set():
                    self._stop_cancelled(job, tokens=stream.completion_tokens)
                    return
                finish = piece.finish_reason or finish
                if job.stream:
                    job.emit("piece", piece)
            if job.stream:
                job.emit("end", (finish or "stop", stream.completion_tokens))
            else:
                job.emit("result", stream.result())
            self.stats.completed += 1
        finally:
            stream.close()

    def _stop_cancelled(self, job: Job, tokens: int) -> None:
        """The client went away, or the server is stopping: then the stream still gets a last event."""
        self.stats.cancelled += 1
        if self._stopping.is_set():
            log.info("server stopping; generation stopped after %d tokens", tokens)
            job.emit("error", ServerBusyError("the server is shutting down"))
        else:
            log.info("client went away; generation stopped after %d tokens", tokens)
