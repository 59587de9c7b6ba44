"""The losses: answer tokens (the objective) and the training aids whose probes are thrown away after
training — dense vision targets, colour / shape / position probes on the language model's video tokens,
the track and motion probes, and attention supervision."""
from __future__ import annotations

import numpy as np

from .. import synthetic
from .data import ClipBatch, EncodedClip, clip_video_id, referent_tokens, track_targets
from .recipe import DemoRecipe


def attention_loss(weights: list, batches: list[ClipBatch], clips: list[EncodedClip],
                   kinds: tuple[str, ...] = ("colour", "shape", "direction")):
    """-log of the attention mass head 0 (head 1) of ``attend_layer`` puts on the asked-about object's video
    tokens in the first (last) frame, averaged over answer positions; colour, shape and direction questions
    (their object is named in the question), with "describe" in ``kinds`` also the mover of a description.
    ``weights``: per clip, the suffix call's [Q, heads, S, P + S]."""
    import torch

    losses = []
    for attn, batch, clip in zip(weights, batches, clips):
        video = torch.nonzero(batch.prefix[0] == clip_video_id()).squeeze(-1)
        for row, (kind, index) in enumerate(zip(batch.kinds, batch.referents)):
            if index is None or kind not in kinds:
                continue
            queries = torch.nonzero(batch.labels[row, 1:] != -100).squeeze(-1)
            for head, frame in ((0, 0), (1, len(clip.soft_tokens) - 1)):
                tokens = referent_tokens(clip, index, frame)
                if len(tokens):
                    mass = attn[row, head][queries][:, video[torch.from_numpy(tokens)]].sum(-1)
                    losses.append(-torch.log(mass.float() + 1e-4).mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


def track_loss(heads, outputs, batches: list[ClipBatch], clips: list[EncodedClip], motion_weight: float = 0.0):
    """Mean squared error of the track probe over every answer position of every row with a referent; with
    ``motion_weight``, plus that weight times the binary cross-entropy of the motion probe (does the object
    move at all) over the same positions, read from the outputs' motion hidden state if they have one."""
    import torch
    import torch.nn.functional as F

    states, motion_states, targets, moving = [], [], [], []
    for output, batch, clip in zip(outputs, batches, clips):
        hidden = output[2]
        motion_hidden = output[4] if len(output) > 4 and output[4] is not None else hidden
        for row, index in enumerate(batch.referents):
            if index is None:
                continue
            positions = torch.nonzero(batch.labels[row, 1:] != -100).squeeze(-1)
            states.append(hidden[row, positions])
            motion_states.append(motion_hidden[row, positions])
            targets.append(torch.from_numpy(track_targets(clip, index)).expand(len(positions), 4))
            moving.append(torch.full((len(positions), 1), float(index == clip.spec.mover)))
    if not states:
        return torch.zeros(())
    loss = F.mse_loss(heads["track"](_rms(torch.cat(states))), torch.cat(targets))
    if motion_weight:
        loss = loss + motion_weight * F.binary_cross_entropy_with_logits(heads["motion"](_rms(torch.cat(motion_states))),
                                                                         torch.cat(moving))
    return loss


def _aux_heads(recipe: DemoRecipe, position: bool = True):
    """Linear probes on the vision tower's pooled soft tokens (colour, shape, position). A training aid
    only: dense targets from the renderer teach the small vision tower in far fewer steps; the probes
    are thrown away and the exported model is a plain Gemma 4."""
    import torch

    return torch.nn.ModuleDict({
        "colour": torch.nn.Linear(recipe.vision_hidden, len(synthetic.COLORS) + 1),
        "shape": torch.nn.Linear(recipe.vision_hidden, len(synthetic.SHAPES) + 1),
        "xy": torch.nn.Linear(recipe.vision_hidden, 2),
        "outline": torch.nn.Linear(recipe.vision_hidden, 3),
        "object_colour": torch.nn.Linear(recipe.vision_hidden, len(synthetic.COLORS)),
        "object_shape": torch.nn.Linear(recipe.vision_hidden, len(synthetic.SHAPES)),
        "lm_colour": torch.nn.Linear(recipe.text_hidden, len(synthetic.COLORS) + 1),
        "lm_shape": torch.nn.Linear(recipe.text_hidden, len(synthetic.SHAPES) + 1),
        "track": torch.nn.Linear(recipe.text_hidden, 4),
        # only when used: an extra head draws from torch's RNG and would change every later stage's start
        **({"lm_xy": torch.nn.Linear(recipe.text_hidden, 2)} if recipe.lm_probe_xy and position else {}),
        **({"motion": torch.nn.Linear(recipe.text_hidden, 1)} if recipe.track_motion and position else {}),
    })


def _rms(x):
    import torch

    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def object_loss(heads, features, shape_targets: np.ndarray, colour_targets: np.ndarray, tokens_per_frame: int):
    """Training aid: per frame and object, the soft tokens' features averaged with the object's coverage
    of each token as weight, classified into the object's shape and colour (a whole object, not a cell)."""
    import torch
    import torch.nn.functional as F

    x = _rms(features)
    shape = torch.from_numpy(shape_targets[:, 1:])
    colour = torch.from_numpy(colour_targets[:, 1:])
    pooled, shape_class, colour_class = [], [], []
    for start in range(0, len(x), tokens_per_frame):
        frame = slice(start, start + tokens_per_frame)
        for k in range(shape.shape[1]):
            weight = shape[frame, k]
            if weight.sum() < 0.2:
                continue
            pooled.append((weight[:, None] * x[frame]).sum(0) / weight.sum())
            shape_class.append(k)
            colour_class.append(int((weight[:, None] * colour[frame]).sum(0).argmax()))
    if not pooled:
        return x.new_zeros(())
    pooled = torch.stack(pooled)
    return (F.cross_entropy(heads["object_shape"](pooled), torch.tensor(shape_class))
            + F.cross_entropy(heads["object_colour"](pooled), torch.tensor(colour_class)))


def lm_probe_loss(heads, hidden: list, clips: list[EncodedClip], xy_weight: float = 0.0):
    """Training aid: colour / shape area fractions under every video token, read linearly from the language
    model's hidden state there (what its attention later reads at the object the question names), and with
    ``xy_weight`` the cell's (x, y): the values fetched from the first and the last frame then carry where
    the object is, which a direction answer needs."""
    import torch
    import torch.nn.functional as F

    x = _rms(torch.cat(hidden))
    loss = 0.0
    for name in ("colour", "shape"):
        target = torch.from_numpy(np.concatenate([getattr(c, f"{name}_targets") for c in clips]))
        loss = loss + F.cross_entropy(heads[f"lm_{name}"](x), target)
    if xy_weight:
        target = torch.from_numpy(np.concatenate([c.xy_targets for c in clips]))
        loss = loss + xy_weight * F.mse_loss(heads["lm_xy"](x), target)
    return loss


def aux_loss(heads, features, clips: list[EncodedClip], outline_weight: float = 0.0):
    import torch
    import torch.nn.functional as F

    x = features.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    loss = 0.0
    for name in ("colour", "shape"):
        target = torch.from_numpy(np.concatenate([getattr(c, f"{name}_targets") for c in clips]))
        loss = loss + F.cross_entropy(heads[name](x), target)
    target = torch.from_numpy(np.concatenate([c.xy_targets for c in clips]))
    loss = loss + 10.0 * F.mse_loss(heads["xy"](x), target)
    if outline_weight:
        target = torch.from_numpy(np.concatenate([c.outline for c in clips]))
        loss = loss + outline_weight * F.mse_loss(heads["outline"](x), target)
    return loss


def answer_loss_and_hits(logits, labels):
    """Mean cross-entropy over answer tokens, and per row whether greedy decoding reproduces the answer
    (teacher forcing: every answer token is the argmax given the correct prefix)."""
    import torch.nn.functional as F

    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]).float(), shift_labels.reshape(-1),
                           ignore_index=-100)
    wrong = (shift_logits.argmax(-1) != shift_labels) & (shift_labels != -100)
    return loss, ~wrong.any(dim=1)


def answer_loss(logits, labels, weighted_ids=(), weight: float = 1.0):
    """Cross-entropy over answer tokens (``labels`` -100 elsewhere); tokens whose label is in ``weighted_ids``
    count ``weight`` times (the mean still divides by the number of answer tokens)."""
    import torch
    import torch.nn.functional as F

    if not len(weighted_ids):
        return F.cross_entropy(logits.float(), labels, ignore_index=-100)
    per_token = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="none")
    scale = torch.where(torch.isin(labels, torch.tensor(list(weighted_ids))), weight, 1.0)
    return (per_token * scale).sum() / (labels != -100).sum().clamp(min=1)
