"""A published-layout folder whose decoder uses com.microsoft.GroupQueryAttention (built by the test, see
``tests/gqa_folder.py``) loads without edgevid.json and generates what its numpy reference generates."""
from __future__ import annotations

import numpy as np
import pytest

from edgevid.model.generate import GenerationOptions, prefill
from edgevid.pipeline import Pipeline
from gqa_folder import reference_greedy, reference_logits, write_gqa_folder

MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "What happens in this video? Tell me."}]}]


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    return write_gqa_folder(tmp_path_factory.mktemp("gqa") / "gqa-tiny-ONNX")


def test_gqa_decoder_matches_its_reference(gqa):
    import onnx

    folder, W = gqa
    ops = {n.op_type for n in onnx.load(str(folder / "onnx" / "decoder_model_merged.onnx")).graph.node}
    assert "GroupQueryAttention" in ops
    pipeline = Pipeline.load(folder, device="cpu")
    assert not pipeline.decoder.keeps_logits and [s.kv_heads for s in pipeline.decoder.cache_specs] == [2, 2]
    options = GenerationOptions(max_tokens=12)
    stream = pipeline.stream(MESSAGES, options)
    ids = stream.prompt.input_ids
    want = reference_logits(W, ids)[-1]
    for chunk in (0, 7):                       # one pass, and chunks that reuse the GQA cache
        logits, cache = prefill(pipeline.decoder, pipeline.prompt_inputs(stream.prompt), chunk)
        assert float(np.abs(logits - want).max()) < 1e-4
        assert cache.length == len(ids)
    stream.close()
    result = pipeline.chat(MESSAGES, options)
    assert list(result.token_ids) == reference_greedy(W, ids.tolist(), 12, set(pipeline.folder.eos_token_ids))
