"""Train the shipped demo model: a tiny Gemma 4 that answers questions about synthetic shape clips.

    python -m edgevid_export.train_demo --output build/demo          # ~95 min of one CPU core
    build_trained_demo(output_dir, seed=0, progress=print)           # the same from Python

Steps: (1) a Gemma 4 tokenizer laid out like the demo helper's (same special tokens, ids, chat template,
byte-fallback BPE) whose merges are learned over the demo corpus plus the task's sentences, so every task
word is one piece; (2) a ``Gemma4ForConditionalGeneration`` of the real architecture (per-layer inputs,
KV sharing, sliding + full attention, vision tower with patch 16 / pooling 3), small enough to learn the
task in minutes, its vision tower re-initialised so soft tokens carry patch content and position;
(3) stage 0: the vision tower alone on single rendered frames with dense targets (colour / shape per soft
token and per object, position); (4) stages 1 and 2 on freshly generated clips (``edgevid_export.synthetic``)
that go through the runtime's own path: H.264 MP4 -> ``edgevid.media.sample_video`` ->
``edgevid.model.preprocess`` -> the chat template with per-frame ``mm:ss <|image>…<image|>`` expansion; the
loss covers answer tokens only, plus training aids whose probes are thrown away (see ``DemoRecipe``); every
clip's five questions share one forward of its prompt prefix through the KV cache; stage 3 adds the position
aids, stage 4 trains only the top decoder layers on many more moves / stands answers; (5) ``save_pretrained``
into ``output/checkpoint`` and ``export_model`` into ``output``.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import synthetic

HELD_OUT_SEED_BASE = 10_000_000      # held-out clips use seeds from here on; training never reaches it
TRAIN_SEED_STRIDE = 100_003


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the trained demo (change it and the shipped files must be rebuilt).

    The defaults are the recipe of the shipped model (``edgevid/demo``), so ``edgevid export --demo``
    rebuilds it; ``--set FIELD=VALUE`` overrides a field for experiments (measured in the trained-demo
    issue's notes)."""
    seed: int = 0
    num_frames: int = 4                  # frames sampled per video, recorded in edgevid.json / processor_config
    max_soft_tokens: int = 70            # per frame (Gemma 4's smallest budget; 160x120 -> 63 tokens)
    steps: int = 2000                    # stage 1
    clips_per_step: int = 2              # every clip is asked one question of each kind (5 sequences)
    lr: float = 2e-3
    warmup: int = 40
    weight_decay: float = 0.01
    vocab_size: int = 1024
    text_hidden: int = 64
    text_heads: int = 2
    text_kv_heads: int = 1               # Gemma 4 E2B shares one key/value head between all query heads
    vision_hidden: int = 64
    vision_layers: int = 1
    eval_every: int = 200
    eval_clips: int = 12
    sliding_window: int = 512            # > the ~290-token prompt: every layer sees the first frame
    single_shape_steps: int = 0          # curriculum option: one shape per clip for the first steps
    stage2_steps: int = 1200
    stage2_lr: float = 1e-3
    # stage 3 (0: off): one more stretch on the finished model, the LM probes back on; the position aids
    # (track_weight, lm_probe_xy) act from stage position_stage on (1: all stages)
    stage3_steps: int = 2400
    stage3_lr: float = 1e-3
    position_stage: int = 3
    # stage 4 (0: off; needs stage 3): only decoder layers >= stage4_from_layer and the final norm train,
    # everything that finds the objects and reads their positions stays as it is; every question a clip
    # supports, of stage4_clips_per_step clips (direction about each shape: ~15 moves / stands answers per
    # step where stage 3 has ~0.4), those answer tokens weighted stage4_decision_weight
    stage4_steps: int = 600
    stage4_lr: float = 3e-3
    stage4_from_layer: int = 3
    stage4_clips_per_step: int = 6
    stage4_decision_weight: float = 3.0
    aux_weight: float = 0.5              # dense vision targets (training aid, see aux_loss)
    # shared_prefix: a clip's questions run on one forward of its prompt prefix (template + video) through
    # the KV cache (same gradients as separate sequences, fewer tokens per step); the LM-side aids need it.
    # False: every question as its own full sequence (the first shipped model's recipe)
    shared_prefix: bool = True
    every_question: bool = False         # ask every question a clip supports (synthetic.all_questions)
    # start_vision_tower: Gemma 4's default init (position table all ones, 0.02 patch projection) makes
    # ~97% of every soft token one shared, position-independent vector; these give the tokens their content
    vision_position_std: float = 0.2     # position-embedding table ~ N(0, std^2); 0 keeps Gemma 4's init
    vision_patch_std: float = 0.05       # patch input projection ~ N(0, std^2)
    vision_post_norm: float = 0.1        # vision layers' post-attention / post-MLP norm weights
    # start_language_model: at Gemma 4's init (0.02) token and soft-token embeddings enter the residual
    # stream at rms ~0.16 while the first layer adds ~1.7 (an option; measured no better, off)
    text_embed_std: float = 0.0          # token embeddings (x sqrt(hidden) in Gemma); 0.1 -> rms ~0.8
    soft_token_std: float = 0.0          # embed_vision projection of the (normalised) soft tokens
    text_post_norm: float = 0.0          # decoder layers' post-attention / MLP / per-layer-input norm weights
    # stage 0 (pretrain_vision): the vision tower alone on single rendered frames, dense targets only
    # (1 layer: held-out object-shape probe 49 % after 400 steps, 91 % after 1600)
    vision_steps: int = 1600
    vision_frames_per_step: int = 8
    vision_lr: float = 3e-3
    outline_weight: float = 0.0          # outline_targets in the dense vision aid (all stages; no help, off)
    # stage 1 only: colour / shape probes on the language model's hidden state at every video token
    lm_probe_layer: int = 2              # hidden_states index (output of decoder layer lm_probe_layer - 1)
    lm_probe_weight: float = 0.5
    lm_probe_xy: float = 10.0            # weight of the cell's (x, y) in that probe (values then carry position)
    # track probe (see track_loss): at every answer position, the hidden state after track_layer decoder
    # layers gives the (x, y) of the object the question is about in the first and the last frame (off)
    track_layer: int = 3
    track_weight: float = 10.0
    # with the track probe: whether that object moves at all (a logit from the same hidden state; the
    # answer's "moves" / "stands" token otherwise stays at its prior), and an extra weight on the answer
    # tokens that decide it ("moves", "stands", "stand": one token in ~80 per step)
    track_motion: float = 0.0
    motion_layer: int = 0                # hidden_states index the motion probe reads (0: track_layer's)
    decision_weight: float = 1.0
    # attention supervision (see attention_loss): in decoder layer attend_layer, at every answer position,
    # head 0 looks at the asked-about object in the first frame and head 1 at it in the last frame
    attend_layer: int = 2
    attend_weight: float = 0.2
    attend_describe: bool = False        # also "What happens in this video?" (its object: the mover)

    def __post_init__(self):
        aids = ("every_question", "lm_probe_weight", "track_weight", "attend_weight")
        if not self.shared_prefix and any(getattr(self, name) for name in aids):
            raise ValueError(f"{', '.join(aids)} need shared_prefix=True")


# The first shipped model's recipe (full sequences, Gemma 4's own init, no stage 0, dense vision aid only).
FIRST_RECIPE = DemoRecipe(sliding_window=256, eval_every=100, shared_prefix=False, vision_position_std=0.0,
                          vision_patch_std=0.0, vision_post_norm=0.0, vision_steps=0, lm_probe_weight=0.0,
                          attend_weight=0.0, track_weight=0.0, lm_probe_xy=0.0, stage3_steps=0, stage4_steps=0)
RECIPES = {"shipped": DemoRecipe(), "first": FIRST_RECIPE}


# ----------------------------------------------------------------------------------------------- tokenizer

def task_corpus() -> str:
    """Sentences the task uses: every question form with every referent, every answer, frame timestamps."""
    lines = []
    for kind, forms in synthetic.QUESTION_FORMS.items():
        for form in forms:
            for shape in synthetic.SHAPES:
                for colour in synthetic.COLORS:
                    lines.append(form.format(kind=shape, colour=colour))
    for shape in synthetic.SHAPES:
        for colour in synthetic.COLORS:
            lines += [f"a {colour} {shape} moves {p}." for p in synthetic.PATHS.values()]
            lines += [f"a {colour} {shape} stands still.", f"the {shape} is {colour}.",
                      f"the {colour} shape is a {shape}."]
            lines += [f"the {shape} moves {p}." for p in synthetic.PATHS.values()] + [f"the {shape} stands still."]
    lines += ["there is one shape.", "there are two shapes.", "there are three shapes.",
              "two shapes stand still.", "three shapes stand still."]
    lines += [" ".join(f"{m:02d}:{s:02d}" for s in range(60)) for m in range(2)]
    return "\n".join(lines * 3)


def build_task_tokenizer(out_dir: str | Path):
    """The demo tokenizer (``edgevid_export.demo`` layout: Gemma 4 special tokens at the same ids, chat
    template, processor_config) with BPE merges learned over the demo corpus plus :func:`task_corpus`."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import GemmaTokenizer

    from . import demo
    from .demo_corpus import DEMO_CORPUS
    from .demo_template import DEMO_CHAT_TEMPLATE

    fixed = [text for _, text in demo.SPECIAL_TOKENS] + list(demo.BYTE_TOKENS)
    trainer_tok = Tokenizer(BPE(unk_token=None))
    trainer_tok.normalizer = normalizers.Replace(" ", demo.SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(demo.SPACE, behavior="merged_with_next")
    trainer = BpeTrainer(vocab_size=demo.DEMO_VOCAB_SIZE - len(fixed), show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator((task_corpus() + "\n" + DEMO_CORPUS).splitlines() + ["\n"], trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab = {text: i for i, text in enumerate(fixed)}
    for piece in sorted(model["vocab"], key=model["vocab"].get):
        if len(vocab) < demo.DEMO_VOCAB_SIZE:
            vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = {name: text for name, text in demo.SPECIAL_TOKENS if name not in demo._STANDARD}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=False,
                               padding_side="left", extra_special_tokens=named, chat_template=DEMO_CHAT_TEMPLATE)
    tokenizer.save_pretrained(out)
    demo._check_ids(out / "tokenizer.json")
    return tokenizer


def write_processor_config(out_dir: str | Path, recipe: DemoRecipe) -> Path:
    """Gemma 4's processor_config (demo helper's writer) with this model's frames per video."""
    from .demo import write_processor_config as write_default

    path = write_default(out_dir)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["video_processor"]["num_frames"] = recipe.num_frames
    config["video_processor"]["max_soft_tokens"] = recipe.max_soft_tokens
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- model

def demo_config(recipe: DemoRecipe):
    """E2B-shaped, tiny: PLE, KV sharing (last 2 of 5 layers), sliding + full attention with a larger
    full-attention head dim, logit soft-capping, vision tower with the real patch 16 / pooling 3."""
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    from .demo import demo_token_ids

    ids = demo_token_ids()
    eos = [ids.eos, ids.end_of_turn]
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    text = Gemma4TextConfig(
        vocab_size=recipe.vocab_size, hidden_size=recipe.text_hidden, intermediate_size=2 * recipe.text_hidden,
        num_hidden_layers=len(layer_types), layer_types=layer_types, num_attention_heads=recipe.text_heads,
        num_key_value_heads=recipe.text_kv_heads, head_dim=recipe.text_hidden // recipe.text_heads,
        global_head_dim=2 * recipe.text_hidden // recipe.text_heads, sliding_window=recipe.sliding_window, max_position_embeddings=4096,
        hidden_size_per_layer_input=16, vocab_size_per_layer_input=recipe.vocab_size, num_kv_shared_layers=2,
        final_logit_softcapping=30.0, pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos,
        initializer_range=0.02,
    )
    vision = Gemma4VisionConfig(
        hidden_size=recipe.vision_hidden, intermediate_size=2 * recipe.vision_hidden, num_hidden_layers=recipe.vision_layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, patch_size=16, pooling_kernel_size=3,
        position_embedding_size=256, initializer_range=0.02,
    )
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        boi_token_id=ids.boi, eoi_token_id=ids.eoi, image_token_id=ids.image, video_token_id=ids.video,
        audio_token_id=ids.audio, boa_token_id=ids.boa, eoa_token_index=ids.eoa,
        pad_token_id=ids.pad, bos_token_id=ids.bos, eos_token_id=eos, tie_word_embeddings=True,
    )


# ----------------------------------------------------------------------------------------------- data

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


def frame_timestamp(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


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


def train_seed(recipe: DemoRecipe, step: int, k: int) -> int:
    return (recipe.seed * 7_919 + step * recipe.clips_per_step + k) % HELD_OUT_SEED_BASE


def vision_seed(recipe: DemoRecipe, step: int, k: int) -> int:
    return (recipe.seed * 7_919 + 5_000_000 + step * recipe.vision_frames_per_step + k) % HELD_OUT_SEED_BASE


def held_out_specs(count: int, offset: int = 0) -> list[synthetic.ClipSpec]:
    return [synthetic.make_clip_spec(HELD_OUT_SEED_BASE + offset + i) for i in range(count)]


# ----------------------------------------------------------------------------------------------- training

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


def clip_video_id() -> int:
    from .demo import demo_token_ids

    return demo_token_ids().video


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

    from .parity import cache_of, with_cache

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

    from .demo import demo_token_ids

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


def start_vision_tower(model, recipe: DemoRecipe):
    """Re-initialise the vision tower so its soft tokens carry the patch content and position: a random
    position table (Gemma 4 starts it at all ones, the same vector everywhere), a larger patch projection,
    and small post-norm weights so the residual stream keeps the patch embedding at the start."""
    import torch

    vision = model.model.vision_tower
    with torch.no_grad():             # a field left at 0 keeps Gemma 4's own initialisation
        embedder = vision.patch_embedder
        if recipe.vision_position_std:
            embedder.position_embedding_table.normal_(0.0, recipe.vision_position_std)
        if recipe.vision_patch_std:
            embedder.input_proj.weight.normal_(0.0, recipe.vision_patch_std)
        if recipe.vision_post_norm:
            for layer in vision.encoder.layers:
                layer.post_attention_layernorm.weight.fill_(recipe.vision_post_norm)
                layer.post_feedforward_layernorm.weight.fill_(recipe.vision_post_norm)
    return model


def start_language_model(model, recipe: DemoRecipe):
    """Token embeddings and the soft-token projection at a scale comparable to what the layers add."""
    import torch

    embed = model.model.language_model.embed_tokens
    with torch.no_grad():             # a field left at 0 keeps Gemma 4's own initialisation
        if recipe.text_embed_std:
            embed.weight.normal_(0.0, recipe.text_embed_std)
            if embed.padding_idx is not None:
                embed.weight[embed.padding_idx].zero_()
        if recipe.soft_token_std:
            model.model.embed_vision.embedding_projection.weight.normal_(0.0, recipe.soft_token_std)
        if recipe.text_post_norm:
            for layer in model.model.language_model.layers:
                for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm,
                             layer.post_per_layer_input_norm):
                    norm.weight.fill_(recipe.text_post_norm)
    return model


def rendered_frame(seed: int, recipe: DemoRecipe) -> EncodedClip:
    """One frame of a training clip, drawn and preprocessed directly (no video file): stage 0's input."""
    from edgevid.model.preprocess import preprocess_video

    spec = synthetic.make_clip_spec(seed)
    index = int(np.random.default_rng(seed).integers(spec.frame_count))
    vision = preprocess_video(synthetic.render_frame(spec, index)[None], max_soft_tokens=recipe.max_soft_tokens)
    colour, shape, xy = dense_targets(spec, [index], vision.position_ids)
    return EncodedClip(spec, vision.pixel_values, vision.position_ids, list(vision.soft_tokens), np.zeros(1),
                       colour, shape, xy, np.array([index]), outline_targets(spec, [index], vision.position_ids))


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


# ----------------------------------------------------------------------------------------------- build

def save_checkpoint(model, recipe: DemoRecipe, tokenizer_dir: Path, checkpoint_dir: Path) -> Path:
    import shutil

    from .demo import demo_token_ids

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
    from .convert import export_model

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

    from .model_folder import SIDE_FILES

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for checkpoint/ and the exported model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=DemoRecipe.steps)
    parser.add_argument("--precisions", default="fp32,q4")
    parser.add_argument("--stage1-checkpoint", metavar="DIR", default=None,
                        help="resume after stage 1 (a checkpoint built with --stage2-steps 0 and the same recipe)")
    parser.add_argument("--stage2-steps", type=int, default=DemoRecipe.stage2_steps)
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="start from a checkpoint saved after stage --resume-after of the same recipe")
    parser.add_argument("--resume-after", type=int, default=2)
    parser.add_argument("--package", metavar="DIR",
                        help="also copy the runtime files (fp32 + q4) and the sample clip here, e.g. edgevid/demo")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="shipped",
                        help="shipped: the recipe of edgevid/demo (default); first: the first shipped model's")
    parser.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                        help="override a DemoRecipe field (experiments; the shipped model uses the defaults)")
    args = parser.parse_args(argv)
    recipe = replace(RECIPES[args.recipe], seed=args.seed, steps=args.steps, stage2_steps=args.stage2_steps)
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in DemoRecipe.__dataclass_fields__:
            parser.error(f"--set {item}: DemoRecipe has no field {name!r}")
        kind = type(getattr(recipe, name))
        recipe = replace(recipe, **{name: value.lower() in ("1", "true", "yes") if kind is bool else kind(value)})
    folder = build_trained_demo(args.output, seed=args.seed, recipe=recipe, stage1_checkpoint=args.stage1_checkpoint,
                                resume=args.resume, resume_after=args.resume_after,
                                precisions=tuple(args.precisions.split(",")))
    if args.package:
        package_demo(folder, args.package)


if __name__ == "__main__":
    main()
