"""The demo tokenizer, chat template and checkpoint (edgevid_export.demo)."""
from __future__ import annotations

import hashlib
import json

import jinja2
import pytest
from tokenizers import Tokenizer

from edgevid_export.demo import SPECIAL_TOKENS, build_demo_tokenizer, demo_token_ids

MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": [
        {"type": "video", "video": "clip.mp4"},
        {"type": "text", "text": "  What happens in this video?  "},
    ]},
    {"role": "assistant", "content": "<|channel>thought\nthe cat moves<channel|>A cat jumps onto the table."},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And in this image?"}]},
]


def render_with_jinja(template: str, messages, **kwargs) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token="<bos>", **kwargs)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_tokenizer")
    build_demo_tokenizer(out)
    return out


def test_tokenizers_library_alone_loads_and_matches_transformers(tokenizer_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = "<bos><|turn>user\nWhat happens in this video? Zebra 42 ünï 🎥<|video|><turn|>\n<|turn>model\n"
    hf_ids = hf(text, add_special_tokens=False).input_ids
    assert raw.encode(text, add_special_tokens=False).ids == hf_ids
    assert raw.encode(text).ids == hf_ids  # the instruction-tuned layout: encoding adds no <bos>
    assert raw.decode(hf_ids, skip_special_tokens=False) == text
    assert hf.decode(hf_ids) == text
    assert len(hf_ids) < len(text.encode()) // 2  # learned merges, not bytes
    assert raw.get_vocab_size() == demo_token_ids().vocab_size == len(hf)


def test_special_tokens_carry_gemma4_strings_and_attributes(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = demo_token_ids()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tok.image_token, tok.boi_token, tok.eoi_token) == ("<|image|>", "<|image>", "<image|>")
    assert (tok.audio_token, tok.boa_token, tok.eoa_token) == ("<|audio|>", "<|audio>", "<audio|>")
    assert (tok.sot_token, tok.eot_token) == ("<|turn>", "<turn|>")
    assert tok.video_token == "<|video|>"
    assert tok.image_token_id == ids.image
    assert tok.convert_tokens_to_ids(["<|video|>", "<turn|>", "<|image>", "<image|>"]) == [
        ids.video, ids.end_of_turn, ids.boi, ids.eoi]
    raw = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    for token_id, (_, text) in enumerate(SPECIAL_TOKENS):
        assert raw.token_to_id(text) == token_id
        assert raw.encode(f"a{text}b", add_special_tokens=False).ids.count(token_id) == 1


def test_chat_template_renders_the_same_with_jinja2_alone(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    template = (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False},
                   {"add_generation_prompt": True, "enable_thinking": True}):
        for messages in (MESSAGES, MESSAGES[1:], [{"role": "user", "content": "hi"}]):
            expected = tok.apply_chat_template(messages, tokenize=False, **kwargs)
            assert render_with_jinja(template, messages, **kwargs) == expected
    assert render_with_jinja(template, MESSAGES, add_generation_prompt=True) == (
        "<bos><|turn>system\nYou are brief.<turn|>\n"
        "<|turn>user\n<|video|>What happens in this video?<turn|>\n"
        "<|turn>model\nA cat jumps onto the table.<turn|>\n"
        "<|turn>user\n<|image|>And in this image?<turn|>\n"
        "<|turn>model\n"
    )
    thinking = render_with_jinja(template, MESSAGES[1:2], add_generation_prompt=True, enable_thinking=True)
    assert thinking.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\n")


def test_demo_tokenizer_is_deterministic(tmp_path):
    build_demo_tokenizer(tmp_path / "a")
    build_demo_tokenizer(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        a, b = ((tmp_path / d / name).read_bytes() for d in "ab")
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name


def test_processor_config_has_gemma4_video_defaults(tokenizer_dir):
    config = json.loads((tokenizer_dir / "processor_config.json").read_text())
    assert config["processor_class"] == "Gemma4Processor"
    video = config["video_processor"]
    assert video["video_processor_type"] == "Gemma4VideoProcessor"
    assert (video["num_frames"], video["max_soft_tokens"], video["patch_size"], video["pooling_kernel_size"]) == (
        32, 70, 16, 3)
    assert config["image_processor"]["max_soft_tokens"] == 280
    assert config["image_seq_length"] == 280
