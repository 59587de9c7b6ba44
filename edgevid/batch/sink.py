"""Where both backends hand what their workers produce: the results file, the progress line, the
caller's ``on_record``, and the counts the summary and the final completeness check are made of."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from edgevid.batch.answer import Outcome, local_sha256
from edgevid.batch.job import BatchJob, Item, answer_key
from edgevid.batch.progress import BatchSummary, Progress
from edgevid.batch.results import ResultsFile

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3     # an item whose worker died this many times is recorded as failed (a crashing file)


class Sink:
    def __init__(self, results: ResultsFile, progress: Progress, job: BatchJob, summary: BatchSummary,
                 on_record: Callable[[dict], None] | None = None):
        self.results = results
        self.progress = progress
        self.job = job
        self.summary = summary
        self.on_record = on_record
        self.accounted = 0          # answers with a record (written now or before)

    def outcome(self, item: Item, outcome: Outcome) -> None:
        self.accounted += 1
        record = outcome.record
        if record is None or not self.results.write(record):
            self.summary.skipped += 1
            self.progress.skip()
            return
        failed = record["error"] is not None
        self.summary.done += 1
        self.summary.failed += failed
        self.progress.answer(failed)
        if self.on_record is not None:
            self.on_record(record)

    def skipped(self, count: int) -> None:
        """Answers the planner found in the results without dispatching them."""
        self.accounted += count
        self.summary.skipped += count
        self.progress.skip(count)

    def item_done(self, item: Item) -> None:
        self.summary.sources += 1
        self.progress.source_done()

    def retry_or_give_up(self, item: Item, finished: set[int], reason: str, final: bool = False) -> Item | None:
        """The worker running ``item`` died: the questions it had not answered go back in the queue, or,
        after MAX_ATTEMPTS (at once when ``final``: it was stopped for taking too long), get an error
        record each, final like any other failure (a rerun skips them)."""
        remaining = tuple(q for i, q in enumerate(item.questions) if i not in finished)
        if not remaining:
            self.item_done(item)
            return None
        if item.attempt + 1 < MAX_ATTEMPTS and not final:
            log.warning("%s: %s; redoing %d answer(s)", item.name, reason, len(remaining))
            return replace(item, questions=remaining, attempt=item.attempt + 1)
        error = reason if final else f"{reason} on each of {MAX_ATTEMPTS} attempts at this source"
        item = replace(item, sha256=item.sha256 or local_sha256(item))   # the key a rerun computes: it skips it
        for question in remaining:
            key = answer_key(item.location, item.sha256, question, self.job)
            self.outcome(item, Outcome(0, key, failure_record(item, question, key, self.job, error)))
        self.item_done(item)
        return None


def failure_record(item: Item, question: str, key: str, job: BatchJob, error: str) -> dict:
    return {"source": item.name, "question": question, "text": None, "error": error, "frames": None,
            "prompt_tokens": None, "completion_tokens": None, "latency_s": None, "worker": None,
            "model": job.model_name, "finish_reason": None, "key": key, "sha256": item.sha256,
            "path": None if item.is_url else item.location, "bytes": None, "mtime_ns": None}
