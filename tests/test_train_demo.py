"""The demo trainer's building blocks (edgevid_export.train_demo), on a random-weight demo-sized Gemma 4.

The trainer runs every question about a clip on one shared prefix (template + video) through the KV cache;
these tests hold that to the plain full-sequence forward, so the speed-up cannot change what is learned.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgevid_export import synthetic, train_demo  # noqa: E402
from edgevid_export.demo import demo_token_ids  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import Gemma4ForConditionalGeneration

    recipe = dataclasses.replace(train_demo.DemoRecipe(), sliding_window=256)   # shorter than the prompt
    tokenizer_dir = tmp_path_factory.mktemp("tok")
    train_demo.build_task_tokenizer(tokenizer_dir)
    train_demo.write_processor_config(tokenizer_dir, recipe)
    torch.manual_seed(0)
    model = train_demo.start_vision_tower(Gemma4ForConditionalGeneration(train_demo.demo_config(recipe)), recipe)
    clips = [train_demo.encode_clip(synthetic.make_clip_spec(seed), recipe, tmp_path_factory.mktemp("clips"))
             for seed in (5, 6)]
    return recipe, train_demo.PromptBuilder(tokenizer_dir), model.eval(), clips


def test_shared_prefix_forward_equals_full_sequences(setup):
    """Answer logits from prefix-once + cached suffixes == each full prompt + answer run from scratch
    (with a 256-token sliding window, shorter than the ~290-token prompt, so the sliding layers' cache is
    cropped on the way)."""
    recipe, prompts, model, clips = setup
    pad = demo_token_ids().pad
    batches = [train_demo.clip_batch(c, prompts, np.random.default_rng(1), pad) for c in clips]
    with torch.no_grad():
        outputs, _ = train_demo._forward_shared(model, clips, batches)
        for clip, batch, (logits, *_) in zip(clips, batches, outputs):
            assert batch.kinds == list(synthetic.QUESTION_KINDS)
            for row in range(batch.suffix.shape[0]):
                length = int(batch.mask[row].sum())
                ids = torch.cat([batch.prefix[0], batch.suffix[row, :length]])[None]
                full = model(input_ids=ids, pixel_values_videos=torch.from_numpy(clip.pixel_values),
                             video_position_ids=torch.from_numpy(clip.position_ids),
                             num_frames_per_video=torch.tensor([clip.pixel_values.shape[0]])).logits
                expected = full[0, batch.prefix.shape[1]:]
                assert torch.allclose(logits[row, :length], expected, atol=1e-4), \
                    float((logits[row, :length] - expected).abs().max())
                answer = batch.labels[row] != -100
                assert answer.sum() >= 3 and bool((batch.suffix[row][answer] == batch.labels[row][answer]).all())


def test_prefix_is_the_video_part_of_the_prompt(setup):
    _, prompts, _, clips = setup
    ids, _ = prompts.encode("How many shapes are there?", None, clips[0].timestamps, clips[0].soft_tokens)
    cut = prompts.prefix_length(ids)
    assert ids[cut - 1] == prompts.tokenizer.token_to_id("<image|>")
    assert ids.count(demo_token_ids().video) == sum(clips[0].soft_tokens)
    assert demo_token_ids().video not in ids[cut:]


def test_track_targets_follow_the_named_shape(setup):
    _, _, _, clips = setup
    spec = synthetic.make_clip_spec(123, direction="right", count=2)
    clip = dataclasses.replace(clips[0], spec=spec, frame_indices=np.array([0, 23, 47, 71]))
    mover, other = spec.shapes
    qa = synthetic.question(spec, "direction", 0)
    assert train_demo.referent(spec, qa) == 0
    assert train_demo.referent(spec, synthetic.question(spec, "shape", 1)) == 1
    assert train_demo.referent(spec, synthetic.question(spec, "describe", 1)) == 0
    assert train_demo.referent(spec, synthetic.question(spec, "count", 1)) is None
    x0, y0, x1, y1 = train_demo.track_targets(clip, 0)
    assert x1 - x0 > 0.4 and abs(y1 - y0) < 1e-6
    assert np.allclose(train_demo.track_targets(clip, 1)[:2], train_demo.track_targets(clip, 1)[2:])
    assert np.allclose(train_demo.track_targets(clip, 0)[:2], [mover.start[0] / spec.width, mover.start[1] / spec.height])


def test_recipe_overrides_reject_unknown_fields(tmp_path):
    with pytest.raises(SystemExit):
        train_demo.main(["--output", str(tmp_path), "--set", "no_such_field=1"])


def test_shipped_recipe_is_the_default_and_aids_need_the_shared_prefix():
    """``edgevid export --demo`` trains DemoRecipe(), the recipe of the shipped model (its checkpoint records
    it); the first shipped model's recipe stays available, and the LM-side aids refuse to run without the
    shared prefix (the full-sequence path has no hooks for them)."""
    shipped = train_demo.RECIPES["shipped"]
    assert shipped == train_demo.DemoRecipe() and shipped.shared_prefix and shipped.attend_weight > 0
    assert shipped.sliding_window > 300 and shipped.vision_steps > 0
    first = train_demo.RECIPES["first"]
    assert not first.shared_prefix and first.sliding_window == 256 and not first.attend_weight
    with pytest.raises(ValueError, match="shared_prefix"):
        dataclasses.replace(first, track_weight=1.0)


def test_every_question_asks_about_each_shape():
    spec = synthetic.make_clip_spec(7, count=3, direction="up")
    qas = synthetic.all_questions(spec, np.random.default_rng(0))
    assert [qa.kind for qa in qas].count("colour") == 3 and [qa.kind for qa in qas].count("direction") == 3
    assert sum(qa.answer.endswith("moves from bottom to top.") for qa in qas if qa.kind == "direction") == 1
    assert len({qa.answer for qa in qas if qa.kind == "colour"}) == 3


def test_outline_targets_tell_square_edges_from_triangle_sides():
    """A square's edges are 0° / 90° (cos 2θ = ±1, sin 2θ = 0); a triangle's sides are ±60° (sin 2θ ≠ 0)."""
    recipe = train_demo.DemoRecipe()

    def outline(kind):
        spec = synthetic.ClipSpec(seed=0, shapes=(synthetic.Shape(kind, "red", 15, (80.0, 60.0), (80.0, 60.0)),),
                                  mover=None, direction="still", background=("solid", (128, 128, 128)))
        frame = train_demo.rendered_frame(0, recipe)
        target = train_demo.outline_targets(spec, [0], frame.position_ids)
        edges = target[:, 0] > 0.02
        return target[edges]

    square, triangle = outline("square"), outline("triangle")
    assert len(square) >= 4 and len(triangle) >= 3
    assert np.abs(square[:, 2]).max() < 0.25 * square[:, 0].max()
    straight = np.isclose(np.abs(square[:, 1]), square[:, 0], atol=0.01)   # one edge in the cell
    assert 2 <= straight.sum() < len(square)                                # corners mix 0° and 90°
    assert np.abs(triangle[:, 2]).max() > 0.4 * triangle[:, 0].max()


def test_position_probe_reads_the_cells_xy_only_when_asked(setup):
    """lm_probe_xy adds the cell's (x, y) to the language-model probe on video tokens (so the values the
    supervised heads fetch carry where the object is); at 0 the position head gets no gradient."""
    recipe, _, _, clips = setup
    # an unused head would shift torch's RNG for the later stages
    assert "lm_xy" not in train_demo._aux_heads(dataclasses.replace(recipe, lm_probe_xy=0.0))
    assert "lm_xy" not in train_demo._aux_heads(dataclasses.replace(recipe, lm_probe_xy=10.0), position=False)
    heads = train_demo._aux_heads(dataclasses.replace(recipe, lm_probe_xy=10.0))
    hidden = [torch.randn(sum(c.soft_tokens), recipe.text_hidden, generator=torch.Generator().manual_seed(i))
              for i, c in enumerate(clips)]
    assert all(len(h) == len(c.xy_targets) for h, c in zip(hidden, clips))
    train_demo.lm_probe_loss(heads, hidden, clips).backward()
    assert heads["lm_xy"].weight.grad is None and heads["lm_shape"].weight.grad is not None
    with_xy = train_demo.lm_probe_loss(heads, hidden, clips, xy_weight=10.0)
    with_xy.backward()
    assert with_xy > train_demo.lm_probe_loss(heads, hidden, clips)
    assert float(heads["lm_xy"].weight.grad.abs().sum()) > 0


def test_attention_supervision_points_descriptions_at_the_mover_when_asked(setup, tmp_path):
    """Attention that sits on the asked-about object (first frame for head 0, last for head 1) costs ~0;
    spread evenly over the video it costs more. A description's row counts only with "describe" in kinds,
    and its object is the mover."""
    recipe, prompts, _, _ = setup
    spec = synthetic.make_clip_spec(11, direction="right", count=2)
    clip = train_demo.encode_clip(spec, recipe, tmp_path)
    batch = train_demo.clip_batch(clip, prompts, np.random.default_rng(0), demo_token_ids().pad)
    rows, suffix, prefix = batch.suffix.shape[0], batch.suffix.shape[1], batch.prefix.shape[1]
    video = torch.nonzero(batch.prefix[0] == demo_token_ids().video).squeeze(-1)
    on_target = torch.zeros(rows, 2, suffix, prefix + suffix)
    for row, index in enumerate(batch.referents):
        for head, frame in ((0, 0), (1, len(clip.soft_tokens) - 1)):
            if index is None:
                on_target[row, head, :, video] = 1.0 / len(video)
                continue
            tokens = video[torch.from_numpy(train_demo.referent_tokens(clip, index, frame))]
            on_target[row, head, :, tokens] = 1.0 / len(tokens)
    describe = batch.kinds.index("describe")
    assert batch.referents[describe] == spec.mover
    spread = on_target.clone()
    spread[describe, :, :, :] = 0.0
    spread[describe, :, :, video] = 1.0 / len(video)
    named = ("colour", "shape", "direction")
    assert float(train_demo.attention_loss([on_target], [batch], [clip])) < 0.01
    assert float(train_demo.attention_loss([spread], [batch], [clip])) < 0.01          # describe not supervised
    assert float(train_demo.attention_loss([on_target], [batch], [clip], named + ("describe",))) < 0.01
    assert float(train_demo.attention_loss([spread], [batch], [clip], named + ("describe",))) > 0.2


def test_stage_three_follows_the_others_and_resumes_where_they_end():
    """Stage 3's training clips continue the global step count (new clips, not a replay of stage 1), and a
    recipe without it has the two stages the shipped models were trained with."""
    recipe = dataclasses.replace(train_demo.DemoRecipe(), stage3_steps=300, stage3_lr=5e-4)
    one, two, three, _ = train_demo.stages(recipe)
    assert (two.first_step, three.first_step, three.steps, three.lr) == (2000, 3200, 300, 5e-4)
    assert len(train_demo.stages(train_demo.DemoRecipe(stage3_steps=0))) == 2
    assert len(train_demo.stages(train_demo.DemoRecipe(stage2_steps=0, stage3_steps=300))) == 1


def test_decision_tokens_weigh_more_only_when_asked(setup):
    """answer_loss at weight 1 is the plain mean cross-entropy; with a weight, only the "moves" / "stands" /
    "stand" answer tokens count more."""
    _, prompts, _, _ = setup
    decision = prompts.decision_ids
    assert len(set(decision)) == 3 and [prompts.decode([i]).strip() for i in decision] == ["moves", "stands", "stand"]
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1024, generator=gen)
    labels = torch.tensor([decision[0], 5, -100, decision[1], 7, 9])
    plain = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    assert torch.allclose(train_demo.answer_loss(logits, labels), plain)
    assert torch.allclose(train_demo.answer_loss(logits, labels, decision, 1.0), plain)
    per_token = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    expected = (per_token.sum() + 4 * (per_token[0] + per_token[3])) / 5
    assert torch.allclose(train_demo.answer_loss(logits, labels, decision, 5.0), expected)


def test_motion_probe_says_whether_the_named_shape_moves(setup, tmp_path):
    """track_motion adds a moves-at-all logit to the track probe: target 1 on the mover's rows, 0 on a still
    shape's; the head exists only when used (an unused head would shift torch's RNG)."""
    recipe, prompts, _, _ = setup
    assert "motion" not in train_demo._aux_heads(recipe)
    assert "motion" not in train_demo._aux_heads(dataclasses.replace(recipe, track_motion=1.0), position=False)
    heads = train_demo._aux_heads(dataclasses.replace(recipe, track_motion=1.0))
    spec = synthetic.make_clip_spec(11, direction="right", count=2)
    clip = train_demo.encode_clip(spec, recipe, tmp_path)
    batch = train_demo.clip_batch(clip, prompts, np.random.default_rng(0), demo_token_ids().pad, every_question=True)
    hidden = torch.randn(*batch.suffix.shape, recipe.text_hidden, generator=torch.Generator().manual_seed(0))
    outputs = [(None, None, hidden, None)]
    plain = train_demo.track_loss(heads, outputs, [batch], [clip])
    plain.backward()
    assert heads["motion"].weight.grad is None
    # a motion head that reads a feature the hidden state carries on the mover's rows only costs ~0
    mover_rows = torch.tensor([r == spec.mover for r in batch.referents])
    assert 0 < int(mover_rows.sum()) < sum(r is not None for r in batch.referents)
    hidden[:, :, 0] = torch.where(mover_rows[:, None], 3.0, -3.0)
    with torch.no_grad():
        heads["motion"].weight.zero_()
        heads["motion"].weight[0, 0] = 10.0
        heads["motion"].bias.zero_()
    with torch.no_grad():
        good = train_demo.track_loss(heads, outputs, [batch], [clip], motion_weight=1.0)
        assert float(good - train_demo.track_loss(heads, outputs, [batch], [clip])) < 0.01
        heads["motion"].weight.neg_()
        assert float(train_demo.track_loss(heads, outputs, [batch], [clip], motion_weight=1.0)
                     - train_demo.track_loss(heads, outputs, [batch], [clip])) > 1.0


def test_stage_four_trains_only_the_top_layers():
    """Stage 4 (after stage 3) trains decoder layers >= stage4_from_layer and the final norm; the vision
    tower, the embeddings and the lower layers stay frozen; the first three stages train everything."""
    recipe = dataclasses.replace(train_demo.DemoRecipe(), stage4_steps=500)
    four = train_demo.stages(recipe)[3]
    assert (four.name, four.first_step, four.steps) == ("stage 4", 5600, 500)
    assert recipe.stage4_clips_per_step > recipe.clips_per_step
    assert len(train_demo.stages(dataclasses.replace(recipe, stage3_steps=0))) == 2
    names = ["model.language_model.layers.3.mlp.up_proj.weight", "model.language_model.layers.4.self_attn.q_proj.weight",
             "model.language_model.norm.weight", "model.language_model.layers.2.mlp.up_proj.weight",
             "model.language_model.embed_tokens.weight", "model.vision_tower.encoder.layers.0.mlp.up_proj.linear.weight",
             "model.language_model.layers.30.mlp.up_proj.weight"]
    assert [train_demo.stage_trains(recipe, 3, n) for n in names] == [True, True, True, False, False, False, True]
    assert all(train_demo.stage_trains(recipe, i, n) for i in range(3) for n in names)
