"""Interop with a runtime nobody here wrote: transformers.js 4.3.2 (Node, onnxruntime-node) runs an edgevid
export and gives the same greedy token ids as ``edgevid run --json`` on the same folder and prompt.

Needs Node >= 20 and ``@huggingface/transformers`` installed in ``$EDGEVID_TJS_DIR/node_modules`` (``.ci/run``
installs it with ``ONNXRUNTIME_NODE_INSTALL=skip``: onnxruntime-node's CPU binaries ship in the package and
its install script would fetch CUDA files); without them these tests skip, and ``.ci/run`` counts a skip as
a failure.

The image prompt: transformers.js's Gemma4Processor wraps each image in "\\n\\n" (Python transformers does
not) and resizes with sharp. The Node script expands the image placeholder the Python way
(``<boi> + <image> x n + <eoi>``) with n and the pixels from transformers.js's own image processor, and the
image is 768 x 768, a size Gemma 4's processors keep as it is (no resampling on either side), so both
runtimes see the same ids and the same pixels; the test checks both, and that the "\\n\\n" form is longer.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "interop" / "transformers_js_generate.mjs"
PROMPT = "Describe the picture in one sentence."
TEXT_PROMPT = "Name three colours of the rainbow."
MAX_TOKENS = 16

pytestmark = pytest.mark.transformers_js


def _modules() -> Path:
    base = os.environ.get("EDGEVID_TJS_DIR")
    node = shutil.which("node")
    if not base or node is None:
        pytest.skip("set EDGEVID_TJS_DIR to a folder with node_modules/@huggingface/transformers (see .ci/run)")
    modules = Path(base) / "node_modules"
    if not (modules / "@huggingface" / "transformers" / "package.json").is_file():
        pytest.skip(f"no @huggingface/transformers under {modules}")
    return modules


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shared tiny export (fp32), copied and given q4 and q4f16 graphs as ``export --precision`` makes them."""
    from transformers import AutoConfig

    from edgevid_export import convert, model_folder
    from runtime_models import exported_model, models_root

    modules = _modules()
    checkpoint, shared = exported_model("e2b_like", models_root(tmp_path_factory))
    folder = tmp_path_factory.mktemp("tjs") / "model"
    shutil.copytree(shared, folder)
    config = AutoConfig.from_pretrained(checkpoint)
    entries = convert.quantize_precisions(folder, ("fp32", "q4", "q4f16"), None, config,
                                          convert._Stages(lambda line: None))
    model_folder.write_interop_files(folder, config, {"fp32": model_folder.graph_files("fp32"), **entries})
    return modules, folder


def transformers_js(modules: Path, folder: Path, tmp: Path, *, prompt: str, image: Path | None = None,
                    dtype: str = "fp32") -> dict:
    request = tmp / "request.json"
    out = tmp / "out.json"
    pixels = tmp / "pixels.bin"
    request.write_text(json.dumps({"prompt": prompt, "image": str(image) if image else None, "dtype": dtype,
                                   "max_new_tokens": MAX_TOKENS, "pixels_out": str(pixels) if image else None}))
    proc = subprocess.run(["node", str(SCRIPT), str(modules), str(folder), str(request), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    if image:
        result["pixels"] = np.fromfile(pixels, dtype=np.float32)
    return result


def edgevid_run(folder: Path, *, prompt: str, image: Path | None = None, precision: str = "fp32") -> dict:
    args = [sys.executable, "-m", "edgevid", "run", "-m", str(folder), "-i", prompt, "--json",
            "--max-tokens", str(MAX_TOKENS), "--device", "cpu", "--precision", precision]
    if image:
        args += ["--image", str(image)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def edgevid_prompt(folder: Path, *, prompt: str, image: Path | None = None):
    from edgevid.model.generate import GenerationOptions
    from edgevid.pipeline import Pipeline

    pipeline = Pipeline.load(folder, device="cpu", cache_bytes=0)
    content = ([{"type": "image_url", "image_url": {"url": str(image)}}] if image else []) + \
        [{"type": "text", "text": prompt}]
    built = pipeline.build_prompt([{"role": "user", "content": content}], GenerationOptions())
    return built


@pytest.mark.parametrize("precision", ["fp32", "q4", "q4f16"])
def test_text_prompt_same_ids(exported, tmp_path, precision):
    modules, folder = exported
    js = transformers_js(modules, folder, tmp_path, prompt=TEXT_PROMPT, dtype=precision)
    ours = edgevid_run(folder, prompt=TEXT_PROMPT, precision=precision)
    assert js["prompt_ids"] == [int(t) for t in edgevid_prompt(folder, prompt=TEXT_PROMPT).input_ids]
    assert len(js["prompt_ids"]) == ours["prompt_tokens"]
    assert len(ours["token_ids"]) >= 4
    assert js["token_ids"] == ours["token_ids"]


def test_image_prompt_same_ids(exported, tmp_path):
    import cv2

    modules, folder = exported
    y, x = np.mgrid[0:768, 0:768]
    picture = np.stack([(x * 255 // 767), (y * 255 // 767), ((x + y) % 256)], axis=-1).astype(np.uint8)
    cv2.rectangle(picture, (200, 150), (520, 600), (250, 40, 30), -1)
    image = tmp_path / "picture.png"
    cv2.imwrite(str(image), picture[..., ::-1])
    js = transformers_js(modules, folder, tmp_path, prompt=PROMPT, image=image)
    built = edgevid_prompt(folder, prompt=PROMPT, image=image)
    assert js["prompt_ids"] == [int(t) for t in built.input_ids]
    assert js["native_prompt_tokens"] > len(js["prompt_ids"])        # transformers.js's own "\n\n" wrapping
    vision = built.media[0].vision
    assert vision.total_soft_tokens == 256
    ours_pixels = np.asarray(vision.pixel_values, dtype=np.float32).reshape(-1)
    np.testing.assert_allclose(js["pixels"], ours_pixels, rtol=0, atol=1e-6)
    ours = edgevid_run(folder, prompt=PROMPT, image=image)
    assert len(ours["token_ids"]) >= 4
    assert js["token_ids"] == ours["token_ids"]
