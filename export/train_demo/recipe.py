"""The demo's recipe: :class:`DemoRecipe` (everything that determines the trained weights) and the seeds
that pick its training and held-out clips.

The defaults are the recipe of the shipped model (``edgevid/demo``), so ``edgevid export --demo`` rebuilds
it; ``--set FIELD=VALUE`` overrides a field for experiments. What each aid did when measured is in
docs/demo-model.md."""
from __future__ import annotations

from dataclasses import dataclass

from .. import synthetic


HELD_OUT_SEED_BASE = 10_000_000      # held-out clips use seeds from here on; training never reaches it


TRAIN_SEED_STRIDE = 100_003


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the trained demo (change it and the shipped files must be rebuilt).

    The defaults are the recipe of the shipped model (``edgevid/demo``), so ``edgevid export --demo``
    rebuilds it; ``--set FIELD=VALUE`` overrides a field for experiments (what the aids did when measured:
    docs/demo-model.md)."""
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
    # supports, of stage4_clips_per_step clips, the moves / stands answer tokens weighted
    # stage4_decision_weight (the top layers learn the decision only when it comes often enough)
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
    # nearly every soft token one shared, position-independent vector; these give the tokens their content
    vision_position_std: float = 0.2     # position-embedding table ~ N(0, std^2); 0 keeps Gemma 4's init
    vision_patch_std: float = 0.05       # patch input projection ~ N(0, std^2)
    vision_post_norm: float = 0.1        # vision layers' post-attention / post-MLP norm weights
    # start_language_model: larger token / soft-token embeddings at the residual stream's scale (an option,
    # off: it did not help)
    text_embed_std: float = 0.0          # token embeddings (x sqrt(hidden) in Gemma); 0.1 -> rms ~0.8
    soft_token_std: float = 0.0          # embed_vision projection of the (normalised) soft tokens
    text_post_norm: float = 0.0          # decoder layers' post-attention / MLP / per-layer-input norm weights
    # stage 0 (pretrain_vision): the vision tower alone on single rendered frames, dense targets only
    vision_steps: int = 1600
    vision_frames_per_step: int = 8
    vision_lr: float = 3e-3
    outline_weight: float = 0.0          # outline_targets in the dense vision aid (all stages; off: no help)
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
    # tokens that decide it ("moves", "stands", "stand": rare among a step's answer tokens)
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


def train_seed(recipe: DemoRecipe, step: int, k: int) -> int:
    return (recipe.seed * 7_919 + step * recipe.clips_per_step + k) % HELD_OUT_SEED_BASE


def vision_seed(recipe: DemoRecipe, step: int, k: int) -> int:
    return (recipe.seed * 7_919 + 5_000_000 + step * recipe.vision_frames_per_step + k) % HELD_OUT_SEED_BASE


def held_out_specs(count: int, offset: int = 0) -> list[synthetic.ClipSpec]:
    return [synthetic.make_clip_spec(HELD_OUT_SEED_BASE + offset + i) for i in range(count)]
