"""From trained weights to the shipped folder: save the checkpoint, export it, record PyTorch's reference
answers, and copy what the runtime needs (fp32 + q4, the sample clip) into ``edgevid/demo``."""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import synthetic
from .data import PromptBuilder, encode_clip
from .recipe import DemoRecipe
from .stages import train
from .tokenizer import build_task_tokenizer, write_processor_config


def save_checkpoint(model, recipe: DemoRecipe, tokenizer_dir: Path, checkpoint_dir: Path) -> Path:
    import shutil

    from ..demo import demo_token_ids

    ids = demo_token_ids()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = [ids.eos, ids.end_of_turn]
    model.generation_config.pad_token_id = ids.pad
    model.generation_config.bos_token_id = ids.bos
    model.save_pretrained(checkpoint_dir)
    for item in tokenizer_dir.iterdir():
        shutil.copy2(item, checkpoint_dir / item.name)
    write_processor_config(checkpoint_dir, recipe)
    (checkpoint_dir / "demo_recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")
    return checkpoint_dir


def build_trained_demo(output_dir: str | Path, seed: int = 0, progress=print,
                       precisions: tuple[str, ...] = ("fp32", "q4"), recipe: DemoRecipe | None = None,
                       stage1_checkpoint: str | Path | None = None, resume: str | Path | None = None,
                       resume_after: int = 1) -> Path:
    """Train the demo from scratch and export it: ``output_dir/checkpoint`` (HF folder) + model folder.

    ``resume``: a checkpoint saved after stage ``resume_after`` of the same recipe (``stage2_steps=0`` writes
    one after stage 1; a recipe without stage 3 ends after stage 2); training runs the later stages only, which
    gives the same result as a full run. ``stage1_checkpoint`` = ``resume`` after stage 1."""
    recipe = recipe or DemoRecipe(seed=seed)
    if stage1_checkpoint is not None:
        resume, resume_after = stage1_checkpoint, 1
    start_model = None
    if resume is not None:
        from transformers import Gemma4ForConditionalGeneration

        start_model = Gemma4ForConditionalGeneration.from_pretrained(resume)
    output = Path(output_dir)
    checkpoint = output / "checkpoint"
    with tempfile.TemporaryDirectory(prefix="edgevid-tok-") as tmp:
        tokenizer_dir = Path(tmp)
        build_task_tokenizer(tokenizer_dir)
        write_processor_config(tokenizer_dir, recipe)
        model, accuracy = train(recipe, tokenizer_dir, progress, start_model=start_model, start_after=resume_after)
        save_checkpoint(model, recipe, tokenizer_dir, checkpoint)
    (checkpoint / "train_accuracy.json").write_text(json.dumps(accuracy, indent=2) + "\n", encoding="utf-8")
    return export_demo(checkpoint, output, recipe, precisions, progress)


def export_demo(checkpoint: Path, output: Path, recipe: DemoRecipe, precisions, progress=print) -> Path:
    """``edgevid export`` of the checkpoint; make sure edgevid.json records the demo's video sampling."""
    from ..convert import export_model

    export_model(str(checkpoint), output, precisions=tuple(precisions), progress=progress)
    manifest_path = output / "edgevid.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    video = manifest.setdefault("video", {})
    if video.get("num_frames") != recipe.num_frames or video.get("max_soft_tokens") != recipe.max_soft_tokens:
        video.update(num_frames=recipe.num_frames, max_soft_tokens=recipe.max_soft_tokens)
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return output


REFERENCE_SEED_BASE = 40_000_000


REFERENCE_FILE = "reference_answers.json"


def reference_answers(checkpoint: str | Path, clips: int = 8, max_new_tokens: int = 24) -> list[dict]:
    """Greedy answers of the PyTorch checkpoint (transformers ``generate``) on held-out clips drawn from
    ``REFERENCE_SEED_BASE``, after the runtime's sampling and preprocessing. Shipped beside the model so a
    torch-free test can demand the ONNX runtime give the same answers."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    checkpoint = Path(checkpoint)
    model = Gemma4ForConditionalGeneration.from_pretrained(checkpoint).eval()
    recipe = DemoRecipe(**json.loads((checkpoint / "demo_recipe.json").read_text(encoding="utf-8")))
    prompts = PromptBuilder(checkpoint)
    eos = list(model.generation_config.eos_token_id)
    out = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgevid-ref-") as tmp, torch.no_grad():
        for i in range(clips):
            spec = synthetic.make_clip_spec(REFERENCE_SEED_BASE + i)
            clip = encode_clip(spec, recipe, Path(tmp))
            for qa in synthetic.questions_for(spec, rng):
                ids, _ = prompts.encode(qa.question, None, clip.timestamps, clip.soft_tokens)
                generated = model.generate(
                    input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    pixel_values_videos=torch.from_numpy(clip.pixel_values),
                    video_position_ids=torch.from_numpy(clip.position_ids),
                    num_frames_per_video=torch.tensor([clip.pixel_values.shape[0]]),
                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos)[0, len(ids):].tolist()
                out.append({"seed": spec.seed, "kind": qa.kind, "question": qa.question, "answer": qa.answer,
                            "torch": prompts.decode(t for t in generated if t not in eos).strip()})
    return out


SHIPPED_PRECISIONS = ("fp32", "q4")


SAMPLE_CLIP = "sample.mp4"


def package_demo(model_dir: str | Path, dest: str | Path, precisions: tuple[str, ...] = SHIPPED_PRECISIONS) -> Path:
    """Copy what the runtime needs from an exported demo folder into ``dest`` (``edgevid/demo``): side
    files, the graphs of ``precisions`` and an edgevid.json listing only those; plus the sample clip
    (:func:`edgevid_export.synthetic.sample_clip_spec`, H.264). No checkpoint, no other precisions."""
    import shutil

    from ..model_folder import SIDE_FILES

    source, dest = Path(model_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / "edgevid.json").read_text(encoding="utf-8"))
    manifest["precisions"] = {k: v for k, v in manifest["precisions"].items() if k in precisions}
    missing = [p for p in precisions if p not in manifest["precisions"]]
    if missing:
        raise FileNotFoundError(f"{source} has no {', '.join(missing)} graphs to ship")
    names = [n for n in SIDE_FILES if (source / n).is_file()]
    for entry in manifest["precisions"].values():
        names += [v for k, v in entry.items() if isinstance(v, str) and v.endswith(".onnx")]
        names += [v + "_data" for v in entry.values() if isinstance(v, str) and (source / (v + "_data")).is_file()]
    for name in names:
        shutil.copy2(source / name, dest / name)
    if (source / "checkpoint").is_dir():
        references = reference_answers(source / "checkpoint")
        (dest / REFERENCE_FILE).write_text(json.dumps(references, indent=1) + "\n", encoding="utf-8")
    (dest / "edgevid.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    spec = synthetic.sample_clip_spec()
    synthetic.write_mp4(dest / SAMPLE_CLIP, synthetic.render_clip(spec), spec.fps)
    return dest
