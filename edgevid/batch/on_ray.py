"""Ray backend: the same items answered by actors on a Ray cluster, each loading the model once.

    ray start --head                         # first machine;  others: ray start --address HEAD:6379
    edgevid batch clips/ -m /shared/models/gemma-4-e2b -i "..." -o results.jsonl --ray HEAD:6379

Where the model folder comes from on each node:
- by default each actor opens ``-m PATH`` itself: the same path must exist on every node (a shared
  file system or the same folder baked into each machine's image); ``--demo`` uses each node's own
  bundled demo folder;
- with ``ship_model`` (``--ship-model``) the driver puts the folder's files for the chosen precision in
  Ray's object store once, and the first actor on each node writes them to a node-local cache folder.
Either way an actor refuses a folder whose identity differs from the driver's.

Backpressure: at most ``IN_FLIGHT`` items are queued per actor, pulled lazily from the listing, so a
100,000-item listing is never materialised. An actor that dies (``ray.kill``, a lost node) is replaced
and the items it held are submitted again; the results file never takes a key twice.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from edgevid.batch.job import BatchJob, Item, model_files
from edgevid.batch.sink import Sink
from edgevid.errors import BatchError

log = logging.getLogger(__name__)

IN_FLIGHT = 2                  # items queued per actor: one running, one ready to start
INSTALL_HINT = 'pip install "edgevid[ray]"'


def import_ray():
    try:
        import ray
    except ImportError:
        raise BatchError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


class BatchActor:
    """Body of the Ray actor (wrapped with ``ray.remote`` at run time, so importing this needs no Ray)."""

    def __init__(self, job: BatchJob, slot: str):
        from edgevid.batch.answer import load_pipeline, worker_name
        from edgevid.batch.local import job_model_dir

        from edgevid.batch.local import quiet_opencv

        logging.basicConfig(level=logging.WARNING)
        quiet_opencv()
        self.job = job
        self.name = worker_name("ray", slot)
        self.failure = None
        try:
            model_dir = materialise(job) if job.shipped_model else job_model_dir(job)
            self.pipeline = load_pipeline(job, model_dir)
        except Exception as exc:          # reported by ready(), so the driver stops with the cause
            self.failure = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)

    def ready(self) -> tuple[str, str | None]:
        return self.name, self.failure

    def answer(self, item: Item) -> list:
        from edgevid.batch.answer import answer_item

        if self.failure is not None:
            raise BatchError(self.failure)
        return list(answer_item(self.pipeline, item, self.job, self.name))


def ship_model(ray, model_dir: str, precision: str) -> dict:
    """The folder's files for ``precision`` in the object store: relative name -> object ref."""
    import numpy as np

    from edgevid.model.manifest import ModelFolder

    folder = ModelFolder.load(model_dir)
    refs = {}
    for path in model_files(folder, precision):
        size = path.stat().st_size
        data = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        refs[path.relative_to(folder.path).as_posix()] = ray.put(data)
    return refs


def materialise(job: BatchJob) -> str:
    """The shipped folder on this node: written once per node and model identity, then reused."""
    import ray

    root = Path(tempfile.gettempdir()) / "edgevid-ray-models"
    target = root / job.model_id
    if (target / ".complete").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{job.model_id}-", dir=root))
    try:
        for name, ref in job.shipped_model.items():
            path = scratch / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(memoryview(ray.get(ref)))
        (scratch / ".complete").touch()
        try:
            os.rename(scratch, target)
        except OSError:                   # another actor on this node finished first
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


@dataclass
class _Actor:
    slot: int
    generation: int
    handle: object
    name: str
    dead: bool = False
    queued: deque = field(default_factory=deque)   # (ref, item) in submission order: the actor runs them so
    head_started: float = 0.0                      # when the item at the head started (about)
    timed_out: object = None                       # the item it was stopped for taking too long on

    def submit(self, item: Item):
        ref = self.handle.answer.remote(item)
        if not self.queued:
            self.head_started = time.monotonic()
        self.queued.append((ref, item))
        return ref

    def settle(self, ref) -> None:
        """``ref`` finished (or failed): the next queued item is now running."""
        was_head = bool(self.queued) and self.queued[0][0] == ref
        self.queued = deque(entry for entry in self.queued if entry[0] != ref)
        if was_head:
            self.head_started = time.monotonic()


class RayBackend:
    name = "ray"

    def __init__(self, job: BatchJob, workers: int | None, address: str | None = None, ship: bool = False,
                 verbose: bool = False, answer_timeout: float | None = None, local_cap: int | None = None):
        self.job = job
        self.local_cap = local_cap          # actors this machine's memory holds (a local instance only)
        self.answer_timeout = answer_timeout or float("inf")
        self.workers = workers
        self.address = address
        self.ship = ship
        self.verbose = verbose
        self.run_id = uuid.uuid4().hex[:8]
        self._restarts = 0
        self.actor_names: list[str] = []

    def run(self, items: Iterator[Item], sink: Sink) -> None:
        ray = import_ray()
        started = self._connect(ray)
        actors: list[_Actor] = []
        try:
            job = self.job
            if self.ship:
                model_dir = self.job.model_dir
                if self.job.demo:
                    from edgevid.batch.local import bundled_demo_dir
                    model_dir = bundled_demo_dir()
                job = replace(job, shipped_model=ship_model(ray, model_dir, job.precision))
            cpus = _actor_cpus(ray, job.threads)
            remote = ray.remote(num_cpus=cpus, max_restarts=0)(BatchActor)
            self.workers = self._actor_count(ray, cpus)
            actors = [self._start(remote, job, i, 0) for i in range(self.workers)]
            self._wait_ready(ray, actors)
            self._loop(ray, remote, job, actors, items, sink)
        finally:
            for actor in actors:
                if not actor.dead:
                    ray.kill(actor.handle)
            if started:
                ray.shutdown()

    # ---- cluster -------------------------------------------------------------------------------------
    def _actor_count(self, ray, cpus: float) -> int:
        """As many actors as asked (default: all the cluster's CPUs), but no more than fit at once (an
        actor Ray cannot place would hold its queued items forever) nor, on a local instance, than this
        machine's memory holds."""
        fit = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        count = min(self.workers or fit, fit)
        if self.workers and self.workers > fit:
            log.warning("the Ray cluster has room for %d actors of %g CPUs, not %d", fit, cpus, self.workers)
        if not self.workers and self.local_cap:
            count = min(count, self.local_cap)
        return count

    def _connect(self, ray) -> bool:
        if ray.is_initialized():
            return False
        kwargs = dict(include_dashboard=False, log_to_driver=self.verbose, logging_level=logging.WARNING)
        if self.address in (None, "local"):
            kwargs["object_store_memory"] = 256 * 2**20 + (_folder_bytes(self.job) if self.ship else 0)
        try:
            ray.init(address=None if self.address == "local" else self.address, **kwargs)
        except Exception as exc:
            raise BatchError(f"cannot connect to Ray at {self.address or 'a local instance'}: {exc}") from None
        return True

    def _start(self, remote, job: BatchJob, slot: int, generation: int) -> _Actor:
        name = f"edgevid-batch-{self.run_id}-{slot}.{generation}"
        handle = remote.options(name=name).remote(job, f"{self.run_id}-{slot}.{generation}")   # worker "ray-<this>@host:pid"
        self.actor_names.append(name)
        return _Actor(slot, generation, handle, name)

    def _wait_ready(self, ray, actors: list[_Actor]) -> None:
        for actor in actors:
            ref = actor.handle.ready.remote()
            while not ray.wait([ref], timeout=30.0)[0]:
                log.warning("still waiting for Ray to place actor %s (the cluster has %s CPUs)", actor.name,
                            ray.cluster_resources().get("CPU", 0))
            try:
                _, failure = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise BatchError(f"a Ray actor could not start: {_first_line(exc)}") from None
            if failure is not None:
                raise BatchError(f"a Ray actor could not start: {failure}")

    # ---- work ----------------------------------------------------------------------------------------
    def _loop(self, ray, remote, job, actors: list[_Actor], items: Iterator[Item], sink: Sink) -> None:
        queue: deque[Item] = deque()          # items to submit again (their actor died), before new ones
        in_flight: dict = {}                  # ref -> (actor, item)
        exhausted = False
        while True:
            for actor in actors:
                while not actor.dead and len(actor.queued) < IN_FLIGHT:
                    item = queue.popleft() if queue else None
                    if item is None and not exhausted:
                        item = next(items, None)
                        exhausted = item is None
                    if item is None:
                        break
                    in_flight[actor.submit(item)] = (actor, item)
            if not in_flight:
                if exhausted and not queue:
                    return
                continue
            for ref in ray.wait(list(in_flight), num_returns=1, timeout=1.0)[0]:
                actor, item = in_flight.pop(ref)
                actor.settle(ref)
                retry = self._collect(ray, remote, job, actors, actor, ref, item, sink)
                if retry is not None:
                    queue.append(retry)
            self._stop_overdue(ray, actors)

    def _collect(self, ray, remote, job, actors, actor: _Actor, ref, item: Item, sink: Sink) -> Item | None:
        """Hand a finished item's outcomes to the sink; an item whose actor died comes back to be redone."""
        try:
            outcomes = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if not actor.dead:
                actor.dead = True
                self._replace(remote, job, actors, actor, _first_line(exc), count=actor.timed_out is None)
            if item is actor.timed_out:
                return sink.retry_or_give_up(item, set(), f"no answer within {self.answer_timeout:g} s "
                                             "(the Ray actor was stopped)", final=True)
            return sink.retry_or_give_up(item, set(), "its Ray actor died")
        except ray.exceptions.RayTaskError as exc:
            cause = _first_line(exc)
            if "BatchError" in cause:
                raise BatchError(f"a Ray actor failed: {cause}") from None
            return sink.retry_or_give_up(item, set(), f"its Ray task failed ({cause})")
        for outcome in outcomes:
            sink.outcome(item, outcome)
        sink.item_done(item)
        return None

    def _stop_overdue(self, ray, actors: list[_Actor]) -> None:
        now = time.monotonic()
        for actor in actors:
            if actor.dead or actor.timed_out is not None or not actor.queued:
                continue
            item = actor.queued[0][1]
            if now - actor.head_started > self.answer_timeout * len(item.questions):
                actor.timed_out = item
                ray.kill(actor.handle)             # its refs fail; the item is recorded, the rest redone

    def _replace(self, remote, job, actors: list[_Actor], dead: _Actor, cause: str, count: bool = True) -> None:
        self._restarts += count
        if self._restarts > 3 * len(actors) + 10:
            raise BatchError(f"Ray actors died too often; the last: {cause}")
        log.warning("Ray actor %s died (%s); starting another", dead.name, cause)
        actors[actors.index(dead)] = self._start(remote, job, dead.slot, dead.generation + 1)


def _actor_cpus(ray, threads: int) -> float:
    """CPUs an actor asks Ray for: its thread count, but no more than the biggest node has (an actor
    that fits no node would wait forever)."""
    biggest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    return min(threads, biggest) if biggest >= 1 else threads


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line and not line.startswith(("File ", "Traceback"))]
    return (errors[-1] if errors else lines[0] if lines else type(exc).__name__)[:300]


def _folder_bytes(job: BatchJob) -> int:
    from edgevid.batch.local import job_model_dir
    from edgevid.model.manifest import ModelFolder

    folder = ModelFolder.load(job_model_dir(job))
    return sum(p.stat().st_size for p in model_files(folder, job.precision))
