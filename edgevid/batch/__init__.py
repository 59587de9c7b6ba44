"""``edgevid batch``: the same questions about every video of an archive, locally or on a Ray cluster.

    from edgevid import run_batch          # = edgevid.batch.run_batch
    summary = run_batch(["clips/", "@more.txt"], ["What happens?", "Is anyone there?"], "results.jsonl",
                        model="models/gemma-4-e2b")          # or demo=True; ray=True / ray="HEAD:6379"
    print(summary.line())

One JSON line per (source, question) is appended and flushed as it is answered; running the same call
again resumes (answers already in the file are skipped). See docs/scaling.md.
"""
from edgevid.batch.progress import BatchSummary
from edgevid.batch.run import batch_url_policy, run_batch

__all__ = ["run_batch", "BatchSummary", "batch_url_policy"]
