"""Prefix reuse on real exported models: a second question about the same video and a chat's next turn
prefill only their new tokens, with logits identical bit for bit to a pipeline without the prefix cache;
different media behind the same placeholder tokens are never reused; chunk boundaries inside a prefix
(bidirectional vision blocks included); LRU eviction by bytes; the cache off with 0 bytes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from edgevid.model.generate import GenerationOptions, prefill_bounds  # noqa: E402
from edgevid.model.prefix_cache import PrefixCache, PromptSignature  # noqa: E402
from edgevid.model.sessions import SessionConfig  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402
from runtime_models import exported_model, models_root  # noqa: E402

CHUNK = 24          # small prefill chunks, so every prefix holds several chunk boundaries
FRAMES = 4


@pytest.fixture(scope="module", params=["e2b_like", "bidirectional"])
def model_dir(request, tmp_path_factory):
    return exported_model(request.param, models_root(tmp_path_factory))[1]


def load(model_dir, **kw):
    return Pipeline.load(model_dir, device="cpu", session_config=SessionConfig(threads=1, prefill_chunk=CHUNK), **kw)


@pytest.fixture(scope="module")
def cached(model_dir):
    return load(model_dir)


@pytest.fixture(scope="module")
def plain(model_dir):
    return load(model_dir, prefix_cache_bytes=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from clips import write_clip

    root = tmp_path_factory.mktemp("prefix-clips")
    return [write_clip(root / f"clip{i}.mp4", frames=12, fps=12, size=(160, 120), start=40 * i) for i in range(2)]


def ask(clip, text):
    return {"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}},
                                        {"type": "text", "text": text}]}


def run(pipeline, messages):
    """(prompt, last prefill logits, reused tokens, greedy tokens) through the pipeline's own path."""
    options = GenerationOptions(max_tokens=6, num_frames=FRAMES)
    prompt = pipeline.build_prompt(messages, options)
    timings = {}
    logits, _ = pipeline.prefill_prompt(prompt, timings=timings)
    result = pipeline.chat(messages, options)
    return prompt, logits, timings["prefix_cached_tokens"], result


def test_second_question_about_a_video_prefills_only_its_own_tokens(cached, plain, clips):
    cached.prefix_cache.clear()
    first, _, reused, _ = run(cached, [ask(clips[0], "What happens in this video?")])
    assert reused == 0
    second, logits, reused, result = run(cached, [ask(clips[0], "Which colour is the square?")])
    video_end = max(second.media_positions()[0]) + 2                # the last soft token and its <eoi>
    assert reused == video_end and reused < second.num_tokens
    _, expected, _, expected_result = run(plain, [ask(clips[0], "Which colour is the square?")])
    assert np.array_equal(logits, expected)                          # bit for bit
    assert result.token_ids == expected_result.token_ids
    assert result.timings["prefix_cached_tokens"] > 0               # chat() itself took the prefix


def test_same_tokens_other_video_reuses_nothing_past_the_video_start(cached, plain, clips):
    cached.prefix_cache.clear()
    run(cached, [ask(clips[0], "What happens in this video?")])
    prompt, logits, reused, _ = run(cached, [ask(clips[1], "What happens in this video?")])
    plain_prompt, expected, _, _ = run(plain, [ask(clips[1], "What happens in this video?")])
    assert prompt.input_ids.tolist() == plain_prompt.input_ids.tolist()     # placeholders alike, pixels not
    assert reused <= int(prompt.media_positions()[0][0])
    assert np.array_equal(logits, expected)


def test_next_chat_turn_reuses_the_previous_prompt(cached, plain, clips):
    cached.prefix_cache.clear()
    turn1 = [ask(clips[0], "What happens in this video?")]
    prompt1, _, _, answer = run(cached, turn1)
    turn2 = turn1 + [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "And then?"}]
    prompt2, logits, reused, result = run(cached, turn2)
    # the previous prompt up to its model turn start is reused (its generation prompt opens a new chunk)
    model_turn = int(np.flatnonzero(prompt1.input_ids == cached.turn_start_ids[0])[-1])
    assert reused >= model_turn
    _, expected, _, expected_result = run(plain, turn2)
    assert np.array_equal(logits, expected)
    assert result.token_ids == expected_result.token_ids


def test_exact_repeat_takes_the_stored_logits(cached, plain, clips):
    cached.prefix_cache.clear()
    messages = [ask(clips[0], "What happens in this video?")]
    prompt, first, _, _ = run(cached, messages)
    _, again, reused, _ = run(cached, messages)
    assert reused == prompt.num_tokens
    assert np.array_equal(first, again)


def test_reuse_stops_at_chunk_boundaries_shared_by_both_prompts(cached, clips):
    cached.prefix_cache.clear()
    options = GenerationOptions(max_tokens=1, num_frames=FRAMES)
    prompt = cached.build_prompt([ask(clips[0], "What happens in this video?")], options)
    inputs = cached.prompt_inputs(prompt)
    bounds = prefill_bounds(prompt.num_tokens, CHUNK, inputs.blocks, inputs.anchors)
    ends = [b for _, b in bounds]
    assert len(ends) > 4 and all(b - a <= CHUNK or (inputs.blocks is not None and inputs.blocks[a:b].all())
                                 for a, b in bounds)
    if inputs.blocks is not None:                    # bidirectional: no chunk boundary inside a frame's block
        assert not any(inputs.blocks[e - 1] and inputs.blocks[e] for e in ends[:-1])
    cached.prefill_prompt(prompt)
    # a prompt that differs at a position inside a chunk reuses up to the chunk's start, not further
    signature = cached.prompt_signature(prompt)
    cut = (bounds[3][0] + bounds[3][1]) // 2
    ids = prompt.input_ids.copy()
    ids[cut] = ids[cut] + 1 if ids[cut] + 1 not in cached.turn_start_ids else ids[cut] + 2
    other = PromptSignature(ids, signature.media)
    hit = cached.prefix_cache.lookup(other, bounds)
    if cached.decoder.ring_capacity:
        # a ring cache cannot be cut back: its entries are kept at the prompt's anchors (turn starts, media
        # ends), so the reuse stops at the last anchor before the difference
        expected = max(a for a in (0, *inputs.anchors) if a <= bounds[3][0])
        assert (hit.length if hit is not None else 0) == expected
        return
    assert hit is not None and hit.length == bounds[3][0]
    # and the cut cache holds exactly that many positions
    kv = hit.cache("cpu")
    assert kv.length == bounds[3][0]
    assert all(v.shape()[2] == bounds[3][0] for v in kv.values.values())


def test_lru_by_bytes_and_off_switch(model_dir, clips):
    pipeline = load(model_dir)
    run(pipeline, [ask(clips[0], "What happens in this video?")])
    one = pipeline.prefix_cache.stats().bytes
    ring = bool(pipeline.decoder.ring_capacity)        # ring caches keep one entry per anchor, not one per prompt
    entries = len(pipeline.prefix_cache)
    assert one > 0 and (entries > 1 if ring else entries == 1)
    small = load(model_dir, prefix_cache_bytes=int(one * 1.5))
    run(small, [ask(clips[0], "What happens in this video?")])
    run(small, [ask(clips[1], "What happens in this video?")])       # evicts the first
    stats = small.prefix_cache.stats()
    assert stats.evictions >= 1 and stats.bytes <= stats.max_bytes
    assert stats.entries == 1 and stats.evictions == 1 or ring
    _, _, reused, _ = run(small, [ask(clips[0], "Which colour is the square?")])
    assert reused <= int(small.build_prompt([ask(clips[0], "x")],
                                            GenerationOptions(num_frames=FRAMES)).media_positions()[0][0])
    tiny = load(model_dir, prefix_cache_bytes=1024)                   # smaller than one entry: nothing kept
    run(tiny, [ask(clips[0], "What happens in this video?")])
    assert len(tiny.prefix_cache) == 0
    assert load(model_dir, prefix_cache_bytes=0).prefix_cache is None


def test_a_longer_prompt_covers_its_prefix_entry(cached, clips):
    cached.prefix_cache.clear()
    turn1 = [ask(clips[0], "What happens in this video?")]
    prompt1, logits1, _, answer = run(cached, turn1)
    turn2 = turn1 + [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "And then?"}]
    run(cached, turn2)
    entries = len(cached.prefix_cache)
    _, again, reused, _ = run(cached, turn1)                         # the first prompt again, exactly
    assert np.array_equal(again, logits1)
    anchors = len(cached.prefill_anchors(cached.build_prompt(turn2, GenerationOptions(num_frames=FRAMES))))
    assert entries <= (anchors + 2 if cached.decoder.ring_capacity else 2) and reused > 0


def test_cache_rejects_bad_sizes():
    with pytest.raises(ValueError):
        PrefixCache(-1)


def test_prefill_bounds_end_chunks_at_anchors():
    assert prefill_bounds(10, 4, anchors=(3,)) == [(0, 3), (3, 7), (7, 10)]
    assert prefill_bounds(10, 0, anchors=(3, 8)) == [(0, 3), (3, 8), (8, 10)]
    blocks = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert prefill_bounds(10, 4, blocks, anchors=(2, 5)) == [(0, 4), (4, 5), (5, 9), (9, 10)]   # 2 is in a block
    # the cuts before an anchor do not depend on what follows it
    assert prefill_bounds(20, 4, anchors=(6,))[:2] == prefill_bounds(7, 4, anchors=(6,))[:2]


def test_spinning_is_an_explicit_choice(model_dir):
    for spinning, entry in ((True, "1"), (False, "0")):
        pipeline = Pipeline.load(model_dir, device="cpu", threads=2, spinning=spinning, prefix_cache_bytes=0)
        for graph in (pipeline.decoder, pipeline.vision):
            options = graph.session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
            assert options.intra_op_num_threads == 2
        # the token lookup runs on the calling thread: no pool of its own to wake or spin beside the decoder's
        options = pipeline.embed.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == 1


def test_spinning_follows_the_load_average(monkeypatch):
    import os

    from edgevid.model import sessions

    cpus = os.cpu_count() or 1
    monkeypatch.setattr(sessions.os, "getloadavg", lambda: (cpus * 2.0, 0.0, 0.0))
    assert sessions.cores_look_free() is False
    monkeypatch.setattr(sessions.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert sessions.cores_look_free() is True
