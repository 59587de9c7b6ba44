"""``edgevid batch --ray`` on a local Ray instance with the bundled demo model: the issue's command line
(run, rerun to resume, --ray: same answers), actors killed mid-run, and the model shipped through the
object store. Ray is in the test extra; these tests run wherever it installs."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from batch_fixtures import (QUESTIONS, answers, check_complete, edgevid_cli, make_archive, read_records,  # noqa: E402
                            trickle_server)
from edgevid.batch import batch_url_policy, run_batch  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("batch-ray") / "archive")


@pytest.fixture(scope="module")
def local_answers(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    run_batch([archive], QUESTIONS, out, demo=True, workers=1, progress=False)
    return answers(read_records(out))


def test_cli_run_resume_then_ray_gives_the_same_answers(archive, tmp_path, local_answers):
    """Exactly the hold-out check: the command, the same command again, then with --ray. (First in the
    module: its Ray instance is the CLI's own, started and stopped by the command.)"""
    out = tmp_path / "results.jsonl"
    args = ["batch", archive, "--demo", "-i", QUESTIONS[0], "-i", QUESTIONS[1], "-o", out]
    first = edgevid_cli(*args)
    assert first.returncode == 0, first.stderr
    check_complete(read_records(out), archive)
    before = out.read_bytes()
    resumed = edgevid_cli(*args)
    assert resumed.returncode == 0 and out.read_bytes() == before, resumed.stderr
    ray_out = tmp_path / "ray.jsonl"
    on_ray = edgevid_cli(*args[:-1], ray_out, "--ray")
    assert on_ray.returncode == 0, on_ray.stderr
    records = read_records(ray_out)
    check_complete(records, archive)
    assert answers(records) == answers(read_records(out)) == local_answers
    assert all(r["worker"].startswith("ray-") for r in records)
    assert "ray worker" in on_ray.stderr.strip().splitlines()[-1]
    again = edgevid_cli(*args, "--ray")                          # the same file with --ray: all resumed
    assert again.returncode == 0 and out.read_bytes() == before, again.stderr


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def test_killed_actor_items_are_redone_once(ray_instance, archive, tmp_path, local_answers):
    out = tmp_path / "killed.jsonl"
    killed = []

    def kill_first_actor(record):
        if not killed and record["error"] is None:
            name = "edgevid-batch-" + record["worker"].split("@")[0][len("ray-"):]
            ray.kill(ray.get_actor(name))             # while it answers the next item it was given
            killed.append(name)

    summary = run_batch([archive], QUESTIONS, out, demo=True, ray=True, workers=2, threads=1, progress=False,
                        on_record=kill_first_actor)
    records = read_records(out)
    check_complete(records, archive)
    assert answers(records) == local_answers
    assert killed and any(r["worker"].split("@")[0].endswith(".1") for r in records)   # a replacement worked
    assert summary.done == len(records) and summary.backend == "ray" and summary.workers == 2
    assert ray.is_initialized()                      # the caller's instance is left running


def test_model_shipped_through_the_object_store(ray_instance, archive, tmp_path, local_answers):
    import shutil

    from edgevid.batch.job import model_identity
    from edgevid.batch.local import bundled_demo_dir

    node_copy = Path(tempfile.gettempdir()) / "edgevid-ray-models" / model_identity(bundled_demo_dir(), "fp32")
    shutil.rmtree(node_copy, ignore_errors=True)
    out = tmp_path / "shipped.jsonl"
    sources = [archive / "cam1/a.mp4", archive / "broken/text.mp4"]
    summary = run_batch(sources, QUESTIONS, out, demo=True, ray=True, ship_model=True, workers=1, threads=1,
                        progress=False)
    assert (summary.done, summary.failed) == (4, 2)
    records = read_records(out)
    assert all(answers(records)[k] == local_answers[k] for k in answers(records))
    assert (node_copy / ".complete").is_file() and (node_copy / "decoder_model_merged.onnx").is_file()
    assert not list(node_copy.glob("*_q4.onnx"))          # only the precision asked for travels


def test_an_actor_stuck_on_one_answer_is_stopped_and_its_queue_redone(ray_instance, archive, tmp_path, local_answers):
    good = archive / "cam1/a.mp4"
    with trickle_server() as stuck:
        summary = run_batch([stuck, good], QUESTIONS[:1], tmp_path / "r.jsonl", demo=True, ray=True, workers=1,
                            threads=1, progress=False, answer_timeout=4,
                            url_policy=batch_url_policy(allow_private_urls=True))
    records = {r["source"]: r for r in read_records(tmp_path / "r.jsonl")}
    assert "no answer within 4 s" in records[stuck]["error"]
    assert records[str(good)]["text"] == local_answers[(str(good), QUESTIONS[0])][0]   # queued behind it: redone
    assert (summary.done, summary.failed) == (2, 1)
