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


# ---- checkpoint ------------------------------------------------------------------------------------------
import importlib.util  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import av  # noqa: E402
from safetensors import safe_open  # noqa: E402
import numpy as np  # noqa: E402

from clips import frame_id, write_clip  # noqa: E402
from edgevid_export.demo import build_demo_checkpoint  # noqa: E402

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_checkpoint")
    start = time.perf_counter()
    build_demo_checkpoint(out, seed=0)
    assert time.perf_counter() - start < 30  # seconds, on 2 busy cores (about 2 s when idle)
    return out


def decode_frames(path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def test_checkpoint_is_an_e2b_shaped_gemma4(checkpoint):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint)
    text, vision = config.text_config, config.vision_config
    assert config.architectures == ["Gemma4ForConditionalGeneration"]
    assert text.hidden_size_per_layer_input > 0 and text.num_kv_shared_layers > 0
    assert {"sliding_attention", "full_attention"} == set(text.layer_types)
    assert text.layer_types[-1] == "full_attention"
    modes = text.kv_sharing_modes
    assert modes.count("reuse") == text.num_kv_shared_layers
    full = [i for i, t in enumerate(text.layer_types) if t == "full_attention"]
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as weights:
        def head_dim(layer: int) -> int:
            return weights.get_slice(f"model.language_model.layers.{layer}.self_attn.k_norm.weight").get_shape()[0]

        assert head_dim(full[0]) > head_dim(text.layer_types.index("sliding_attention"))
        assert "model.language_model.embed_tokens_per_layer.weight" in weights.keys()
    assert text.final_logit_softcapping == 30.0
    assert (vision.patch_size, vision.pooling_kernel_size) == (16, 3)
    assert config.audio_config is None
    tok = AutoTokenizer.from_pretrained(checkpoint)
    assert text.vocab_size == len(tok)
    assert config.image_token_id == tok.image_token_id
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video|>")
    assert config.boi_token_id == tok.convert_tokens_to_ids(tok.boi_token)
    assert config.eoi_token_id == tok.convert_tokens_to_ids(tok.eoi_token)
    gen = json.loads((checkpoint / "generation_config.json").read_text())
    assert {tok.eos_token_id, tok.convert_tokens_to_ids("<turn|>")} <= set(gen["eos_token_id"])


def test_checkpoint_is_deterministic_per_seed(checkpoint, tmp_path):
    build_demo_checkpoint(tmp_path / "again", seed=0)
    build_demo_checkpoint(tmp_path / "other", seed=1)
    weights = (checkpoint / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != weights


def video_prompt_inputs(checkpoint, frames: np.ndarray, fps: float):
    """input_ids + video tensors for one video and a question, the way Gemma4Processor builds them.

    With torchvision: AutoProcessor itself. Without (this environment): the frames go through transformers'
    Pillow image processor at the video budget (70 soft tokens), and the prompt is expanded by
    ``Gemma4Processor.replace_video_token``, transformers' own expansion code.
    """
    import torch
    from transformers import AutoTokenizer
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
    tok = AutoTokenizer.from_pretrained(checkpoint)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    timestamps = [i / fps for i in range(len(frames))]
    if HAS_TORCHVISION:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(checkpoint)
        metadata = VideoMetadata(total_num_frames=len(frames), fps=fps, frames_indices=list(range(len(frames))))
        out = processor(text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                        return_tensors="pt")
        return text, processor.tokenizer.decode(out["input_ids"][0]), dict(out)
    images = Gemma4ImageProcessorPil(max_soft_tokens=70)([[f] for f in frames], return_tensors="pt")
    soft = images["num_soft_tokens_per_image"][0]
    processor_view = SimpleNamespace(boi_token=tok.boi_token, eoi_token=tok.eoi_token, video_token="<|video|>")
    video_inputs = {"num_soft_tokens_per_video": [soft],
                    "video_metadata": [SimpleNamespace(fps=fps, timestamps=timestamps)]}
    expanded = text.replace("<|video|>", Gemma4Processor.replace_video_token(processor_view, video_inputs, 0))
    input_ids = tok(expanded, return_tensors="pt", add_special_tokens=False)["input_ids"]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "pixel_values_videos": images["pixel_values"], "video_position_ids": images["image_position_ids"],
              "num_frames_per_video": torch.tensor([len(frames)])}
    return text, expanded, inputs


def test_four_frame_video_expands_and_generates(checkpoint, tmp_path):
    import torch
    from transformers import Gemma4ForConditionalGeneration

    frames, fps = decode_frames(write_clip(tmp_path / "four.mp4", frames=4, fps=2, size=(160, 120)))
    assert [frame_id(f) for f in frames] == [0, 1, 2, 3]
    text, expanded, inputs = video_prompt_inputs(checkpoint, frames, fps)
    assert text.count("<|video|>") == 1
    # 160x120 at 70 soft tokens (630 patches) -> 336x432 px: 21x27 patches -> 7x9 = 63 soft tokens per frame
    per_frame = "<|image>" + "<|video|>" * 63 + "<image|>"
    assert " ".join(f"00:0{s} {per_frame}" for s in (0, 0, 1, 1)) in expanded
    assert expanded.count("<|video|>") == 4 * 63
    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        no_video = model(input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.video_token_id,
                                                                   0)).logits
        with_video = model(**{k: v for k, v in inputs.items() if k != "attention_mask"}).logits
    prompt_len = inputs["input_ids"].shape[1]
    assert first.shape[1] > prompt_len
    assert torch.equal(first, second)
    assert (first[0, prompt_len:] < model.config.text_config.vocab_size).all()
    assert not torch.allclose(no_video[0, -1], with_video[0, -1])  # the frames reach the decoder


@pytest.mark.skipif(not HAS_TORCHVISION, reason="Gemma4VideoProcessor needs torchvision (not installable here)")
def test_auto_processor_loads_checkpoint(checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    assert type(processor).__name__ == "Gemma4Processor"
    assert processor.video_processor.num_frames == 32
    assert processor.video_processor.max_soft_tokens == 70
    assert processor.image_processor.max_soft_tokens == 280
    template = (checkpoint / "chat_template.jinja").read_text(encoding="utf-8")
    rendered = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == render_with_jinja(template, MESSAGES, add_generation_prompt=True)
