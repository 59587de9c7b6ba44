"""``edgevid batch`` with local worker processes on the bundled demo model: a real folder of good and
broken clips x 2 questions, the CLI end to end, resume, a worker killed mid-run, Ctrl-C, and listing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from batch_fixtures import (QUESTIONS, answers, check_complete, edgevid_cli, expected_sources, make_archive, pairs,
                            read_records, trickle_server)
from edgevid.batch import run_batch
from edgevid.batch.sources import iter_sources
from edgevid.errors import BatchError


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("batch") / "archive")


@pytest.fixture(scope="module")
def local_run(archive, tmp_path_factory):
    """The issue's command line, run once; later tests compare against its answers."""
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    args = ["batch", archive, "--demo", "-i", QUESTIONS[0], "-i", QUESTIONS[1], "-o", out]
    result = edgevid_cli(*args)
    return args, out, result


def test_cli_records_one_line_per_source_and_question(local_run, archive):
    args, out, result = local_run
    assert result.returncode == 0, result.stderr
    records = read_records(out)
    check_complete(records, archive)
    assert sum(r["error"] is not None for r in records) == 3 * len(QUESTIONS)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"batch: done {len(records)}, failed 6, skipped 0 in "), summary
    assert set(records[0]) >= {"source", "question", "text", "error", "frames", "prompt_tokens",
                               "completion_tokens", "latency_s", "worker", "model"}


def test_cli_rerun_resumes_and_answers_nothing(local_run):
    args, out, _ = local_run
    before = out.read_bytes()
    start = time.monotonic()
    result = edgevid_cli(*args)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == before                         # nothing appended
    total = len(read_records(out))
    assert f"done 0, failed 0, skipped {total} " in result.stderr
    assert time.monotonic() - start < 60


def test_same_answers_as_a_single_pipeline(local_run, archive):
    """The batch's answers are what `Pipeline.chat` answers for the same file and question."""
    from edgevid.batch.local import bundled_demo_dir
    from edgevid.pipeline import Pipeline

    _, out, _ = local_run
    by_pair = answers(read_records(out))
    pipeline = Pipeline.load(bundled_demo_dir(), threads=2)
    for name in ("cam1/a.mp4", "sample.mp4"):
        source = str(archive / name)
        for q in QUESTIONS:
            message = {"role": "user", "content": [{"type": "video_url", "video_url": {"url": source}},
                                                   {"type": "text", "text": q}]}
            assert by_pair[(source, q)] == (pipeline.chat([message]).text, None)


def test_questions_about_one_source_share_its_decoded_frames(local_run):
    """Each source's questions run back to back in one worker: the second reuses the media cache."""
    records = read_records(local_run[1])
    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    for source, rs in by_source.items():
        assert [r["question"] for r in rs] == list(QUESTIONS)
        assert len({r["worker"] for r in rs}) == 1


def test_changed_file_and_new_question_are_answered_again(archive, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.mp4").write_bytes((archive / "cam1/a.mp4").read_bytes())
    (folder / "b.mp4").write_bytes((archive / "cam2/c.mp4").read_bytes())
    out = tmp_path / "r.jsonl"
    first = run_batch([folder], QUESTIONS[:1], out, demo=True, workers=1, progress=False)
    assert (first.done, first.skipped) == (2, 0)
    (folder / "b.mp4").write_bytes((archive / "sample.mp4").read_bytes())          # new content, same name
    second = run_batch([folder], QUESTIONS, out, demo=True, workers=1, progress=False)
    assert (second.done, second.skipped) == (3, 1)              # a.mp4 x Q0 was already answered
    records = read_records(out)
    assert pairs(records)[(str(folder / "b.mp4"), QUESTIONS[0])] == 2    # old content's answer kept, new added


def test_killed_worker_loses_and_duplicates_nothing(archive, tmp_path, local_run):
    out = tmp_path / "killed.jsonl"
    killed = {}

    def kill_first_worker(record):
        if not killed and record["question"] == QUESTIONS[0] and record["error"] is None:
            pid = int(record["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)                 # mid-item: its second question is being answered
            killed.update(pid=pid, source=record["source"], worker=record["worker"])

    summary = run_batch([archive], QUESTIONS, out, demo=True, workers=2, threads=1, progress=False,
                        on_record=kill_first_worker)
    records = read_records(out)
    check_complete(records, archive)
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    redone = [r for r in records if r["source"] == killed["source"] and r["question"] == QUESTIONS[1]]
    assert redone[0]["worker"] != killed["worker"]               # answered again by the replacement
    assert answers(records) == answers(read_records(local_run[1]))
    assert summary.done == len(records) and summary.skipped == 0


def test_ctrl_c_stops_cleanly_and_the_rerun_completes(archive, tmp_path):
    out = tmp_path / "interrupted.jsonl"
    args = ["batch", archive, "--demo", "-i", QUESTIONS[0], "-i", QUESTIONS[1], "-o", out, "--workers", "2",
            "--threads", "1"]
    process = subprocess.Popen([sys.executable, "-m", "edgevid", *map(str, args)], stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while (not out.exists() or not out.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGINT)                  # what Ctrl-C in a terminal sends
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: done ")
    psutil.wait_procs(workers, timeout=10)
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    partial_records = read_records(out)
    assert max(pairs(partial_records).values()) == 1
    result = edgevid_cli(*args)
    assert result.returncode == 0, result.stderr
    check_complete(read_records(out), archive)
    assert f"skipped {len(partial_records)} " in result.stderr


def test_partial_last_line_of_a_killed_run_is_ignored(archive, tmp_path):
    out = tmp_path / "r.jsonl"
    source = archive / "cam1/a.mp4"
    run_batch([source], QUESTIONS[:1], out, demo=True, workers=1, progress=False)
    with open(out, "a") as f:
        f.write('{"source": "x", "question": "half a li')               # the process died mid-write
    summary = run_batch([source], QUESTIONS, out, demo=True, workers=1, progress=False)
    assert (summary.done, summary.skipped) == (1, 1)
    lines = out.read_text().splitlines()
    assert lines[1].startswith('{"source": "x"') and json.loads(lines[2])["question"] == QUESTIONS[1]


def test_listing_by_content_globs_lists_and_missing_files(archive, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [s.name for s in iter_sources([str(archive)])]
    assert set(names) == expected_sources(archive)                 # notes.txt skipped, no-extension found
    listed = tmp_path / "list.txt"
    listed.write_text(f"# cameras\n{archive / 'cam1'}\n\n{archive}/cam2/*.mp4\nmissing.mp4\n")
    names = [s.name for s in iter_sources([f"@{listed}"])]
    assert names == [str(archive / "cam1/a.mp4"), str(archive / "cam1/b.webm"), str(archive / "cam2/c.mp4"),
                     "missing.mp4"]
    with pytest.raises(BatchError, match="cannot read the source list"):
        list(iter_sources(["@nope.txt"]))
    summary = run_batch(["missing.mp4"], QUESTIONS, tmp_path / "m.jsonl", demo=True, workers=1, progress=False)
    records = read_records(tmp_path / "m.jsonl")
    assert summary.failed == 2 and all("no such file" in r["error"] for r in records)
    again = run_batch(["missing.mp4"], QUESTIONS, tmp_path / "m.jsonl", demo=True, workers=1, progress=False)
    assert (again.done, again.skipped) == (0, 2)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_url_sources_follow_the_source_policy_flags(archive, tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(archive)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/cam1/a.mp4"
        refused = edgevid_cli("batch", url, "--demo", "-i", QUESTIONS[0], "-o", tmp_path / "refused.jsonl")
        assert refused.returncode == 0, refused.stderr
        [record] = read_records(tmp_path / "refused.jsonl")
        assert record["text"] is None and "addresses are refused" in record["error"], record
        allowed = edgevid_cli("batch", url, "--demo", "-i", QUESTIONS[0], "-o", tmp_path / "ok.jsonl",
                              "--allow-private-urls", "--max-media-bytes", 10**6)
        assert allowed.returncode == 0, allowed.stderr
        [record] = read_records(tmp_path / "ok.jsonl")
        local = run_batch([archive / "cam1/a.mp4"], QUESTIONS[:1], tmp_path / "local.jsonl", demo=True, workers=1,
                          progress=False)
        assert local.done == 1
        assert record["text"] == read_records(tmp_path / "local.jsonl")[0]["text"] and record["path"] is None
        tiny = edgevid_cli("batch", url, "--demo", "-i", QUESTIONS[0], "-o", tmp_path / "tiny.jsonl",
                           "--allow-private-urls", "--max-media-bytes", 100)
        assert "limit" in read_records(tmp_path / "tiny.jsonl")[0]["error"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fatal_errors_are_one_line_and_exit_1(archive, tmp_path):
    no_model = edgevid_cli("batch", archive, "-m", tmp_path / "nope", "-i", "q", "-o", tmp_path / "r.jsonl")
    assert no_model.returncode == 1 and no_model.stderr.startswith("error: ") and "Traceback" not in no_model.stderr
    hint = 'error: --ray needs Ray, which is not installed here: pip install "edgevid[ray]"'
    for args in (["batch", archive, "--demo", "-i", "q", "-o", tmp_path / "r.jsonl", "--ray"],
                 ["batch", "--ray", archive, "--demo", "-i", "q", "-o", tmp_path / "r.jsonl"]):   # not an address
        no_ray = subprocess.run(
            [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from edgevid.cli import main; main()",
             *map(str, args)], capture_output=True, text=True, timeout=300)
        assert no_ray.returncode == 1 and no_ray.stderr.strip() == hint, no_ray.stderr
    assert not (tmp_path / "r.jsonl").exists()
    no_question = edgevid_cli("batch", archive, "--demo", "-o", tmp_path / "r.jsonl")
    assert no_question.returncode == 2 and "-i" in no_question.stderr


def test_a_stuck_answer_is_stopped_recorded_and_the_run_goes_on(archive, tmp_path):
    fifo = tmp_path / "pipe.mp4"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)                                 # reading it would block forever
    else:
        fifo.mkdir()                                    # Windows: no FIFOs; a folder named like a clip
    with trickle_server() as stuck:
        good = archive / "cam1/a.mp4"
        result = edgevid_cli("batch", stuck, good, fifo, "--demo", "-i", QUESTIONS[0], "-o", tmp_path / "r.jsonl",
                             "--allow-private-urls", "--answer-timeout", 4, "--workers", 1)
        assert result.returncode == 0, result.stderr
        records = {r["source"]: r for r in read_records(tmp_path / "r.jsonl")}
        assert "no answer within 4 s" in records[stuck]["error"]
        assert records[str(good)]["error"] is None and records[str(good)]["text"]
        assert "not a regular file" in records[str(fifo)]["error"]
        again = edgevid_cli("batch", stuck, good, fifo, "--demo", "-i", QUESTIONS[0], "-o", tmp_path / "r.jsonl",
                            "--allow-private-urls", "--answer-timeout", 4, "--workers", 1)
        assert again.returncode == 0 and "done 0, failed 0, skipped 3 " in again.stderr, again.stderr


def test_a_long_listing_is_walked_lazily(tmp_path):
    """Listing and resume planning hold one item at a time: what the backends pull from as they go."""
    import itertools
    import tracemalloc

    from edgevid.batch.job import BatchJob
    from edgevid.batch.progress import BatchSummary, Progress
    from edgevid.batch.results import ResultsFile
    from edgevid.batch.run import batch_url_policy, plan
    from edgevid.batch.sink import Sink
    from edgevid.model.generate import GenerationOptions

    listed = tmp_path / "big.txt"
    count = 30_000                   # as many items held at once would take ~15 MB
    listed.write_text("".join(f"{tmp_path}/cam{i % 40}/clip{i:06d}.mp4\n" for i in range(count)))
    job = BatchJob(model_dir="m", model_id="x", model_name="m", options=GenerationOptions(),
                   url_policy=batch_url_policy())
    with ResultsFile.open(tmp_path / "r.jsonl") as results:
        sink = Sink(results, Progress(2, enabled=False), job, BatchSummary())
        tracemalloc.start()
        items = plan(iter_sources([f"@{listed}"]), QUESTIONS, results, job, sink)
        first = list(itertools.islice(items, 10))
        early_peak = tracemalloc.get_traced_memory()[1]
        rest = sum(1 for _ in items)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(first) + rest == count and first[0].questions == QUESTIONS
    assert early_peak < 2**20 and peak < 2**20, (early_peak, peak)


def test_python_api_from_a_script_without_a_main_guard_and_from_stdin(archive, tmp_path):
    """Workers never re-run the caller's script (spawn would, by default)."""
    script = tmp_path / "sweep.py"
    script.write_text(
        "from edgevid import run_batch\n"
        f"summary = run_batch([{str(archive / 'cam1/a.mp4')!r}], ['Describe the video.'], {str(tmp_path / 'r.jsonl')!r}, "
        "demo=True, workers=1, progress=False)\n"
        "print('ran', summary.done, summary.skipped)\n")
    from_file = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert from_file.returncode == 0 and from_file.stdout == "ran 1 0\n", from_file.stderr
    from_stdin = subprocess.run([sys.executable, "-"], input=script.read_text(), capture_output=True, text=True,
                                timeout=300)
    assert from_stdin.returncode == 0 and from_stdin.stdout == "ran 0 1\n", from_stdin.stderr
