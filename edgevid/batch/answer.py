"""One worker's job: load the Pipeline once, then answer every question about one source in a row.

The questions about a source run back to back in the same Pipeline, video first in the prompt: the media
cache decodes and vision-encodes the video once, and whatever reuses the prompt prefix inside the
runtime sees the same prefix again. A source that cannot be read or decoded gets its one-line error in
each of its records, and decoding is not retried for each question.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from stat import S_ISREG
from dataclasses import dataclass
from typing import Iterator

from edgevid.batch.job import BatchJob, Item, answer_key, model_identity
from edgevid.errors import BatchError, EdgevidError, MediaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    question: int             # index into item.questions
    key: str
    record: dict | None       # None: already in the results (skipped)


@dataclass
class Opened:
    """A source made readable: a local path (a URL is downloaded first), its kind and content hash."""

    path: str | None = None
    kind: str | None = None
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    error: str | None = None
    media: object = None      # the MediaSource holding a download, closed after the item

    def close(self) -> None:
        if self.media is not None:
            self.media.close()


def load_pipeline(job: BatchJob, model_dir: str):
    """The worker's Pipeline; refuses a folder whose identity differs from the driver's (a stale copy
    on one node would otherwise mix two models' answers in one results file)."""
    from edgevid.media import SourcePolicy
    from edgevid.pipeline import Pipeline

    found = model_identity(model_dir, job.precision)
    if found != job.model_id:
        raise BatchError(f"the model folder {model_dir} on {socket.gethostname()} differs from the one the run "
                         f"started with (identity {found} != {job.model_id})")
    from edgevid.model.sessions import cores_look_free

    # a worker owns its threads' cores unless the machine is already busy: then spinning only steals CPU
    return Pipeline.load(model_dir, device=job.device, precision=job.precision, threads=job.threads,
                         policy=SourcePolicy.permissive(), spinning=cores_look_free())


def worker_name(kind: str, slot: str) -> str:
    return f"{kind}-{slot}@{socket.gethostname()}:{os.getpid()}"


def answer_item(pipeline, item: Item, job: BatchJob, worker: str) -> Iterator[Outcome]:
    opened = open_item(item, job)
    try:
        error = opened.error
        for i, question in enumerate(item.questions):
            key = answer_key(item.location, opened.sha256, question, job)
            if key in item.done:
                yield Outcome(i, key, None)
                continue
            start = time.perf_counter()
            result = None
            if error is None:
                try:
                    result = pipeline.chat([_message(opened, question)], job.options)
                except MediaError as exc:           # the source itself: same for every question
                    error = str(exc)
                except EdgevidError as exc:         # this question (too long for the context, ...)
                    yield Outcome(i, key, _record(item, question, key, worker, job, opened, start, error=str(exc)))
                    continue
                except Exception as exc:            # a decoder or runtime bug must not end a long run
                    log.exception("answering %s failed", item.name)
                    yield Outcome(i, key, _record(item, question, key, worker, job, opened, start,
                                                  error=f"{type(exc).__name__}: {exc}"))
                    continue
            yield Outcome(i, key, _record(item, question, key, worker, job, opened, start, result=result, error=error))
    finally:
        opened.close()


def open_item(item: Item, job: BatchJob) -> Opened:
    from edgevid.media import SourcePolicy, open_source

    if item.is_url:
        try:
            media = open_source(item.location, job.url_policy)
        except EdgevidError as exc:
            return Opened(error=str(exc))
        return Opened(media.path, media.kind, media.sha256, os.path.getsize(media.path), media=media)
    opened = Opened(sha256=item.sha256)
    try:
        stat = os.stat(item.location)
        opened.size, opened.mtime_ns = stat.st_size, stat.st_mtime_ns
        if opened.sha256 is None and S_ISREG(stat.st_mode):      # a FIFO would block: open_source says why
            opened.sha256 = file_sha256(item.location)
    except OSError:
        opened.sha256 = None                      # open_source below names the cause
    try:
        with open_source(item.location, SourcePolicy.permissive()) as media:
            opened.path, opened.kind = media.path, media.kind
    except EdgevidError as exc:
        opened.error = str(exc)
    return opened


def local_sha256(item: Item) -> str | None:
    """The content hash of a local item's file, None for a URL or a file that cannot be read."""
    if item.is_url:
        return None
    try:
        if not S_ISREG(os.stat(item.location).st_mode):
            return None
        return file_sha256(item.location)
    except OSError:
        return None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _message(opened: Opened, question: str) -> dict:
    from edgevid.messages import user_message

    if opened.kind == "image":
        return user_message(question, images=[opened.path])
    return user_message(question, videos=[opened.path])       # GIFs too: the video path reads their frames


def _record(item: Item, question: str, key: str, worker: str, job: BatchJob, opened: Opened, start: float, *,
            result=None, error: str | None = None) -> dict:
    ok = result is not None
    return {
        "source": item.name, "question": question,
        "text": result.text if ok else None,
        "error": None if ok else error,
        "frames": sum(m.get("frames") or 0 for m in result.media) if ok else None,
        "prompt_tokens": result.prompt_tokens if ok else None,
        "completion_tokens": result.completion_tokens if ok else None,
        "latency_s": round(time.perf_counter() - start, 4),
        "worker": worker, "model": job.model_name,
        "finish_reason": result.finish_reason if ok else None,
        "key": key, "sha256": opened.sha256,
        "path": None if item.is_url else item.location, "bytes": opened.size, "mtime_ns": opened.mtime_ns,
    }
