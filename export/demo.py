"""A tiny, local stand-in for Gemma 4: tokenizer, chat template, processor and random-weight checkpoint.

Nothing comes from a model hub. ``build_demo_tokenizer`` learns a ~1k-entry byte-fallback BPE over a
small English text with the ``tokenizers`` library and gives it Gemma 4's special tokens under their real
strings and attribute names; ``build_demo_checkpoint`` adds a random-weight ``Gemma4ForConditionalGeneration``
shaped like E2B (per-layer inputs, KV sharing, sliding + full attention with a larger full-attention head
dim, logit soft-capping, a vision tower with patch 16 and pooling 3) and saves everything as an ordinary
Hugging Face folder that ``from_pretrained`` / ``AutoProcessor`` load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from .demo_corpus import DEMO_CORPUS
from .demo_template import DEMO_CHAT_TEMPLATE

DEMO_VOCAB_SIZE = 1024

# Gemma 4's special tokens: (attribute name in tokenizer_config.json, string). Order = token id.
SPECIAL_TOKENS: tuple[tuple[str, str], ...] = (
    ("pad_token", "<pad>"),
    ("eos_token", "<eos>"),
    ("bos_token", "<bos>"),
    ("unk_token", "<unk>"),
    ("mask_token", "<mask>"),
    ("sot_token", "<|turn>"),
    ("eot_token", "<turn|>"),
    ("soc_token", "<|channel>"),
    ("eoc_token", "<channel|>"),
    ("think_token", "<|think|>"),
    ("std_token", "<|tool>"),
    ("etd_token", "<tool|>"),
    ("stc_token", "<|tool_call>"),
    ("etc_token", "<tool_call|>"),
    ("str_token", "<|tool_response>"),
    ("etr_token", "<tool_response|>"),
    ("escape_token", '<|"|>'),
    ("boi_token", "<|image>"),
    ("eoi_token", "<image|>"),
    ("image_token", "<|image|>"),
    ("boa_token", "<|audio>"),
    ("eoa_token", "<audio|>"),
    ("audio_token", "<|audio|>"),
    ("video_token", "<|video|>"),
)
_STANDARD = {"pad_token", "eos_token", "bos_token", "unk_token", "mask_token"}
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
SPACE = "\u2581"  # SentencePiece's "▁", which Gemma's normalizer puts in place of spaces


@dataclass(frozen=True)
class DemoTokenIds:
    """Ids of the demo tokenizer's special tokens (the model config and generation config use them)."""

    pad: int
    eos: int
    bos: int
    end_of_turn: int
    boi: int
    eoi: int
    image: int
    audio: int
    boa: int
    eoa: int
    video: int
    tool_response: int
    vocab_size: int


def demo_token_ids() -> DemoTokenIds:
    ids = {text: i for i, (_, text) in enumerate(SPECIAL_TOKENS)}
    return DemoTokenIds(
        pad=ids["<pad>"], eos=ids["<eos>"], bos=ids["<bos>"], end_of_turn=ids["<turn|>"],
        boi=ids["<|image>"], eoi=ids["<image|>"], image=ids["<|image|>"], audio=ids["<|audio|>"],
        boa=ids["<|audio>"], eoa=ids["<audio|>"], video=ids["<|video|>"],
        tool_response=ids["<|tool_response>"], vocab_size=DEMO_VOCAB_SIZE,
    )


def _learn_merges(learned_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """BPE pieces and merges over the demo corpus; words keep their leading "▁" like SentencePiece's."""
    trainer_tok = Tokenizer(BPE(unk_token=None))
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")
    trainer = BpeTrainer(vocab_size=learned_size, show_progress=False, special_tokens=[])
    lines = [line for line in DEMO_CORPUS.splitlines()] + ["\n"]
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return pieces, merges


def _demo_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    fixed = [text for _, text in SPECIAL_TOKENS] + list(BYTE_TOKENS)
    pieces, merges = _learn_merges(DEMO_VOCAB_SIZE - len(fixed))
    vocab = {text: i for i, text in enumerate(fixed)}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    if len(vocab) != DEMO_VOCAB_SIZE:
        raise RuntimeError(f"demo vocabulary has {len(vocab)} entries, expected {DEMO_VOCAB_SIZE}")
    return vocab, merges


def build_backend_tokenizer() -> Tokenizer:
    """The demo tokenizer as a ``tokenizers.Tokenizer`` laid out like Gemma's (BPE + byte fallback)."""
    vocab, merges = _demo_vocab()
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def build_demo_tokenizer(out_dir: str | Path):
    """Write the demo tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) to ``out_dir``.

    Returns the transformers tokenizer. Gemma 4's special tokens keep their real strings and attribute
    names (``tokenizer.image_token == "<|image|>"``, ``boi_token == "<|image>"``, ``video_token``...);
    only their ids differ from the real vocabulary (see :func:`demo_token_ids`). Like the instruction-tuned
    Gemma 4 tokenizer, encoding adds no ``<bos>``: the chat template writes it.
    """
    from transformers import GemmaTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = build_backend_tokenizer()
    vocab = backend.get_vocab()
    merges = json.loads(backend.to_str())["model"]["merges"]
    named = {name: text for name, text in SPECIAL_TOKENS if name not in _STANDARD}
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=[tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in merges],
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        extra_special_tokens=named,
        chat_template=DEMO_CHAT_TEMPLATE,
    )
    tokenizer.save_pretrained(out)
    _check_ids(out / "tokenizer.json")
    write_processor_config(out)
    return tokenizer


def write_processor_config(out_dir: str | Path) -> Path:
    """Write processor_config.json as ``Gemma4Processor.save_pretrained`` does, with Gemma 4's defaults.

    Written from the component classes' own ``to_dict`` (feature extractor, image processor) and the
    video processor's class defaults, because ``Gemma4VideoProcessor`` needs torchvision to be built and
    the export side must not: 32 frames per video, 70 soft tokens per frame, 280 per image, patch 16,
    pooling 3. ``AutoProcessor.from_pretrained`` turns it back into a ``Gemma4Processor`` (which itself
    needs torchvision for the video processor).
    """
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    features = json.loads(json.dumps(Gemma4AudioFeatureExtractor().to_dict(), default=_jsonable))
    image = Gemma4ImageProcessorPil().to_dict()
    video = {
        "video_processor_type": "Gemma4VideoProcessor",
        "do_convert_rgb": True, "do_resize": True, "resample": image["resample"],
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
        "do_sample_frames": True, "num_frames": 32, "return_metadata": True,
        "patch_size": 16, "max_soft_tokens": 70, "pooling_kernel_size": 3,
    }
    config = {
        "processor_class": "Gemma4Processor",
        "image_seq_length": 280, "audio_seq_length": 750, "audio_ms_per_token": 40,
        "feature_extractor": features, "image_processor": image, "video_processor": video,
    }
    path = Path(out_dir) / "processor_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _jsonable(value):
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"cannot serialise {type(value).__name__}")
    return tolist()


def _check_ids(tokenizer_json: Path) -> None:
    tok = Tokenizer.from_file(str(tokenizer_json))
    for i, (_, text) in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(text) != i:
            raise RuntimeError(f"demo tokenizer: {text} has id {tok.token_to_id(text)}, expected {i}")


# ---- checkpoint ----------------------------------------------------------------------------------------
# E2B pattern scaled down: sliding layers with head dim 16, full layers with 32; the last three layers read
# the KV cache of the first three (one producer of each attention type, as in E2B's 15 producers / 20 users).
DEMO_LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention",
                    "sliding_attention", "sliding_attention", "full_attention")
DEMO_SLIDING_WINDOW = 128
DEMO_CONTEXT = 8192


def demo_config():
    """``Gemma4Config`` for the demo model: E2B's features at toy width, vocabulary of the demo tokenizer."""
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    ids = demo_token_ids()
    eos = [ids.eos, ids.end_of_turn]
    text = Gemma4TextConfig(
        vocab_size=ids.vocab_size, vocab_size_per_layer_input=ids.vocab_size,
        hidden_size=64, intermediate_size=128, num_hidden_layers=len(DEMO_LAYER_TYPES),
        layer_types=list(DEMO_LAYER_TYPES), num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, global_head_dim=32, sliding_window=DEMO_SLIDING_WINDOW,
        max_position_embeddings=DEMO_CONTEXT, hidden_size_per_layer_input=16, num_kv_shared_layers=3,
        use_double_wide_mlp=True, final_logit_softcapping=30.0, initializer_range=0.1,
        pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos,
    )
    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, patch_size=16, pooling_kernel_size=3,
        position_embedding_size=1024, initializer_range=0.1,
    )
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        boi_token_id=ids.boi, eoi_token_id=ids.eoi, image_token_id=ids.image, video_token_id=ids.video,
        audio_token_id=ids.audio, boa_token_id=ids.boa, eoa_token_index=ids.eoa,
        pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos, tie_word_embeddings=True,
    )


def build_demo_model(seed: int = 0):
    """Random-weight ``Gemma4ForConditionalGeneration`` (fp32, eval), identical for the same ``seed``.

    Weights that start as all ones or all zeros (norm scales, layer scalars, biases) are drawn at random
    too, so an exporter that drops one of them cannot pass a parity check by luck.
    """
    import torch
    from transformers import Gemma4ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma4ForConditionalGeneration(demo_config()).eval()
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, tensor in model.state_dict(keep_vars=True).items():
                if not tensor.is_floating_point() or tensor.numel() == 0 or "inv_freq" in name:
                    continue
                if bool((tensor == 1).all()):
                    tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
                elif bool((tensor == 0).all()):
                    tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model


def build_demo_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Save the demo model, tokenizer, chat template, processor config and generation config to ``out_dir``.

    The folder is an ordinary Hugging Face checkpoint: ``Gemma4ForConditionalGeneration.from_pretrained``,
    ``AutoTokenizer`` and ``AutoProcessor`` (with torchvision) load it. Returns ``out_dir`` as a Path.
    """
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = demo_token_ids()
    model = build_demo_model(seed)
    model.generation_config = GenerationConfig(
        bos_token_id=ids.bos, pad_token_id=ids.pad,
        eos_token_id=[ids.eos, ids.end_of_turn, ids.tool_response],
        do_sample=False, max_new_tokens=64,
    )
    model.save_pretrained(out)
    build_demo_tokenizer(out)
    return out
