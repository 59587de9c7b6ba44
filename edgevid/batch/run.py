"""``run_batch``: the whole run — listing, resume, a backend (local processes or Ray), the summary."""
from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from edgevid.batch.job import BatchJob, Item, answer_key, model_identity
from edgevid.batch.progress import BatchSummary, Progress
from edgevid.batch.results import ResultsFile
from edgevid.batch.sink import Sink
from edgevid.batch.sources import Source, count_sources, iter_sources
from edgevid.errors import BatchError, InvalidRequestError
from edgevid.media import SourcePolicy
from edgevid.model.generate import GenerationOptions
from edgevid.model.manifest import ModelFolder

log = logging.getLogger(__name__)

DEFAULT_URL_MAX_BYTES = 2**30
DEFAULT_THREADS = 2
DEFAULT_ANSWER_TIMEOUT = 900.0     # s; a worker stuck longer on one answer (a hanging decoder) is replaced
MAX_QUESTIONS = 64
MAX_QUESTION_CHARS = 8192


def batch_url_policy(*, domains: Sequence[str] | None = None, allow_private_urls: bool = False,
                     max_bytes: int = DEFAULT_URL_MAX_BYTES) -> SourcePolicy:
    """The policy http(s) sources are fetched under: ``serve``'s rules (no loopback/private/link-local
    address unless asked, optional domain allow-list) with a cap suited to archives."""
    return SourcePolicy(max_bytes=max_bytes, allow_local=False, allow_remote=True,
                        allow_private_urls=allow_private_urls, allowed_domains=tuple(domains) if domains else None)


def run_batch(sources: Sequence[str], questions: Sequence[str], output: str | os.PathLike, *,
              model: str | os.PathLike | None = None, demo: bool = False,
              options: GenerationOptions | None = None, precision: str = "fp32", device: str = "auto",
              workers: int | None = None, threads: int | None = None,
              ray: bool | str | None = None, ship_model: bool = False,
              url_policy: SourcePolicy | None = None, progress: bool = True,
              answer_timeout: float | None = DEFAULT_ANSWER_TIMEOUT,
              on_record: Callable[[dict], None] | None = None) -> BatchSummary:
    """Answer every question about every source; one JSON line per (source, question) in ``output``.

    ``ray``: None/False = local worker processes; True = Ray (the instance ``ray.init`` already made in
    this process, else a new local one); a string = the address of a Ray cluster. ``workers`` defaults
    to cores // threads locally (bounded by memory), to the cluster's CPUs // threads on Ray.
    ``answer_timeout``: seconds one answer may take before its worker is stopped and the source recorded
    as failed (None = no limit).
    Raises :class:`BatchError` when the run cannot go on; per-item errors are recorded instead.
    KeyboardInterrupt stops the workers and returns a summary with ``interrupted=True``.
    """
    start = time.monotonic()
    sources = [str(s) for s in sources]
    questions = _questions(questions)
    if not sources:
        raise InvalidRequestError("name at least one source (file, folder, glob, @list.txt or URL)", param="source")
    options = options or GenerationOptions()
    threads = threads or DEFAULT_THREADS
    model_dir = _model_dir(model, demo)
    model_id = model_identity(model_dir, precision)
    job = BatchJob(model_dir=None if demo else str(Path(model_dir).resolve()), model_id=model_id,
                   model_name=ModelFolder.load(model_dir).name, options=options,
                   url_policy=url_policy or batch_url_policy(), demo=demo, precision=precision, device=device,
                   threads=threads)
    backend = _backend(job, model_dir, ray=ray, workers=workers, ship_model=ship_model,
                       answer_timeout=answer_timeout)
    summary = BatchSummary(output=os.fspath(output), backend=backend.name)
    bar = Progress(len(questions), enabled=progress)
    with ResultsFile.open(output) as results:
        sink = Sink(results, bar, job, summary, on_record)
        listed = _Counter()
        bar.count_in_background(lambda: count_sources(sources))
        started = False
        try:
            items = plan(listed.count(iter_sources(sources)), questions, results, job, sink)
            first = next(items, None)           # nothing left to answer: no worker is started at all
            if first is not None:
                started = True
                backend.run(itertools.chain([first], items), sink)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.workers = (backend.workers or 0) if started else 0
            summary.seconds = time.monotonic() - start
            bar.finish()
    missing = listed.value * len(questions) - sink.accounted
    if not summary.interrupted and missing:
        raise BatchError(f"{missing} answer(s) have no record in {output}; rerun the same command to resume")
    return summary


def _backend(job: BatchJob, model_dir: Path, *, ray, workers: int | None, ship_model: bool,
             answer_timeout: float | None):
    """Local worker processes, or Ray actors (checked to be installed before anything is written)."""
    if ray:
        from edgevid.batch.on_ray import RayBackend, import_ray

        import_ray()
        address = None if ray is True else str(ray)
        local = address in (None, "local")
        return RayBackend(job, workers, address=address, ship=ship_model, verbose=log.isEnabledFor(logging.INFO),
                          answer_timeout=answer_timeout,
                          local_cap=default_workers(job.threads, model_dir, job.precision) if local else None)
    from edgevid.batch.local import LocalBackend

    return LocalBackend(job, workers or default_workers(job.threads, model_dir, job.precision), answer_timeout)


def plan(sources: Iterable[Source], questions: tuple[str, ...], results: ResultsFile, job: BatchJob,
         sink: Sink) -> Iterator[Item]:
    """Items still to answer. An unchanged local file (same size and mtime as when its hash was recorded)
    or a missing one is checked against the results here, without dispatching it."""
    for index, source in enumerate(sources):
        done = results.keys_for(source.location)
        if source.is_url:
            yield Item(index, source.name, source.location, questions, done)
            continue
        try:
            stat = os.stat(source.location)
        except OSError:
            content, known = None, True
        else:
            content = results.known_content(source.location, stat.st_size, stat.st_mtime_ns)
            known = content is not None
        remaining = questions
        if known:
            remaining = tuple(q for q in questions if answer_key(source.location, content, q, job) not in results.done)
            if len(remaining) < len(questions):
                sink.skipped(len(questions) - len(remaining))
        if remaining:
            yield Item(index, source.name, source.location, remaining, done, content)


def default_workers(threads: int, model_dir, precision: str) -> int:
    """Cores // threads, but no more than the memory available holds (model size + 0.5 GiB each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, cores // threads)
    size = ModelFolder.load(model_dir).precisions.get(precision, {}).get("size_bytes") or 0
    available = _available_memory()
    if available and size:
        fit = max(1, int(available // (1.3 * size + 2**29)))
        if fit < workers:
            log.info("%d workers fit in %.1f GiB of free memory (not %d)", fit, available / 2**30, workers)
            workers = fit
    return workers


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _questions(questions: Sequence[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(q.strip() for q in questions if q and q.strip()))
    if not unique:
        raise InvalidRequestError("ask at least one question (-i QUESTION)", param="question")
    if len(unique) > MAX_QUESTIONS:
        raise InvalidRequestError(f"at most {MAX_QUESTIONS} questions per run, got {len(unique)}", param="question")
    for q in unique:
        if len(q) > MAX_QUESTION_CHARS:
            raise InvalidRequestError(f"a question is {len(q)} characters; the limit is {MAX_QUESTION_CHARS}",
                                      param="question")
    return unique


def _model_dir(model, demo: bool) -> Path:
    from edgevid import bundled_demo

    return bundled_demo.model_dir(None if model is None else os.fspath(model), demo)


class _Counter:
    """Counts what the listing yielded, to check at the end that every answer has a record."""

    def __init__(self):
        self.value = 0

    def count(self, sources: Iterable[Source]) -> Iterator[Source]:
        for source in sources:
            self.value += 1
            yield source
