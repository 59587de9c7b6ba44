"""A folder in the layout onnx-community publishes, with no edgevid.json, runs in edgevid with parity.

The folder is made from a tiny export the way the published ones look: configs at the root, graphs in
``onnx/`` only, no ``edgevid.json``, a decoder that declares no ``num_logits_to_keep`` (it returns logits for
every position), and a q4f16 variant (fp16 inputs/outputs and fp16 KV cache). The fp32 graphs must give
transformers' prompt ids and greedy tokens for a video; the q4f16 ones must run with fp16 caches.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgevid.media import sample_video  # noqa: E402
from edgevid.model.generate import GenerationOptions  # noqa: E402
from edgevid.pipeline import Pipeline  # noqa: E402
from runtime_models import QUESTION, exported_model, models_root, transformers_reference, write_test_clip  # noqa: E402

NUM_FRAMES = 4
MAX_NEW_TOKENS = 12
ROOT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "processor_config.json", "preprocessor_config.json")


def drop_num_logits_to_keep(path: Path) -> None:
    """The decoder input becomes a constant 0 (every position's logits), as in graphs that never had it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    kept = [v for v in model.graph.input if v.name != "num_logits_to_keep"]
    assert len(kept) == len(model.graph.input) - 1
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "num_logits_to_keep"))
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from edgevid_export.quantize_q4f16 import quantize_q4f16

    root = models_root(tmp_path_factory)
    checkpoint, model_dir = exported_model("e2b_like", root)
    out = tmp_path_factory.mktemp("published") / "gemma-4-tiny-ONNX"
    (out / "onnx").mkdir(parents=True)
    for name in ROOT_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    for graph in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        for file in (model_dir / "onnx").glob(f"{graph}.onnx*"):
            shutil.copy(file, out / "onnx" / file.name)
        quantize_q4f16(out / "onnx" / f"{graph}.onnx", out / "onnx" / f"{graph}_q4f16.onnx", graph,
                       mapped_tables=graph == "embed_tokens")
    drop_num_logits_to_keep(out / "onnx" / "decoder_model_merged.onnx")
    clip = root / "clip.mp4"
    if not clip.is_file():
        write_test_clip(clip)
    return checkpoint, out, clip


def messages(clip):
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(clip)}},
                                         {"type": "text", "text": QUESTION}]}]


def test_published_layout_matches_transformers(published):
    checkpoint, folder, clip = published
    assert not (folder / "edgevid.json").exists() and not list(folder.glob("*.onnx"))
    video = sample_video(clip, num_frames=NUM_FRAMES)
    expected = transformers_reference(checkpoint, video, MAX_NEW_TOKENS)
    pipeline = Pipeline.load(folder, device="cpu")
    assert not pipeline.decoder.keeps_logits                      # declared-or-absent: absent here
    result = pipeline.chat(messages(clip), GenerationOptions(max_tokens=MAX_NEW_TOKENS, num_frames=NUM_FRAMES))
    eos = set(pipeline.folder.eos_token_ids)
    reference = expected["token_ids"]
    if any(t in eos for t in reference):
        reference = reference[: next(i for i, t in enumerate(reference) if t in eos) + 1]
    assert result.prompt_tokens == len(expected["prompt_ids"])
    assert list(result.token_ids) == reference


def test_q4f16_graphs_run_with_fp16_io_and_cache(published):
    _, folder, clip = published
    options = GenerationOptions(max_tokens=6, num_frames=NUM_FRAMES)
    pipeline = Pipeline.load(folder, device="cpu", precision="q4f16")
    assert pipeline.precision == "q4f16"
    assert {spec.dtype for spec in pipeline.decoder.cache_specs} == {np.float16}
    assert pipeline.embed.session.get_outputs()[0].type == "tensor(float16)"
    result = pipeline.chat(messages(clip), options)
    assert 1 <= len(result.token_ids) <= 6
    # per graph: fp32 vision features merged into the q4f16 embeddings
    mixed = Pipeline.load(folder, device="cpu", precision="q4f16,vision=fp32")
    assert mixed.precision == "vision_encoder=fp32,embed_tokens=q4f16,decoder=q4f16"
    assert mixed.chat(messages(clip), options).prompt_tokens == result.prompt_tokens
