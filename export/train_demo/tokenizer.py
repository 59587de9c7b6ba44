"""The demo's tokenizer and processor config: Gemma 4's special tokens, ids and chat template, with BPE
merges learned over the demo corpus and the task's sentences so every task word is one piece."""
from __future__ import annotations

import json
from pathlib import Path

from .. import synthetic
from .recipe import DemoRecipe


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

    from .. import demo
    from ..demo_corpus import DEMO_CORPUS
    from ..demo_template import DEMO_CHAT_TEMPLATE

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
    from ..demo import write_processor_config as write_default

    path = write_default(out_dir)
    config = json.loads(path.read_text(encoding="utf-8"))
    config["video_processor"]["num_frames"] = recipe.num_frames
    config["video_processor"]["max_soft_tokens"] = recipe.max_soft_tokens
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
