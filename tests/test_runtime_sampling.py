"""Samplers, GenerationOptions validation and the stop-string / finish-reason logic of stream_generate."""
import numpy as np
import pytest

from edgevid.errors import ContextLengthError, InvalidRequestError
from edgevid.model.generate import GenerationOptions, check_context, generate, prefill_bounds, stream_generate
from edgevid.model.sampling import keep_top_k, keep_top_p, make_sampler


def test_greedy_is_argmax_first_on_ties():
    logits = np.array([0.1, 3.0, 3.0, -1.0], dtype=np.float32)
    assert make_sampler(0.0)(logits) == 1


def test_same_seed_same_tokens_other_seed_other_tokens():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=500).astype(np.float32) for _ in range(40)]
    a = make_sampler(1.0, seed=7)
    b = make_sampler(1.0, seed=7)
    c = make_sampler(1.0, seed=8)
    ta, tb, tc = [list(map(s, steps)) for s in (a, b, c)]
    assert ta == tb
    assert ta != tc


def test_top_k_keeps_k_best():
    logits = np.array([1.0, 5.0, 3.0, 4.0, 2.0])
    kept = np.isfinite(keep_top_k(logits, 2))
    assert kept.tolist() == [False, True, False, True, False]
    sampler = make_sampler(1.0, top_k=2, seed=0)
    assert {sampler(logits) for _ in range(200)} == {1, 3}


def test_top_p_keeps_smallest_nucleus_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    assert np.isfinite(keep_top_p(logits, 0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(keep_top_p(logits, 0.5)).tolist() == [True, False, False, False]
    assert np.isfinite(keep_top_p(logits, 0.01)).tolist() == [True, False, False, False]
    sampler = make_sampler(1.0, top_p=0.75, seed=1)
    drawn = [sampler(logits) for _ in range(400)]
    assert set(drawn) == {0, 1}
    assert 0.5 < drawn.count(0) / len(drawn) < 0.75      # renormalised 0.5 / 0.8 = 0.625


def test_low_temperature_concentrates_on_the_best():
    logits = np.array([1.0, 1.5, 0.5])
    sampler = make_sampler(0.05, seed=3)
    assert all(sampler(logits) == 1 for _ in range(50))


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": "abc"}, "seed"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": 5000}, "num_frames"),
    ],
)
def test_options_validation_names_the_parameter(kwargs, param):
    with pytest.raises(InvalidRequestError) as info:
        GenerationOptions(**kwargs)
    assert info.value.param == param
    assert param in str(info.value)


def test_options_normalise():
    options = GenerationOptions(max_tokens=4.0, temperature=1, stop="END", seed=-1)
    assert options.max_tokens == 4 and isinstance(options.temperature, float)
    assert options.stop == ("END",)
    assert options.seed == 2**64 - 1


def test_context_check():
    check_context(100, 28, 128)
    with pytest.raises(ContextLengthError, match="129 in all.*context is 128"):
        check_context(100, 29, 128)


def test_stop_string_split_over_tokens_is_held_back_then_cut():
    table = {20: "hello </", 21: "en", 22: "d> tail", 23: "b>"}
    pieces = list(stream_generate(iter([20, 21, 22]), DictDetokenizer(table), GenerationOptions(stop="</end>"), [1]))
    assert [p.text for p in pieces] == ["hello ", "", ""]
    assert pieces[-1].finish_reason == "stop"
    pieces = list(stream_generate(iter([20, 23]), DictDetokenizer(table), GenerationOptions(stop="</end>", max_tokens=2), [1]))
    assert "".join(p.text for p in pieces) == "hello </b>" and pieces[-1].finish_reason == "length"


class DictDetokenizer:
    """Maps ids to fixed strings (stands in for the tokenizer, not for inference)."""

    def __init__(self, table):
        self.table = table

    def add(self, token_id):
        return self.table.get(token_id, "")

    def flush(self):
        return ""


TABLE = {10: "Hel", 11: "lo", 12: " wor", 13: "ld", 14: "!", 15: " STOP", 16: " more"}


def test_eos_finishes_with_stop_and_keeps_the_id():
    result = generate(iter([10, 11, 1, 12]), DictDetokenizer(TABLE), GenerationOptions(max_tokens=10), eos_ids=[1, 106])
    assert result.text == "Hello" and result.token_ids == (10, 11, 1) and result.finish_reason == "stop"


def test_max_tokens_finishes_with_length():
    pieces = list(stream_generate(iter([10, 11, 12, 13, 14]), DictDetokenizer(TABLE), GenerationOptions(max_tokens=3), [1]))
    assert [p.finish_reason for p in pieces] == [None, None, "length"]
    assert "".join(p.text for p in pieces) == "Hello wor"


def test_stop_string_truncates_text_and_stops_steps():
    consumed = []

    def steps():
        for t in [10, 11, 15, 16, 16]:
            consumed.append(t)
            yield t

    result = generate(steps(), DictDetokenizer(TABLE), GenerationOptions(stop=("STOP",)), [1])
    assert result.text == "Hello " and result.finish_reason == "stop"
    assert consumed == [10, 11, 15]


def test_prefill_chunks_cover_the_prompt_and_never_split_a_vision_block():
    assert prefill_bounds(10, 0) == [(0, 10)]
    assert prefill_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    blocks = np.zeros(12, bool)
    blocks[3:7] = True                     # one frame's soft tokens
    assert prefill_bounds(12, 4, blocks) == [(0, 3), (3, 7), (7, 11), (11, 12)]
    assert prefill_bounds(12, 2, blocks) == [(0, 2), (2, 3), (3, 7), (7, 9), (9, 11), (11, 12)]
