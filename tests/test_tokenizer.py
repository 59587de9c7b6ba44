"""Tokenizer (vs transformers' tokenizer on the demo tokenizer.json), streaming detokenizer, stop strings."""
from __future__ import annotations

import pytest

from model_folder import write_model_folder

from edgevid.model.manifest import ModelFolder
from edgevid.model.tokenizer import IncrementalDetokenizer, StopMatcher, Tokenizer

TEXTS = [
    "The cat sat on the mat.",
    "  leading and trailing spaces  ",
    "naïve café — Zürich, 東京, emoji 😀🎬 and ✓",
    "<|turn>user\nHi<turn|>\n<|turn>model\n",
    "line one\n\nline two\ttab",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ModelFolder.load(write_model_folder(tmp_path_factory.mktemp("model") / "demo"))


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def hf(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(folder.path)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match_transformers(tok, hf, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == hf(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


def test_no_double_bos(tok, folder):
    assert tok.encode("<bos>hi")[0] == folder.special.bos
    assert tok.encode("<bos>hi").count(folder.special.bos) == 1
    assert tok.encode("<bos>hi", add_special_tokens=True).count(folder.special.bos) == 1


def test_ids_in_edgevid_json_must_match_tokenizer_json(tmp_path):
    import json

    from edgevid.errors import ModelFolderError

    path = write_model_folder(tmp_path / "m")
    manifest = json.loads((path / "edgevid.json").read_text())
    manifest["special_tokens"]["video"] = 999
    (path / "edgevid.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="video token '<\\|video\\|>' id 999"):
        Tokenizer.from_folder(ModelFolder.load(path))


def test_multibyte_characters_split_over_byte_tokens_are_never_broken(tok):
    text = "Voilà: 😀 ok é🎬"
    ids = tok.encode(text, add_special_tokens=False)
    byte_tokens = [t for t in map(tok.id_to_token, ids) if t.startswith("<0x")]
    assert len(byte_tokens) >= 4           # the emoji really is split into byte-fallback tokens
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces                    # something was held back while a character was incomplete
    assert "😀" in pieces or any("😀" in p for p in pieces)


def test_detokenizer_skips_special_tokens_and_matches_full_decode(tok):
    ids = tok.encode("<|turn>model\nSure — naïve 😀 text.<turn|>", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    streamed = "".join(detok.feed(ids)) + detok.flush()
    assert streamed == tok.decode(ids) and "<turn|>" not in streamed and streamed == detok.text


def test_flush_releases_an_incomplete_character(tok):
    ids = tok.encode("a😀", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    out = "".join(detok.add(i) for i in ids[:-1])   # last byte of the emoji missing
    assert out == "a"
    tail = detok.flush()                            # ByteFallback: one U+FFFD per dangling byte
    assert tail and set(tail) == {"\ufffd"}


def test_stop_string_across_pieces():
    stop = StopMatcher(["STOP"])
    assert stop.push("Hel") == ("Hel", False)
    assert stop.push("lo S") == ("lo ", False)         # "S" could start STOP: withheld
    assert stop.push("TO") == ("", False)
    result = stop.push("P and more")
    assert result.text == "" and result.stopped
    assert stop.push("x") == ("", True) and stop.flush() == ""


def test_withheld_tail_released_when_not_a_stop():
    stop = StopMatcher(["</end>", "##"])
    out = [stop.push(p).text for p in ["a </e", "nding", " #", "x"]]
    assert "".join(out) + stop.flush() == "a </ending #x"
    assert out[0] == "a " and out[2] == " "


def test_earliest_stop_wins_and_repeated_prefixes():
    assert StopMatcher(["bb", "aab"]).push("xaaab") == ("xa", True)
    assert StopMatcher(["b", "aab"]).push("xaaab") == ("xa", True)     # "aab" starts before "b"
    stop = StopMatcher(["aab"])
    assert stop.push("aaa") == ("a", False)                            # "aa" may still become "aab"
    assert stop.push("b!") == ("", True)


def test_no_stops_passes_text_through():
    stop = StopMatcher([])
    assert stop.push("abc") == ("abc", False) and stop.flush() == ""


def test_detokenizer_with_stop_string_over_tokens(tok):
    ids = tok.encode("The answer is 42. END of story", add_special_tokens=False)
    detok, stop = IncrementalDetokenizer(tok), StopMatcher([". END"])
    emitted = ""
    for i in ids:
        result = stop.push(detok.add(i))
        emitted += result.text
        if result.stopped:
            break
    assert emitted == "The answer is 42" and stop.stopped
