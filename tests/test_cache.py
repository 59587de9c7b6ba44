"""The media reuse cache: content keys, LRU by bytes, thread safety, and never serving another video."""
from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from edgevid.media import open_source, sample_video
from edgevid.model.cache import (MediaCache, encoder_identity, features_key, frames_key,
                                 vision_input_key)
from edgevid.model.preprocess import preprocess_video
from clips import frame_id, frame_image, write_clip


def write_frames(path, ids, fps=12, size=(160, 120)):
    """A real H.264 clip whose frame k shows ``frame_id`` ``ids[k]``."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i, index in enumerate(ids):
            frame = av.VideoFrame.from_ndarray(frame_image(index, size), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cached_sample(cache, path, num_frames, mode="accurate"):
    with open_source(str(path)) as media:
        key = frames_key(media.sha256, num_frames=num_frames, mode=mode)
        return cache.frames(key, lambda: sample_video(media, num_frames, mode))


def array(n_bytes, fill=0):
    return np.full(n_bytes, fill, dtype=np.uint8)


# ---- the store ----------------------------------------------------------------------------------------
def test_hit_after_miss_computes_once_and_counts():
    cache, calls = MediaCache(10_000), []
    compute = lambda: calls.append(1) or array(100, 7)
    first, hit1 = cache.features("k", compute)
    second, hit2 = cache.features("k", compute)
    assert (hit1, hit2) == (False, True) and second is first and len(calls) == 1
    other, hit3 = cache.frames("k", lambda: array(100, 9))        # frames and features never share a slot
    assert not hit3 and other[0] == 9
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (1, 2, 2, 200)


def test_lru_by_bytes_evicts_the_least_recently_used():
    cache = MediaCache(3_000)
    for key in "abc":
        cache.features(key, lambda: array(1_000))
    cache.features("a", lambda: pytest.fail("a is cached"))       # a is now the most recent
    cache.features("d", lambda: array(1_000))                      # evicts b
    assert ("features", "b") not in cache and ("features", "a") in cache and ("features", "d") in cache
    assert cache.stats().bytes == 3_000 and cache.stats().evictions == 1
    cache.features("big", lambda: array(5_000))                    # larger than the cache: not stored
    assert ("features", "big") not in cache and cache.stats().bytes == 3_000


def test_cached_arrays_are_read_only():
    cache = MediaCache()
    value, _ = cache.features("k", lambda: (array(10), array(10)))
    with pytest.raises(ValueError):
        value[0][0] = 1


def test_a_failed_compute_is_not_cached_and_does_not_block_others():
    cache = MediaCache()

    def boom():
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError):
        cache.frames("k", boom)
    value, hit = cache.frames("k", lambda: array(4, 1))
    assert not hit and value[0] == 1


def test_concurrent_requests_for_one_key_compute_it_once():
    cache, calls, results = MediaCache(), [], []

    def slow():
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return array(64, 5)

    threads = [threading.Thread(target=lambda: results.append(cache.features("same", slow))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 6
    assert sum(hit for _, hit in results) == 5 and all(v is results[0][0] for v, _ in results)


def test_different_keys_compute_in_parallel():
    cache = MediaCache()
    started = time.monotonic()
    threads = [threading.Thread(target=cache.features, args=(f"k{i}", lambda: time.sleep(0.4) or array(8)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 1.2 and len(cache) == 4


# ---- keys ---------------------------------------------------------------------------------------------
def test_keys_change_with_everything_that_changes_the_value(tmp_path):
    sha = "ab" * 32
    keys = {frames_key(sha, num_frames=32, mode="accurate"), frames_key(sha, num_frames=16, mode="accurate"),
            frames_key(sha, num_frames=32, mode="fast"), frames_key("cd" * 32, num_frames=32, mode="accurate")}
    assert len(keys) == 4
    graph = tmp_path / "vision_encoder.onnx"
    graph.write_bytes(b"graph one")
    fp32, q4 = encoder_identity(graph, "fp32"), encoder_identity(graph, "q4")
    assert fp32 != q4 and encoder_identity(graph, "fp32") == fp32
    graph.write_bytes(b"graph two, re-exported")
    assert encoder_identity(graph, "fp32") != fp32
    assert features_key("x", encoder=fp32) != features_key("x", encoder=q4) != features_key("y", encoder=q4)
    with pytest.raises(ValueError):
        frames_key("", num_frames=4, mode="accurate")


# ---- real media ---------------------------------------------------------------------------------------
def test_the_same_clip_is_decoded_once(tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=24, fps=12)
    copy = tmp_path / "copy-of-a.mp4"
    copy.write_bytes(clip.read_bytes())
    cache = MediaCache()
    first, hit1 = cached_sample(cache, clip, 4)
    second, hit2 = cached_sample(cache, copy, 4)                 # same bytes under another name
    assert (hit1, hit2) == (False, True) and second is first
    assert [frame_id(f) for f in second.frames] == [0, 6, 12, 18]
    _, hit3 = cached_sample(cache, clip, 8)                       # other sampling: another entry
    assert not hit3


def test_clips_that_differ_in_one_frame_never_share_an_entry(tmp_path):
    ids = list(range(24))
    a = write_frames(tmp_path / "a.mp4", ids)
    b = write_frames(tmp_path / "b.mp4", ids[:12] + [500] + ids[13:])      # only frame 12 differs
    cache = MediaCache()
    video_a, _ = cached_sample(cache, a, 4)
    video_b, hit = cached_sample(cache, b, 4)
    assert not hit
    assert [frame_id(f) for f in video_a.frames] == [0, 6, 12, 18]
    assert [frame_id(f) for f in video_b.frames] == [0, 6, 500, 18]
    # even a sampling that skips the differing frame gets its own entry (the key is the bytes)
    three_a, _ = cached_sample(cache, a, 3)
    three_b, hit = cached_sample(cache, b, 3)
    assert not hit and three_b is not three_a
    # and the encoder input of the two 4-frame samples differs, so the features keys differ too
    va, vb = (preprocess_video(v.frames, 70, 16, 3) for v in (video_a, video_b))
    assert vision_input_key(va) != vision_input_key(vb)
    assert vision_input_key(va) == vision_input_key(preprocess_video(video_a.frames, 70, 16, 3))


def test_a_file_rewritten_under_the_same_name_is_a_miss(tmp_path):
    path = tmp_path / "camera.mp4"
    cache = MediaCache()
    write_clip(path, frames=24, fps=12)
    before, _ = cached_sample(cache, path, 4)
    write_clip(path, frames=24, fps=12, start=100)                # new content, same name
    after, hit = cached_sample(cache, path, 4)
    assert not hit
    assert [frame_id(f) for f in before.frames] == [0, 6, 12, 18]
    assert [frame_id(f) for f in after.frames] == [100, 106, 112, 118]


# ---- through the pipeline -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipelines(demo_model):
    from edgevid.pipeline import Pipeline

    model = demo_model
    # the KV prefix cache is off here: it would skip the vision encoder these tests watch (tested in
    # test_prefix_cache.py, and together with this cache below)
    return (Pipeline.load(model, device="cpu", prefix_cache_bytes=0),
            Pipeline.load(model, device="cpu", cache_bytes=0, prefix_cache_bytes=0))


def ask(pipeline, video, *, answer=None):
    from edgevid.model.generate import GenerationOptions

    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(video)}},
                                             {"type": "text", "text": "What happens?"}]}]
    if answer is not None:
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
    return pipeline.chat(messages, GenerationOptions(max_tokens=6, num_frames=4))


def test_the_second_turn_reuses_frames_and_features_and_answers_the_same(pipelines, tmp_path):
    cached, plain = pipelines
    clip = write_clip(tmp_path / "turns.mp4", frames=24, fps=12, size=(96, 64))
    first = ask(cached, clip)
    assert (first.timings["frames_cached"], first.timings["features_cached"]) == (0, 0)
    second = ask(cached, clip, answer=first.text)
    assert (second.timings["frames_cached"], second.timings["features_cached"]) == (1, 1)
    assert second.timings["cached_tokens"] == first.media[0]["soft_tokens"] > 0
    reference = ask(plain, clip, answer=first.text)                       # no cache at all
    assert second.token_ids == reference.token_ids and second.text == reference.text
    assert "frames_cached" not in reference.timings or reference.timings["frames_cached"] == 0


def test_another_client_sending_the_same_bytes_hits(pipelines, tmp_path):
    cached, _ = pipelines
    clip = write_clip(tmp_path / "a.mp4", frames=24, fps=12, size=(96, 64), start=40)
    ask(cached, clip)
    data_url = "data:video/mp4;base64," + __import__("base64").b64encode(clip.read_bytes()).decode()
    again = ask(cached, data_url)
    assert (again.timings["frames_cached"], again.timings["features_cached"]) == (1, 1)


def test_a_clip_one_frame_different_is_decoded_and_encoded_afresh(pipelines, tmp_path):
    cached, plain = pipelines
    ids = list(range(200, 224))
    a = write_frames(tmp_path / "a.mp4", ids, size=(96, 64))
    b = write_frames(tmp_path / "b.mp4", ids[:12] + [999] + ids[13:], size=(96, 64))   # sampled frame 12 differs
    ask(cached, a)
    result = ask(cached, b)
    assert (result.timings["frames_cached"], result.timings["features_cached"]) == (0, 0)
    assert result.token_ids == ask(plain, b).token_ids


def test_a_rewritten_file_under_the_same_name_is_not_served_from_the_cache(pipelines, tmp_path):
    cached, plain = pipelines
    path = tmp_path / "latest.mp4"
    write_clip(path, frames=24, fps=12, size=(96, 64), start=300)
    ask(cached, path)
    write_clip(path, frames=24, fps=12, size=(96, 64), start=400, texture=True)
    result = ask(cached, path)
    assert (result.timings["frames_cached"], result.timings["features_cached"]) == (0, 0)
    assert result.token_ids == ask(plain, path).token_ids


def test_a_sampled_video_passed_twice_reuses_its_features(pipelines, tmp_path):
    from edgevid.model.generate import GenerationOptions

    cached, _ = pipelines
    video = sample_video(str(write_clip(tmp_path / "s.mp4", frames=24, fps=12, size=(96, 64), start=600)), 4)
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "Hm?"}]}]
    first = cached.chat(messages, GenerationOptions(max_tokens=4))
    second = cached.chat(messages, GenerationOptions(max_tokens=4))
    assert (first.timings["features_cached"], second.timings["features_cached"]) == (0, 1)
    assert second.token_ids == first.token_ids


def test_with_the_prefix_cache_the_second_turn_skips_vision_and_the_prefix(demo_model, tmp_path):
    from edgevid.pipeline import Pipeline

    both = Pipeline.load(demo_model, device="cpu")
    clip = write_clip(tmp_path / "turns.mp4", frames=24, fps=12, size=(96, 64))
    first = ask(both, clip)
    second = ask(both, clip, answer=first.text)
    assert second.timings["frames_cached"] == 1
    assert second.timings["features_cached"] == 0            # the video lies wholly in the reused prefix
    assert second.timings["prefix_cached_tokens"] > first.media[0]["soft_tokens"]
    plain = Pipeline.load(demo_model, device="cpu", cache_bytes=0, prefix_cache_bytes=0)
    assert second.token_ids == ask(plain, clip, answer=first.text).token_ids
