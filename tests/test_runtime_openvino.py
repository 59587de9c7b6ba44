"""Replay of the parity fixtures under onnxruntime-openvino (a venv without torch).

CI: step 1 (main venv) ``EDGEVID_OV_FIXTURES=DIR pytest tests/test_runtime_parity.py`` exports the tiny
models and writes DIR/<shape>/expected.json (ids from transformers' generate); step 2 (OpenVINO venv)
``EDGEVID_OV_FIXTURES=DIR pytest -m openvino tests/test_runtime_openvino.py`` runs the same request on the
OpenVINO execution provider (CPU device, f32 inference precision) and compares.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.openvino

SHAPES = ["e2b_like", "bidirectional"]
LOGITS_TOLERANCE = 1e-3     # OpenVINO's CPU kernels (f32) accumulate in another order than onnxruntime's


def _fixtures() -> Path:
    value = os.environ.get("EDGEVID_OV_FIXTURES")
    if not value:
        pytest.skip("EDGEVID_OV_FIXTURES is not set (run tests/test_runtime_parity.py with it first)")
    return Path(value)


@pytest.fixture(scope="module")
def openvino_available():
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no OpenVINOExecutionProvider (pip install onnxruntime-openvino)")


@pytest.mark.parametrize("shape", SHAPES)
def test_openvino_replays_transformers_greedy_tokens(shape, openvino_available):
    from edgevid.model.generate import GenerationOptions, prefill
    from edgevid.pipeline import Pipeline

    root = _fixtures()
    expected_file = root / shape / "expected.json"
    assert expected_file.is_file(), f"{expected_file} missing: run step 1 (tests/test_runtime_parity.py) first"
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    pipeline = Pipeline.load(root / shape / "model", device="openvino")
    assert pipeline.provider == "OpenVINOExecutionProvider"
    messages = [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": str(root / expected["clip"])}},
        {"type": "text", "text": expected["question"]}]}]
    options = GenerationOptions(max_tokens=expected["max_tokens"], num_frames=expected["num_frames"])
    stream = pipeline.stream(messages, options)
    assert stream.prompt.input_ids.tolist() == expected["prompt_ids"]
    logits, _ = prefill(pipeline.decoder, pipeline.prompt_inputs(stream.prompt))
    diff = float(np.abs(logits - np.asarray(expected["first_logits"], dtype=np.float32)).max())
    assert diff <= LOGITS_TOLERANCE, f"first-step logits differ by {diff} under OpenVINO"
    stream.close()
    result = pipeline.chat(messages, options)
    assert list(result.token_ids) == expected["token_ids"]
    # the vision graph has static output shapes, so OpenVINO runs it too (no fallback to the CPU provider)
    assert pipeline.vision.provider == "OpenVINOExecutionProvider"
    assert result.text == expected["text"]
