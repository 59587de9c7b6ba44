"""End to end: a real clip -> edgevid.media -> Pipeline (onnxruntime) vs transformers' Gemma 4 generate().

For each decoder shape, a tiny random-weight checkpoint is exported with ``export_model``; the runtime's
prompt ids and greedy token ids must equal ``Gemma4ForConditionalGeneration.generate(do_sample=False)``
fed the same sampled frames and timestamps the way ``Gemma4Processor`` prepares them, and the first
step's logits must agree within 1e-4, whether the prompt is prefilled at once or in chunks.

With ``EDGEVID_OV_FIXTURES=DIR`` the exported folders, the clip and the expected ids/logits are kept in
DIR, for ``tests/test_runtime_openvino.py`` to replay under onnxruntime-openvino in a venv without torch.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgevid.media import sample_video  # noqa: E402
from edgevid.model.generate import GenerationOptions, prefill  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402
from runtime_models import (  # noqa: E402
    QUESTION, exported_model, models_root, transformers_reference, write_expected, write_test_clip,
)

SHAPES = ["e2b_like", "bidirectional", "dense", "moe"]
NUM_FRAMES = 8
MAX_NEW_TOKENS = 24
LOGITS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return models_root(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(root):
    path = root / "clip.mp4"
    return path if path.is_file() else write_test_clip(path)


def video_messages(clip):
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}},
                                         {"type": "text", "text": QUESTION}]}]


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_tokens_match_transformers(shape, root, clip):
    checkpoint, model_dir = exported_model(shape, root)
    video = sample_video(clip, num_frames=NUM_FRAMES)
    assert len(video.frames) == NUM_FRAMES
    expected = transformers_reference(checkpoint, video, MAX_NEW_TOKENS)

    pipeline = Pipeline.load(model_dir, device="cpu")
    options = GenerationOptions(max_tokens=MAX_NEW_TOKENS, num_frames=NUM_FRAMES)
    stream = pipeline.stream(video_messages(clip), options)
    assert stream.prompt.input_ids.tolist() == expected["prompt_ids"]        # same prompt, token for token
    assert stream.media[0]["frames"] == NUM_FRAMES

    inputs = pipeline.prompt_inputs(stream.prompt)
    for chunk in (0, 64, 512):                    # one pass; chunks cut at frame boundaries; the default
        logits, cache = prefill(pipeline.decoder, inputs, chunk)
        diff = float(np.abs(logits - expected["first_logits"]).max())
        assert diff <= LOGITS_TOLERANCE, f"first-step logits differ by {diff} (prefill chunk {chunk})"
        assert cache.length == len(expected["prompt_ids"])

    result = pipeline.chat(video_messages(clip), options)
    eos = set(pipeline.folder.eos_token_ids)
    reference = expected["token_ids"]
    if any(t in eos for t in reference):          # generate() pads after EOS; the runtime stops at it
        reference = reference[: next(i for i, t in enumerate(reference) if t in eos) + 1]
    assert list(result.token_ids) == reference
    assert result.prompt_tokens == len(expected["prompt_ids"])
    assert result.finish_reason == ("stop" if reference[-1] in eos else "length")

    write_expected(model_dir.parent / "expected.json", shape=shape, clip=clip.name, num_frames=NUM_FRAMES,
                   max_tokens=MAX_NEW_TOKENS, question=QUESTION, prompt_ids=expected["prompt_ids"],
                   token_ids=list(result.token_ids), first_logits=expected["first_logits"].tolist(),
                   text=result.text)


@pytest.mark.parametrize("shape", ["e2b_like", "bidirectional"])
def test_kv_written_in_place_equals_a_growing_cache(shape, root, clip):
    """The kernel graph's ring variant with past and present bound to one buffer (sliding layers: a ring of
    16 + 256 slots the kernel evicts from; full layers: grown by doubling past 256 rows) against the portable
    graph fed a growing cache: prefill in 7-token chunks (chunk ends inside and across the 16-slot sliding
    window and the ring's capacity), the same logits after every chunk and the same 40 greedy tokens."""
    from edgevid.model.generate import prefill_bounds
    from edgevid.model.sessions import SessionConfig

    _, model_dir = exported_model(shape, root)
    options = GenerationOptions(max_tokens=40, num_frames=NUM_FRAMES)
    runs = {}
    for in_place in (True, False):
        pipeline = Pipeline.load(model_dir, device="cpu", session_config=SessionConfig(kv_in_place=in_place))
        assert bool(pipeline.decoder.in_place) is in_place
        stream = pipeline.stream(video_messages(clip), options)
        inputs = pipeline.prompt_inputs(stream.prompt)
        stream.close()
        chunk_logits = []
        cache = pipeline.decoder.empty_cache()
        ids = np.asarray(inputs.input_ids, dtype=np.int64).reshape(1, -1)
        e = inputs.embeddings
        for a, b in prefill_bounds(ids.shape[1], 7, inputs.blocks):
            feeds = {"inputs_embeds": e.inputs_embeds[:, a:b], "input_ids": ids[:, a:b]}
            if e.per_layer_inputs is not None:
                feeds["per_layer_inputs"] = e.per_layer_inputs[:, a:b]
            chunk_logits.append(pipeline.decoder.forward(feeds, cache, b - a))
        decoder = pipeline.decoder
        for name in decoder.in_place:
            rows = cache.values[name].shape()[2]
            if name in decoder.ring_capacity:                 # a ring: its fixed window + slack, evicting
                assert rows == decoder.ring_capacity[name] < cache.length
            else:
                assert rows >= 512                            # a full-length buffer that grew past 256 rows
        assert bool(decoder.ring_capacity) is (in_place and shape == "e2b_like")
        result = pipeline.chat(video_messages(clip), options)
        runs[in_place] = (np.stack(chunk_logits), list(result.token_ids))
    np.testing.assert_allclose(runs[True][0], runs[False][0], atol=1e-4, rtol=0)    # the gate's fp32 limit
    assert runs[True][1] == runs[False][1] and len(runs[True][1]) >= 1
