"""Training: stage 0 (the vision tower alone on single frames), then stages 1-4 on clips (stage 4 trains
only the top decoder layers); forward passes that share a clip's prompt prefix through the KV cache, and
held-out evaluation."""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import synthetic
from .data import (
    ClipBatch, EncodedClip, PromptBuilder, _clip_stream, _full_batch, clip_batch, encode_clip, rendered_frame,
)
from .losses import (
    _aux_heads, answer_loss, answer_loss_and_hits, attention_loss, aux_loss, lm_probe_loss, object_loss,
    track_loss,
)
from .model import demo_config, start_language_model, start_vision_tower
from .recipe import DemoRecipe, held_out_specs, vision_seed


def _full_forward(model, clips: list[EncodedClip], input_ids, mask, owners, keep: int = 0):
    """Vision tower once per clip; its features reused by every question about that clip. ``keep`` > 0:
    logits for the last ``keep`` positions only (where the answers are)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pixel_values = torch.from_numpy(np.concatenate([c.pixel_values for c in clips]))
    positions = torch.from_numpy(np.concatenate([c.position_ids for c in clips]))
    per_video = torch.tensor([c.pixel_values.shape[0] for c in clips])
    encoded = model.model.get_video_features(pixel_values, positions, num_frames_per_video=per_video,
                                             return_dict=True)
    video = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[c] for c in owners])
    logits = model(input_ids=input_ids, attention_mask=mask, mm_encoder_outputs={"video": video},
                   logits_to_keep=keep).logits
    return logits, encoded.last_hidden_state


def _forward_shared(model, clips: list[EncodedClip], batches: list[ClipBatch], hidden_layer: int | None = None,
                    suffix_layer: int | None = None, attend_layer: int | None = None,
                    motion_layer: int | None = None):
    """Vision tower once for all clips; per clip the prefix once (with its video), then every question on
    the prefix's KV cache. The same logits as running each full sequence (transformers' cached forward,
    what ``generate`` does), at a fraction of the cost: the ~280-token prefix is computed once, not 5 times.
    Returns per clip (suffix logits [Q, S, V], hidden state ``hidden_layer`` at the prefix's video tokens,
    hidden state ``suffix_layer`` of the suffix rows [Q, S, H], the attention weights of ``attend_layer``,
    hidden state ``motion_layer`` of the suffix rows; None when not asked) and the vision tower's soft-token
    features."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from ..parity import cache_of, with_cache

    pixel_values = torch.from_numpy(np.concatenate([c.pixel_values for c in clips]))
    positions = torch.from_numpy(np.concatenate([c.position_ids for c in clips]))
    per_video = torch.tensor([c.pixel_values.shape[0] for c in clips])
    encoded = model.model.get_video_features(pixel_values, positions, num_frames_per_video=per_video,
                                             return_dict=True)
    video_id = model.config.video_token_id
    outputs = []
    captured: list = []
    hook = None
    if attend_layer is not None:       # eager attention (see train) returns its weights as out[1]
        attention = model.model.language_model.layers[attend_layer].self_attn
        hook = attention.register_forward_hook(lambda module, args, out: captured.append(out[1]))
    for c, batch in enumerate(batches):
        video = BaseModelOutputWithPooling(pooler_output=[encoded.pooler_output[c]])
        first = model(input_ids=batch.prefix, attention_mask=torch.ones_like(batch.prefix),
                      mm_encoder_outputs={"video": video}, use_cache=True, logits_to_keep=1,
                      output_hidden_states=hidden_layer is not None)
        hidden = None
        if hidden_layer is not None:
            hidden = first.hidden_states[hidden_layer][0][batch.prefix[0] == video_id]
        cache = cache_of(first)
        rows = batch.suffix.shape[0]
        cache.batch_repeat_interleave(rows)
        mask = torch.cat([torch.ones(rows, batch.prefix.shape[1], dtype=torch.long), batch.mask], dim=1)
        out = model(input_ids=batch.suffix, attention_mask=mask, use_cache=True,
                    output_hidden_states=suffix_layer is not None or motion_layer is not None,
                    **with_cache(model, cache))
        outputs.append((out.logits, hidden, None if suffix_layer is None else out.hidden_states[suffix_layer],
                        captured[-1] if captured else None,
                        None if motion_layer is None else out.hidden_states[motion_layer]))
    if hook is not None:
        hook.remove()
    return outputs, encoded.last_hidden_state


def _learning_rate(stage, step: int) -> float:
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, clips: list[EncodedClip], prompts: PromptBuilder, pad_id: int, seed: int = 0) -> dict:
    """Greedy exact-match accuracy per question kind (teacher-forced argmax, equivalent to greedy)."""
    import torch

    hits: dict[str, list[bool]] = {k: [] for k in synthetic.QUESTION_KINDS}
    rng = np.random.default_rng(seed)
    model.eval()
    with torch.no_grad():
        for clip in clips:
            batch = clip_batch(clip, prompts, rng, pad_id)
            (logits, *_), = _forward_shared(model, [clip], [batch])[0]
            _, ok = answer_loss_and_hits(logits, batch.labels)
            for kind, good in zip(batch.kinds, ok.tolist()):
                hits[kind].append(good)
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


@dataclass(frozen=True)
class Stage:
    """One stretch of training: fresh AdamW and aux probes, warmup then cosine decay to 10 %."""
    name: str
    first_step: int      # global step of its first batch (training clip seeds follow the global step)
    steps: int
    lr: float
    warmup: int


def stages(recipe: DemoRecipe) -> tuple[Stage, ...]:
    """Stage 1 learns the language and the vision features; the small model starts reading the video
    late in stage 1 (around step 1400 of 2000 here), so stage 2 restarts the learning rate to finish."""
    out = [Stage("stage 1", 0, recipe.steps, recipe.lr, recipe.warmup)]
    if recipe.stage2_steps:
        out.append(Stage("stage 2", recipe.steps, recipe.stage2_steps, recipe.stage2_lr, 20))
        if recipe.stage3_steps:
            out.append(Stage("stage 3", recipe.steps + recipe.stage2_steps, recipe.stage3_steps, recipe.stage3_lr, 20))
            if recipe.stage4_steps:
                out.append(Stage("stage 4", recipe.steps + recipe.stage2_steps + recipe.stage3_steps,
                                 recipe.stage4_steps, recipe.stage4_lr, 20))
    return tuple(out)


def stage_trains(recipe: DemoRecipe, index: int, name: str) -> bool:
    """Whether parameter ``name`` trains in stage ``index`` (0-based, as in ``stages``): stage 4 (index 3)
    trains only the top decoder layers and the final norm, the others everything."""
    if index < 3:
        return True
    prefix = "model.language_model."
    top = tuple(f"{prefix}layers.{i}." for i in range(recipe.stage4_from_layer, 64))
    return name.startswith(top) or name == f"{prefix}norm.weight"


def train(recipe: DemoRecipe, tokenizer_dir: Path, progress=print, workers: int = 1, start_model=None,
          start_after: int = 1):
    """Train from scratch (or from ``start_model``, the result of stages 0..``start_after`` of the same
    recipe: every stage starts from fresh seeds, optimizer and probes, so resuming gives the same model);
    returns the model (eval mode) and the last held-out accuracy.

    One torch thread: on a small shared CPU, oversubscribed intra-op threads cost 3-10x; clip rendering and
    encoding run in ``workers`` separate processes instead."""
    import multiprocessing

    import torch
    from transformers import Gemma4ForConditionalGeneration

    from ..demo import demo_token_ids

    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)
    model = start_model if start_model is not None else start_language_model(start_vision_tower(
        Gemma4ForConditionalGeneration(demo_config(recipe)), recipe), recipe)
    prompts = PromptBuilder(tokenizer_dir)
    pad = demo_token_ids().pad
    accuracy: dict = {}
    implementation = model.config._attn_implementation
    if recipe.attend_weight:
        model.set_attn_implementation("eager")     # attention weights for attention_loss
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
    try:
        with tempfile.TemporaryDirectory(prefix="edgevid-train-") as tmp:
            if start_model is None and recipe.vision_steps:
                progress(f"stage 0: {recipe.vision_steps} steps on single frames, vision tower only")
                pretrain_vision(model, _aux_heads(recipe, position=False), recipe, progress)
            for index, stage in enumerate(stages(recipe)):
                if start_model is not None and index < start_after:
                    continue
                if index > 0:
                    torch.manual_seed(recipe.seed + index)
                position = index + 1 >= recipe.position_stage
                for name, parameter in model.named_parameters():
                    parameter.requires_grad_(stage_trains(recipe, index, name))
                heads = _aux_heads(recipe, position)
                optimizer = _optimizer(model, heads, recipe, stage)
                rng = np.random.default_rng(recipe.seed + index)
                progress(f"{stage.name}: {stage.steps} steps, lr {stage.lr:g}")
                stage_recipe = recipe if index < 3 else replace(
                    recipe, clips_per_step=recipe.stage4_clips_per_step, every_question=True,
                    decision_weight=recipe.stage4_decision_weight)
                accuracy = _train_loop(model, heads, optimizer, stage_recipe, stage, prompts, pad, rng, Path(tmp), pool,
                                       progress, probes=index in (0, 2), position=position)
    finally:
        torch.set_num_threads(threads)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if implementation and model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)
        if pool is not None:
            pool.terminate()
    return model.eval(), accuracy


def pretrain_vision(model, heads, recipe: DemoRecipe, progress=print) -> None:
    """Stage 0: the vision tower (and the dense probes) alone, on single frames: per-token colour / shape
    fractions and position, per-object shape and colour. Teaches the one-layer tower to see shapes before
    the language model starts reading it (the LM stages never recover this from answer tokens alone)."""
    import torch

    params = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_lr, betas=(0.9, 0.98), weight_decay=0.0)
    stage = Stage("stage 0", 0, recipe.vision_steps, recipe.vision_lr, 20)
    started = time.perf_counter()
    model.train()
    for step in range(stage.steps):
        frames = [rendered_frame(vision_seed(recipe, step, k), recipe)
                  for k in range(recipe.vision_frames_per_step)]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(stage, step)
        pixel_values = torch.from_numpy(np.concatenate([f.pixel_values for f in frames]))
        positions = torch.from_numpy(np.concatenate([f.position_ids for f in frames]))
        encoded = model.model.get_video_features(pixel_values, positions,
                                                 num_frames_per_video=torch.ones(len(frames), dtype=torch.long),
                                                 return_dict=True)
        features = encoded.last_hidden_state
        per_frame = frames[0].soft_tokens[0]
        loss = aux_loss(heads, features, frames, recipe.outline_weight) + object_loss(
            heads, features, np.concatenate([f.shape_targets for f in frames]),
            np.concatenate([f.colour_targets for f in frames]), per_frame)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step + 1 == stage.steps:
            progress(f"vision step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - started:6.0f}s")


def _optimizer(model, heads, recipe: DemoRecipe, stage: Stage):
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(heads.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=stage.lr, betas=(0.9, 0.98))


def _full_losses(model, heads, recipe, clips, prompts, pad, rng, probes: bool, position: bool):
    """``shared_prefix=False`` (the shipped model's recipe): every question as its own full sequence."""
    input_ids, labels, mask, owners, keep = _full_batch(clips, prompts, rng, pad)
    logits, features = _full_forward(model, clips, input_ids, mask, owners, keep)
    loss, ok = answer_loss_and_hits(logits, labels[:, -keep:])
    return loss, ok, {"aux": (recipe.aux_weight, aux_loss(heads, features, clips))}


def _shared_losses(model, heads, recipe, clips, prompts, pad, rng, probes: bool, position: bool):
    """Every question on its clip's shared prefix, plus the training aids the recipe turns on (the position
    aids only where ``position``)."""
    import torch

    track_weight = recipe.track_weight if position else 0.0

    batches = [clip_batch(c, prompts, rng, pad, recipe.every_question) for c in clips]
    probe_layer = recipe.lm_probe_layer if probes and recipe.lm_probe_weight else None
    outputs, features = _forward_shared(model, clips, batches, probe_layer,
                                        recipe.track_layer if track_weight else None,
                                        recipe.attend_layer if recipe.attend_weight else None,
                                        recipe.motion_layer if track_weight and recipe.track_motion
                                        and recipe.motion_layer else None)
    logits = torch.cat([o[0][:, :-1].reshape(-1, o[0].shape[-1]) for o in outputs])
    labels = torch.cat([b.labels[:, 1:].reshape(-1) for b in batches])
    loss = answer_loss(logits, labels, prompts.decision_ids if recipe.decision_weight != 1.0 else (),
                       recipe.decision_weight)
    ok = torch.cat([answer_loss_and_hits(o[0], b.labels)[1] for o, b in zip(outputs, batches)])
    aids = {"aux": (recipe.aux_weight, aux_loss(heads, features, clips, recipe.outline_weight))}
    if probe_layer:
        aids["probe"] = (recipe.lm_probe_weight, lm_probe_loss(heads, [o[1] for o in outputs], clips,
                                                                   recipe.lm_probe_xy if position else 0.0))
    if track_weight:
        aids["track"] = (track_weight, track_loss(heads, outputs, batches, clips, recipe.track_motion))
    if recipe.attend_weight:
        aids["attend"] = (recipe.attend_weight, attention_loss(
            [o[3] for o in outputs], batches, clips,
            ("colour", "shape", "direction") + (("describe",) if recipe.attend_describe else ())))
    return loss, ok, aids


def _train_loop(model, heads, optimizer, recipe, stage: Stage, prompts, pad, rng, work: Path, pool, progress,
                probes: bool = False, position: bool = True) -> dict:
    import torch

    accuracy: dict = {}
    eval_clips = [encode_clip(s, recipe, work) for s in held_out_specs(recipe.eval_clips, offset=900_000)]
    stream = _clip_stream(recipe, stage, work, pool)
    started = time.perf_counter()
    losses = _shared_losses if recipe.shared_prefix else _full_losses
    for step in range(stage.steps):
        clips = [next(stream) for _ in range(recipe.clips_per_step)]
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(stage, step)
        loss, ok, aids = losses(model, heads, recipe, clips, prompts, pad, rng, probes, position)
        optimizer.zero_grad(set_to_none=True)
        (loss + sum(weight * value for weight, value in aids.values())).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 0:
            progress(f"step {stage.first_step + step:5d}  loss {loss.item():.4f}  "
                     + "".join(f"{name} {value.item():.3f}  " for name, (_, value) in aids.items())
                     + f"batch exact {ok.float().mean():.2f}  {time.perf_counter() - started:6.0f}s")
        if (step + 1) % recipe.eval_every == 0 or step + 1 == stage.steps:
            accuracy = evaluate(model, eval_clips, prompts, pad)
            progress(f"held-out exact match @ {stage.first_step + step + 1}: "
                     + "  ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    return accuracy
