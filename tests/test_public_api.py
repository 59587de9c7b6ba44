"""The public face: everything a user needs is importable from ``edgevid``, and one call answers a
question about a video with the bundled demo model (real graphs, the real sample clip)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import edgevid
from edgevid import DEMO_CLIP, GenerationOptions, Pipeline, SourcePolicy, sample_video
from edgevid.messages import image_part, user_message, video_part


@pytest.fixture(scope="module")
def demo():
    return Pipeline.demo(device="cpu")


def test_every_public_name_resolves():
    for name in edgevid.__all__:
        assert getattr(edgevid, name) is not None, name
    with pytest.raises(AttributeError):
        edgevid.no_such_name   # noqa: B018


def test_import_edgevid_loads_no_model_runtime():
    code = "import sys, edgevid; print(sorted(m for m in ('onnxruntime', 'cv2', 'tokenizers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ask_answers_the_demo_clip(demo):
    answer = demo.ask("What happens in this video?", videos=[DEMO_CLIP])
    assert answer == edgevid.bundled_demo.DEMO_ANSWER == "a red circle moves from left to right."
    assert isinstance(answer, str) and answer.text == str(answer)
    assert answer.result.finish_reason == answer.finish_reason == "stop"
    assert answer.prompt_tokens > 4 * 60 and len(answer.token_ids) == answer.completion_tokens


def test_ask_takes_sampled_videos_and_generation_fields(demo):
    video = sample_video(DEMO_CLIP, num_frames=4, policy=SourcePolicy.permissive())
    assert demo.ask("What happens in this video?", videos=[video]) == "a red circle moves from left to right."
    short = demo.ask("What happens in this video?", videos=[str(DEMO_CLIP)], max_tokens=2)
    assert short.completion_tokens == 2 and short.finish_reason == "length"
    same = demo.ask("What happens in this video?", videos=[DEMO_CLIP], options=GenerationOptions(max_tokens=2))
    assert same == short


def test_ask_refuses_a_bare_string_and_unknown_options(demo):
    with pytest.raises(edgevid.InvalidRequestError, match="list of sources"):
        demo.ask("What happens?", videos=str(DEMO_CLIP))
    with pytest.raises(edgevid.InvalidRequestError, match="unknown generation option"):
        demo.ask("What happens?", videos=[DEMO_CLIP], beam_width=4)
    with pytest.raises(edgevid.MediaError, match="no/such.mp4"):
        demo.ask("What happens?", videos=["/no/such.mp4"])


def test_message_builders():
    assert user_message("hi", videos=["a.mp4"], images=[DEMO_CLIP.parent / "x.png"]) == {
        "role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "a.mp4"}},
            {"type": "image_url", "image_url": {"url": str(DEMO_CLIP.parent / "x.png")}},
            {"type": "text", "text": "hi"}]}
    marker = object()
    assert video_part(marker) == {"type": "video", "video": marker}
    assert image_part(marker) == {"type": "image", "image": marker}
