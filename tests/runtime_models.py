"""Tiny exported Gemma 4 model folders for the runtime tests, and the transformers reference for them.

``tiny_checkpoint(shape, folder)`` takes a decoder shape from ``tests/gemma_configs.py``, gives it the demo
tokenizer's vocabulary and special ids (``edgevid_export.demo``), random weights, and saves an ordinary HF
folder with tokenizer, chat template and processor config. ``exported_model(shape, root)`` exports it with
``export_model`` once per root (reused from disk afterwards). ``transformers_reference`` runs
``Gemma4ForConditionalGeneration.generate`` on a video the way ``Gemma4Processor`` prepares it.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from reference_pixels import reference_pixels

QUESTION = "What happens in this video?"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def tiny_config(shape: str):
    from edgevid_export.demo import demo_token_ids
    from gemma_configs import ALL_CONFIGS

    ids = demo_token_ids()
    config = ALL_CONFIGS[shape]()
    text = config.text_config
    eos = [ids.eos, ids.end_of_turn]
    text.vocab_size = text.vocab_size_per_layer_input = ids.vocab_size
    text.pad_token_id, text.bos_token_id, text.eos_token_id = ids.pad, ids.bos, eos
    for name, value in dict(boi_token_id=ids.boi, eoi_token_id=ids.eoi, image_token_id=ids.image,
                            video_token_id=ids.video, audio_token_id=ids.audio, boa_token_id=ids.boa,
                            eoa_token_index=ids.eoa, pad_token_id=ids.pad, bos_token_id=ids.bos,
                            eos_token_id=eos).items():
        setattr(config, name, value)
    return config


def tiny_checkpoint(shape: str, folder: Path, seed: int = 0) -> Path:
    from transformers import GenerationConfig

    from edgevid_export.demo import build_demo_tokenizer, demo_token_ids, write_processor_config
    from gemma_configs import build_random_model

    ids = demo_token_ids()
    folder.mkdir(parents=True, exist_ok=True)
    model = build_random_model(tiny_config(shape), seed=seed)
    model.generation_config = GenerationConfig(bos_token_id=ids.bos, pad_token_id=ids.pad,
                                               eos_token_id=[ids.eos, ids.end_of_turn], do_sample=False)
    model.save_pretrained(folder)
    build_demo_tokenizer(folder)
    write_processor_config(folder)
    return folder


def models_root(tmp_path_factory) -> Path:
    """Where the tiny exports live: ``$EDGEVID_OV_FIXTURES`` (kept for the OpenVINO venv) or one folder per
    pytest session, so every runtime test module shares one export per shape."""
    fixtures = os.environ.get("EDGEVID_OV_FIXTURES")
    root = Path(fixtures) if fixtures else tmp_path_factory.getbasetemp() / "runtime-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def exported_model(shape: str, root: Path) -> tuple[Path, Path]:
    """(checkpoint folder, exported model folder) for ``shape`` under ``root``; exported once."""
    from edgevid_export.convert import export_model

    checkpoint, model_dir = root / shape / "checkpoint", root / shape / "model"
    if not (model_dir / "edgevid.json").is_file():
        tiny_checkpoint(shape, checkpoint)
        export_model(checkpoint, model_dir, validate=False, progress=lambda line: None)
    return checkpoint, model_dir


def write_test_clip(path: Path) -> Path:
    from clips import write_clip

    return write_clip(path, frames=24, fps=12, size=(160, 120))


# ---- transformers side ------------------------------------------------------------------------------------
def processor_inputs(checkpoint: Path, frames: np.ndarray, timestamps: np.ndarray, fps: float) -> dict:
    """input_ids + video tensors as Gemma4Processor builds them for one video and QUESTION.

    With torchvision: ``AutoProcessor`` itself. Without (this machine): transformers' chat template and
    ``Gemma4Processor.replace_video_token`` for the text, the video processor's resize/rescale/patchify
    steps for the pixels."""
    import torch
    from transformers import AutoTokenizer
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    if HAS_TORCHVISION:
        from transformers import AutoProcessor
        from transformers.video_utils import VideoMetadata

        processor = AutoProcessor.from_pretrained(checkpoint)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # VideoMetadata derives timestamps as frames_indices / fps: give it the indices that reproduce the
        # container timestamps the runtime read (the test clip is constant-rate, so they are exact).
        indices = np.rint(np.asarray(timestamps) * fps).astype(int)
        assert np.allclose(indices / fps, timestamps, atol=1e-3), (indices, timestamps)
        metadata = VideoMetadata(total_num_frames=int(indices[-1]) + 1, fps=fps, frames_indices=indices.tolist())
        return dict(processor(text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False,
                              return_tensors="pt"))
    tok = AutoTokenizer.from_pretrained(checkpoint)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pixels, positions, soft = reference_pixels(frames, max_soft_tokens=70)
    pixels, positions = torch.from_numpy(pixels), torch.from_numpy(positions)
    view = SimpleNamespace(boi_token=tok.boi_token, eoi_token=tok.eoi_token, video_token="<|video|>")
    assert len(set(soft)) == 1                      # frames of one video share one size
    video_inputs = {"num_soft_tokens_per_video": [soft[0]],
                    "video_metadata": [SimpleNamespace(fps=fps, timestamps=list(timestamps))]}
    expanded = text.replace("<|video|>", Gemma4Processor.replace_video_token(view, video_inputs, 0))
    input_ids = tok(expanded, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": pixels, "video_position_ids": positions,
            "num_frames_per_video": torch.tensor([len(frames)])}


def transformers_reference(checkpoint: Path, video, max_new_tokens: int) -> dict:
    """{"prompt_ids", "token_ids", "first_logits"} from ``Gemma4ForConditionalGeneration.generate(do_sample=False)``."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint).eval()
    inputs = processor_inputs(checkpoint, video.frames, video.timestamps, video.fps)
    ids = inputs["input_ids"]
    inputs["mm_token_type_ids"] = (ids == model.config.video_token_id).long() * 2   # video = 2, as the processor
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    prompt = ids[0].tolist()
    return {"prompt_ids": prompt, "token_ids": out.sequences[0, len(prompt):].tolist(),
            "first_logits": out.logits[0][0].float().numpy()}


def write_expected(path: Path, **values) -> None:
    path.write_text(json.dumps(values, indent=1), encoding="utf-8")
