"""``edgevid run`` end to end on a real exported tiny model: one-shot streaming, --json, interactive chat
with paths typed in the prompt, /clear and /exit, and one-line errors with a non-zero exit."""
from __future__ import annotations

import json
import os

import onnxruntime as ort
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from edgevid.cli import main  # noqa: E402
from edgevid.commands.run import split_media  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(e2b_model):
    return e2b_model[1]


@pytest.fixture(scope="module")
def clip(test_clip):
    return test_clip


def run(*args, input=None):
    return CliRunner().invoke(main, ["run", *map(str, args)], input=input)


def test_one_shot_json(model_dir, clip):
    result = run("-m", model_dir, "--video", clip, "-i", "What happens?", "--num-frames", 4, "--max-tokens", 5,
                 "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"text", "token_ids", "prompt_tokens", "completion_tokens", "finish_reason", "timings"}
    assert data["completion_tokens"] == len(data["token_ids"]) == 5
    assert data["finish_reason"] == "length"
    assert data["prompt_tokens"] > 4 * 63
    assert data["timings"]["ttft_s"] > 0


def test_one_shot_streams_answer_and_status(model_dir, clip):
    as_json = json.loads(run("-m", model_dir, "--video", clip, "-i", "What happens?", "--num-frames", 4,
                             "--max-tokens", 5, "--json").stdout)
    result = run("-m", model_dir, "--video", clip, "-i", "What happens?", "--num-frames", 4, "--max-tokens", 5)
    assert result.exit_code == 0, result.output
    assert result.stdout == as_json["text"] + "\n"            # same greedy answer, streamed
    assert "4 frames from" in result.stderr and f"prompt {as_json['prompt_tokens']} tokens" in result.stderr
    assert "first token" in result.stderr and "tokens/s" in result.stderr


def test_interactive_attaches_typed_paths_keeps_history_and_clears(model_dir, clip):
    lines = f"what is in {clip} ?\nand then?\n/clear\nhello\n/exit\n"
    result = run("-m", model_dir, "--num-frames", 2, "--max-tokens", 3, input=lines)
    assert result.exit_code == 0, result.output
    statuses = [line for line in result.stderr.splitlines() if line.startswith("[") and "prompt" in line]
    assert len(statuses) == 3
    prompts = [int(s.split("prompt ")[1].split(" ")[0]) for s in statuses]
    assert "2 frames from" in statuses[0] and "frames" not in statuses[2]
    assert prompts[1] > prompts[0] > prompts[2]              # history kept, then cleared
    assert "[conversation cleared]" in result.stderr


def test_split_media_finds_paths_and_urls(clip, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"not decoded here")
    typed = split_media(f'compare {clip} and "{image}" with https://example.com/a.webm please')
    assert typed.text == "compare and with please" and typed.missing == []
    assert [m["type"] for m in typed.media] == ["image_url", "video_url", "video_url"]
    typed = split_media("either/or, 3/4 of it? See /tmp/missing.mp4, ./gone.png and what.mp4")
    assert typed.media == [] and typed.missing == ["/tmp/missing.mp4", "./gone.png", "what.mp4"]
    assert typed.text == "either/or, 3/4 of it? See and"


def status_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[") and "prompt" in line]


def test_chat_says_when_a_typed_path_names_no_file(model_dir, clip):
    result = run("-m", model_dir, "--num-frames", 2, "--max-tokens", 3,
                 input=f"What colour is the circle? /nonexistent/clip.mp4\nWhat is in {clip} ?\n/exit\n")
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if "no such file" in line]
    assert notices == ["[no such file: /nonexistent/clip.mp4 — not attached, question not sent]"]
    statuses = status_lines(result.stderr)
    assert len(statuses) == 1 and "2 frames from clip.mp4 ·" in statuses[0]     # the next question is answered


def test_chat_never_attaches_the_same_media_twice(model_dir, clip):
    relative = os.path.relpath(clip)
    lines = f"What is in {clip} ?\nand {relative} again?\n/exit\n"
    result = run("-m", model_dir, "--video", clip, "--num-frames", 2, "--max-tokens", 3, input=lines)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("[clip.mp4 is already attached]") == 2
    statuses = status_lines(result.stderr)
    assert len(statuses) == 2
    assert [s.count("frames from") for s in statuses] == [1, 1]           # the video is in the prompt once
    assert str(clip.parent) not in result.stderr                           # named briefly


@pytest.mark.parametrize("args, message", [
    (["--temperature", "5", "-i", "x"], "temperature must be between 0.0 and 2.0"),
    (["--top-p", "0", "-i", "x"], "top_p must be"),
    pytest.param(["--device", "cuda", "-i", "x"], "CUDAExecutionProvider", marks=pytest.mark.skipif(
        "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is installed here")),
    (["--precision", "q4", "-i", "x"], "precision 'q4'"),
    (["--demo", "-i", "x"], "either -m MODEL_DIR or --demo"),
    (["--video", "/no/such.mp4", "-i", "x"], "/no/such.mp4"),
    (["--json"], "--json needs a one-shot prompt"),
])
def test_errors_are_one_line_and_exit_1(model_dir, args, message):
    result = run("-m", model_dir, *args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_demo_without_bundled_model_says_how_to_make_one(tmp_path, monkeypatch):
    from edgevid import bundled_demo

    monkeypatch.setattr(bundled_demo, "DEMO_DIR", tmp_path / "no-demo")     # an install without the package data
    result = run("--demo", "-i", "hi")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ships no demo model" in lines[0]
    assert "edgevid export --random-demo --output models/edgevid-demo" in lines[0]


def test_missing_model_folder(tmp_path):
    result = run("-m", tmp_path / "nope", "-i", "hi")
    assert result.exit_code == 1 and "model folder not found" in result.stderr


def test_demo_uses_the_bundled_folder_and_its_sample_clip(model_dir, clip, tmp_path, monkeypatch):
    import shutil

    from edgevid import bundled_demo

    bundled = tmp_path / "demo"
    shutil.copytree(model_dir, bundled)
    shutil.copy(clip, bundled / "sample.mp4")
    monkeypatch.setattr(bundled_demo, "DEMO_DIR", bundled)
    result = run("--demo", "-i", "What happens in this video?", "--max-tokens", 2, "--num-frames", 2)
    assert result.exit_code == 0, result.output
    assert "asking about the bundled clip" in result.stderr and "2 frames from" in result.stderr
