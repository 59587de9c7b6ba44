"""Pipeline on a real exported tiny model: streaming, close(), sampling with seeds, stop strings, limits,
image and pre-sampled video parts, the KV cache layout read from the graph, and typed errors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from edgevid.errors import ContextLengthError, InvalidRequestError, MediaError, ModelFolderError  # noqa: E402
from edgevid.media import sample_video  # noqa: E402
from edgevid.model.generate import GenerationOptions, prefill  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(e2b_model):
    return e2b_model[1]


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return Pipeline.load(model_dir, device="cpu", threads=1)


@pytest.fixture(scope="module")
def clip(test_clip):
    return test_clip


def ask(clip, text="What happens?"):
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}},
                                         {"type": "text", "text": text}]}]


def test_facts(pipeline, model_dir):
    assert pipeline.provider == "CPUExecutionProvider"
    assert pipeline.model_name == model_dir.name
    assert pipeline.default_num_frames == 32


def test_stream_knows_prompt_before_iterating_and_close_stops(pipeline, clip):
    stream = pipeline.stream(ask(clip), GenerationOptions(max_tokens=50, num_frames=4))
    assert stream.prompt_tokens == len(stream.prompt.input_ids) > 4 * 63
    assert stream.media == ({"kind": "video", "source": str(clip), "frames": 4, "soft_tokens": 4 * 63},)
    assert stream.completion_tokens == 0
    first, second = next(stream), next(stream)
    assert first.finish_reason is None and second.finish_reason is None
    stream.close()
    assert list(stream) == []
    assert stream.completion_tokens == 2 and stream.finish_reason is None
    assert stream.timings["ttft_s"] > 0 and stream.timings["vision_s"] > 0
    stream.close()                                    # twice is fine


def test_frames_follow_options_else_folder_default(pipeline, clip):
    few = pipeline.stream(ask(clip), GenerationOptions(max_tokens=1, num_frames=2))
    default = pipeline.stream(ask(clip), GenerationOptions(max_tokens=1))
    assert few.media[0]["frames"] == 2
    assert default.media[0]["frames"] == 24           # the clip has 24 frames, fewer than the default 32
    few.close(), default.close()


def test_same_seed_same_tokens(pipeline, clip):
    def sample(seed):
        options = GenerationOptions(max_tokens=12, temperature=1.0, top_k=50, top_p=0.95, seed=seed, num_frames=2)
        return pipeline.chat(ask(clip), options).token_ids

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_greedy_is_reproducible_and_length_limited(pipeline, clip):
    options = GenerationOptions(max_tokens=6, num_frames=2)
    a, b = pipeline.chat(ask(clip), options), pipeline.chat(ask(clip), options)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 6
    assert a.finish_reason == "length" and a.completion_tokens == 6
    assert a.timings["tokens_per_s"] > 0


def test_stop_string_cuts_the_text(pipeline, clip):
    full = pipeline.chat(ask(clip), GenerationOptions(max_tokens=24, num_frames=2))
    assert len(full.text) > 6
    stop = full.text[3:5]
    cut = pipeline.chat(ask(clip), GenerationOptions(max_tokens=24, num_frames=2, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_context_length_error(pipeline, clip):
    with pytest.raises(ContextLengthError, match="context is 4096 tokens"):
        pipeline.stream(ask(clip), GenerationOptions(max_tokens=4000, num_frames=8))


def test_image_and_presampled_video_parts(pipeline, clip):
    video = sample_video(clip, num_frames=3)
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :48] = 200
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "image", "image": image},
                                             {"type": "text", "text": "Compare."}]}]
    result = pipeline.chat(messages, GenerationOptions(max_tokens=3))
    assert [m["kind"] for m in result.media] == ["video", "image"]
    assert result.media[0]["frames"] == 3 and result.completion_tokens == 3


def test_kv_cache_shapes_come_from_the_graph(pipeline, clip):
    # e2b_like: layers 0, 1 (sliding, head dim 16) and 2 (full, head dim 32) own caches; 3 and 4 share 1 and 2
    specs = [(s.layer, s.kv_heads, s.head_dim) for s in pipeline.decoder.cache_specs]
    assert specs == [(0, 2, 16), (1, 2, 16), (2, 2, 32)]
    assert pipeline.decoder.in_place == {"past_key_values.0.key", "past_key_values.0.value"}
    stream = pipeline.stream(ask(clip), GenerationOptions(max_tokens=1, num_frames=2))
    _, cache = prefill(pipeline.decoder, pipeline.prompt_inputs(stream.prompt))
    assert cache.length == stream.prompt_tokens
    key = cache.values["past_key_values.2.key"]
    assert key.device_name().lower() == "cpu"
    assert key.shape() == [1, 2, stream.prompt_tokens, 32]
    buffer = cache.values["past_key_values.0.key"].shape()        # in place: the sliding layer's ring buffer
    assert buffer == [1, 2, pipeline.decoder.ring_capacity["past_key_values.0.key"], 16]
    assert buffer[2] == 16 + 256                                    # the window + the ring's slack


@pytest.mark.parametrize("messages, error", [
    ([{"role": "robot", "content": "hi"}], InvalidRequestError),
    ([], InvalidRequestError),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {}}]}], InvalidRequestError),
    ([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "/no/such/clip.mp4"}}]}], MediaError),
])
def test_bad_requests_raise_typed_errors(pipeline, messages, error):
    with pytest.raises(error):
        pipeline.chat(messages, GenerationOptions(max_tokens=2))


def test_missing_precision_is_a_model_folder_error(model_dir):
    with pytest.raises(ModelFolderError, match="q4"):
        Pipeline.load(model_dir, device="cpu", precision="q4")
