"""Train the shipped demo model: a tiny Gemma 4 that answers questions about synthetic shape clips.

    python -m edgevid_export.train_demo --output build/demo          # ~95 min of CPU
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
loss covers answer tokens only, plus training aids whose probes are thrown away (``losses``); every
clip's five questions share one forward of its prompt prefix through the KV cache; stage 3 adds the position
aids, stage 4 trains only the top decoder layers on many more moves / stands answers; (5) ``save_pretrained``
into ``output/checkpoint`` and ``export_model`` into ``output``.


Modules: ``recipe`` (DemoRecipe, seeds), ``tokenizer``, ``model`` (config and start values), ``data``
(clips, targets, batches), ``losses``, ``stages`` (the training loop), ``packaging`` (checkpoint, export,
reference answers, ``edgevid/demo``), ``cli``.
"""
from __future__ import annotations

from .recipe import (  # noqa: F401
    HELD_OUT_SEED_BASE, TRAIN_SEED_STRIDE, DemoRecipe, FIRST_RECIPE, RECIPES, train_seed, vision_seed,
    held_out_specs,
)
from .tokenizer import (  # noqa: F401
    task_corpus, build_task_tokenizer, write_processor_config,
)
from .model import (  # noqa: F401
    demo_config, start_vision_tower, start_language_model,
)
from .data import (  # noqa: F401
    EncodedClip, sample_frames, encode_clip, dense_targets, outline_targets, PromptBuilder, _full_batch,
    ClipBatch, clip_batch, referent, track_targets, referent_tokens, clip_video_id, _encode_seed, _clip_stream,
    rendered_frame,
)
from .losses import (  # noqa: F401
    attention_loss, track_loss, _aux_heads, _rms, object_loss, lm_probe_loss, aux_loss, answer_loss_and_hits,
    answer_loss,
)
from .stages import (  # noqa: F401
    _full_forward, _forward_shared, _learning_rate, evaluate, Stage, stages, stage_trains, train,
    pretrain_vision, _optimizer, _full_losses, _shared_losses, _train_loop,
)
from .packaging import (  # noqa: F401
    save_checkpoint, build_trained_demo, export_demo, REFERENCE_SEED_BASE, REFERENCE_FILE, reference_answers,
    SHIPPED_PRECISIONS, SAMPLE_CLIP, package_demo,
)
from .cli import (  # noqa: F401
    main,
)
