"""Training data: synthetic clips (``edgevid_export.synthetic``) through the runtime's own path (H.264 MP4
-> ``edgevid.media.sample_video`` -> ``edgevid.model.preprocess`` -> the chat template with per-frame
``mm:ss`` expansion), the dense targets of the training aids, and batches whose questions share one
prompt prefix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevid.model.prompt import format_timestamp as frame_timestamp   # the prompt's own mm:ss

from .. import synthetic
from .recipe import DemoRecipe, train_seed


@dataclass
class EncodedClip:
    """One clip as the runtime sees it: preprocessed frames plus the prompt pieces per frame."""
    spec: synthetic.ClipSpec
    pixel_values: np.ndarray      # f32 [N, P, 768]
    position_ids: np.ndarray      # i64 [N, P, 2]
    soft_tokens: list[int]
    timestamps: np.ndarray        # seconds [N]
    colour_targets: np.ndarray    # f32 [N * soft tokens, colours + 1] area fractions (training aid)
    shape_targets: np.ndarray     # f32 [N * soft tokens, shapes + 1]
    xy_targets: np.ndarray        # f32 [N * soft tokens, 2]
    frame_indices: np.ndarray | None = None   # which frames of the clip were sampled
    outline: np.ndarray | None = None         # f32 [N * soft tokens, 3] (training aid, see outline_targets)


def sample_frames(path: Path, num_frames: int):
    """The runtime's sampler: ``edgevid.media.sample_video`` -> SampledVideo."""
    from edgevid.media import sample_video

    return sample_video(str(path), num_frames=num_frames)


def encode_clip(spec: synthetic.ClipSpec, recipe: DemoRecipe, workdir: Path) -> EncodedClip:
    """Render, write H.264 MP4, sample and preprocess exactly as the runtime will."""
    from edgevid.model.preprocess import preprocess_video

    path = synthetic.write_mp4(workdir / f"clip_{spec.seed}.mp4", synthetic.render_clip(spec), spec.fps)
    sampled = sample_frames(path, recipe.num_frames)
    path.unlink()
    vision = preprocess_video(sampled.frames, max_soft_tokens=recipe.max_soft_tokens)
    colour, shape, xy = dense_targets(spec, sampled.indices, vision.position_ids)
    return EncodedClip(spec, vision.pixel_values, vision.position_ids, list(vision.soft_tokens),
                       sampled.timestamps, colour, shape, xy, np.asarray(sampled.indices),
                       outline_targets(spec, sampled.indices, vision.position_ids))


def dense_targets(spec: synthetic.ClipSpec, indices, position_ids: np.ndarray, pooling: int = 3):
    """Training aid: for every soft token (vision-output order: frame, then row-major cells of
    ``pooling`` x ``pooling`` patches), the area fractions of each colour / shape class under it and the
    cell's normalised (x, y) centre."""
    valid = position_ids[0, :, 0] >= 0
    cols = int(position_ids[0, valid, 0].max() + 1) // pooling
    rows = int(position_ids[0, valid, 1].max() + 1) // pooling
    cell = ((np.arange(spec.height) * rows // spec.height)[:, None] * cols
            + (np.arange(spec.width) * cols // spec.width)[None, :]).ravel()
    area = np.bincount(cell, minlength=rows * cols).astype(np.float32)[:, None]
    colour, shape = [], []
    for index in indices:
        colour_map, shape_map = synthetic.label_maps(spec, int(index))
        for maps, classes, out in ((colour_map, len(synthetic.COLORS) + 1, colour),
                                   (shape_map, len(synthetic.SHAPES) + 1, shape)):
            counts = np.zeros((rows * cols, classes), np.float32)
            np.add.at(counts, (cell, maps.ravel()), 1.0)
            out.append(counts / area)
    ys, xs = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(cols) + 0.5) / cols, indexing="ij")
    xy = np.tile(np.stack([xs, ys], -1).reshape(-1, 2), (len(indices), 1)).astype(np.float32)
    return np.concatenate(colour), np.concatenate(shape), xy


def outline_targets(spec: synthetic.ClipSpec, indices, position_ids: np.ndarray, pooling: int = 3) -> np.ndarray:
    """Training aid: for every soft token, the shapes' outline under it — mean over its pixels of the edge
    strength m and of m * (cos 2θ, sin 2θ) for the edge orientation θ (Sobel on the shape mask). Local
    evidence of the shape class a one-layer tower can learn: a square has only 0° / 90° edges, a triangle
    a 0° base and ±60° sides, a circle every orientation."""
    import cv2

    valid = position_ids[0, :, 0] >= 0
    cols = int(position_ids[0, valid, 0].max() + 1) // pooling
    rows = int(position_ids[0, valid, 1].max() + 1) // pooling
    cell = ((np.arange(spec.height) * rows // spec.height)[:, None] * cols
            + (np.arange(spec.width) * cols // spec.width)[None, :]).ravel()
    area = np.bincount(cell, minlength=rows * cols).astype(np.float32)
    out = []
    for index in indices:
        mask = (synthetic.label_maps(spec, int(index))[1] > 0).astype(np.float32)
        gx, gy = cv2.Sobel(mask, cv2.CV_32F, 1, 0, ksize=3) / 4, cv2.Sobel(mask, cv2.CV_32F, 0, 1, ksize=3) / 4
        m = np.sqrt(gx * gx + gy * gy)
        safe = np.where(m > 0, m, 1.0)
        channels = (m, (gx * gx - gy * gy) / safe, 2 * gx * gy / safe)
        out.append(np.stack([np.bincount(cell, weights=c.ravel(), minlength=rows * cols) / area
                             for c in channels], -1).astype(np.float32))
    return np.concatenate(out)


class PromptBuilder:
    """Chat template + video expansion + tokenisation, as the runtime's ``render_prompt`` does."""

    def __init__(self, tokenizer_dir: Path):
        import jinja2
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        config = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = (Path(tokenizer_dir) / "chat_template.jinja")
        source = template.read_text(encoding="utf-8") if template.exists() else config["chat_template"]
        self.template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(source)
        self.boi, self.eoi = config["boi_token"], config["eoi_token"]
        self.video = config.get("video_token", "<|video|>")
        self.end_of_turn = "<turn|>"

    def prompt_text(self, question: str, timestamps, soft_tokens) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.template.render(messages=messages, bos_token="<bos>", add_generation_prompt=True)
        frames = " ".join(f"{frame_timestamp(t)} {self.boi}{self.video * k}{self.eoi}"
                          for t, k in zip(timestamps, soft_tokens))
        return text.replace(self.video, frames, 1)

    def encode(self, question: str, answer: str | None, timestamps, soft_tokens) -> tuple[list[int], int]:
        """(ids, number of prompt ids); the answer ends with ``<turn|>``."""
        prompt = self.tokenizer.encode(self.prompt_text(question, timestamps, soft_tokens),
                                       add_special_tokens=False).ids
        if answer is None:
            return prompt, len(prompt)
        target = self.tokenizer.encode(answer + self.end_of_turn, add_special_tokens=False).ids
        return prompt + target, len(prompt)

    def prefix_length(self, ids) -> int:
        """Length of the part every question about one clip shares: up to the last ``<image|>``."""
        eoi = self.tokenizer.token_to_id(self.eoi)
        return len(ids) - list(reversed(ids)).index(eoi)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def decision_ids(self) -> tuple[int, ...]:
        """The answer words that say whether a shape moves ("moves", "stands", "stand")."""
        ids = []
        for word in ("moves", "stands", "stand"):
            pieces = self.tokenizer.encode(f"a {word}", add_special_tokens=False).ids
            if len(pieces) != 2:
                raise ValueError(f"{word!r} is not one token of the task tokenizer")
            ids.append(pieces[-1])
        return tuple(ids)


def _full_batch(clips: list[EncodedClip], prompts: PromptBuilder, rng: np.random.Generator, pad_id: int):
    """``shared_prefix=False``: one full sequence per (clip, question) pair; labels only on answer tokens."""
    import torch

    rows, starts, owners = [], [], []
    for c, clip in enumerate(clips):
        for qa in synthetic.questions_for(clip.spec, rng):
            ids, start = prompts.encode(qa.question, qa.answer, clip.timestamps, clip.soft_tokens)
            rows.append(ids), starts.append(start), owners.append(c)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, start) in enumerate(zip(rows, starts)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
        mask[i, :len(ids)] = 1
    keep = width - min(starts) + 1          # positions whose logits predict an answer token
    return input_ids, labels, mask, owners, keep


@dataclass
class ClipBatch:
    """Every question about one clip, sharing the clip's prompt prefix (template + video): ``prefix`` [1, P]
    runs once, its KV cache is repeated for the ``suffix`` rows [Q, S] (question, answer, right padding)."""
    prefix: "torch.Tensor"
    suffix: "torch.Tensor"
    labels: "torch.Tensor"       # -100 except answer tokens (and <turn|>)
    mask: "torch.Tensor"         # 1 on real suffix tokens
    kinds: list
    referents: list              # per row: index into spec.shapes of the object asked about, or None


def clip_batch(clip: EncodedClip, prompts: PromptBuilder, rng: np.random.Generator, pad_id: int,
               every_question: bool = False) -> ClipBatch:
    """One question of every kind about ``clip`` (``synthetic.questions_for``; ``every_question``: all of
    them, ``synthetic.all_questions``), split at the shared prefix; labels only on answer tokens (and <turn|>)."""
    import torch

    prefix, rows, kinds, referents = None, [], [], []
    questions = synthetic.all_questions if every_question else synthetic.questions_for
    for qa in questions(clip.spec, rng):
        ids, start = prompts.encode(qa.question, qa.answer, clip.timestamps, clip.soft_tokens)
        cut = prompts.prefix_length(ids)
        if prefix is None:
            prefix = ids[:cut]
        elif ids[:cut] != prefix:           # the question never changes the video part of the prompt
            raise RuntimeError("questions about one clip do not share their prompt prefix")
        rows.append((ids[cut:], start - cut))
        kinds.append(qa.kind)
        referents.append(referent(clip.spec, qa))
    width = max(len(r) for r, _ in rows)
    suffix = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        suffix[i, :len(ids)] = torch.tensor(ids)
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
        mask[i, :len(ids)] = 1
    return ClipBatch(torch.tensor([prefix]), suffix, labels, mask, kinds, referents)


def referent(spec: synthetic.ClipSpec, qa: synthetic.QA) -> int | None:
    """The shape a question is about: the one it names (colour, direction: by kind; shape: by colour), the
    mover for "what happens"; None for counting and for a still clip's description."""
    words = f" {qa.question.lower().replace('?', ' ').replace('.', ' ')} "
    for i, s in enumerate(spec.shapes):
        if (qa.kind in ("colour", "direction") and f" {s.kind} " in words) or \
                (qa.kind == "shape" and f" {s.colour} " in words):
            return i
    return spec.mover if qa.kind == "describe" else None


def track_targets(clip: EncodedClip, index: int) -> np.ndarray:
    """(x, y) of shape ``index`` in the first and the last sampled frame, as fractions of width / height."""
    spec, shape = clip.spec, clip.spec.shapes[index]
    out = []
    for frame in (clip.frame_indices[0], clip.frame_indices[-1]):
        x, y = synthetic.shape_center(shape, frame / max(spec.frame_count - 1, 1))
        out += [x / spec.width, y / spec.height]
    return np.array(out, np.float32)


def referent_tokens(clip: EncodedClip, index: int, frame: int, covered: float = 0.1) -> np.ndarray:
    """Indices (within the clip's soft tokens) of the tokens of ``frame`` that show shape ``index``."""
    per_frame = len(clip.shape_targets) // len(clip.soft_tokens)
    column = 1 + synthetic.SHAPES.index(clip.spec.shapes[index].kind)
    coverage = clip.shape_targets[frame * per_frame:(frame + 1) * per_frame, column]
    return frame * per_frame + np.nonzero(coverage > covered)[0]


def clip_video_id() -> int:
    from ..demo import demo_token_ids

    return demo_token_ids().video


def _encode_seed(args) -> EncodedClip:
    """Worker side of the clip pipeline (a top-level function so spawn-based pools can pickle it)."""
    seed, count, recipe, workdir = args
    return encode_clip(synthetic.make_clip_spec(seed, count=count), recipe, Path(workdir))


def _clip_stream(recipe: DemoRecipe, stage, workdir: Path, pool, ahead: int = 8):
    """Training clips in step order, rendered and encoded by worker processes at most ``ahead`` clips
    before the trainer (each clip holds ~8 MB of patches)."""
    from collections import deque

    jobs = ((train_seed(recipe, step, k), 1 if step < recipe.single_shape_steps else None, recipe, str(workdir))
            for step in range(stage.first_step, stage.first_step + stage.steps)
            for k in range(recipe.clips_per_step))
    if pool is None:
        yield from map(_encode_seed, jobs)
        return
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(_encode_seed, (job,)))
        if len(pending) > ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def rendered_frame(seed: int, recipe: DemoRecipe) -> EncodedClip:
    """One frame of a training clip, drawn and preprocessed directly (no video file): stage 0's input."""
    from edgevid.model.preprocess import preprocess_video

    spec = synthetic.make_clip_spec(seed)
    index = int(np.random.default_rng(seed).integers(spec.frame_count))
    vision = preprocess_video(synthetic.render_frame(spec, index)[None], max_soft_tokens=recipe.max_soft_tokens)
    colour, shape, xy = dense_targets(spec, [index], vision.position_ids)
    return EncodedClip(spec, vision.pixel_values, vision.position_ids, list(vision.soft_tokens), np.zeros(1),
                       colour, shape, xy, np.array([index]), outline_targets(spec, [index], vision.position_ids))
