"""Session-level speed measures that must not change a single number: the vision encoder skipping the patch
slots that are padding in every frame of a run, on a real exported vision graph."""
from __future__ import annotations

import numpy as np
import pytest

from edgevid.model.sessions import trim_padding


def _positions(valid_counts, patches):
    pos = np.full((len(valid_counts), patches, 2), -1, dtype=np.int64)
    for f, n in enumerate(valid_counts):
        pos[f, :n] = np.stack([np.arange(n) % 9, np.arange(n) // 9], -1)
    return pos


def test_trim_keeps_the_longest_frame_rounded_to_whole_pooling_cells():
    pos = _positions([27, 18], 45)
    pixels = np.random.default_rng(0).random((2, 45, 6), dtype=np.float32)
    p, q = trim_padding(pixels, pos, 9)
    assert p.shape == (2, 27, 6) and q.shape == (2, 27, 2)
    np.testing.assert_array_equal(q, pos[:, :27])
    np.testing.assert_array_equal(p, pixels[:, :27])
    p, q = trim_padding(pixels, _positions([20, 18], 45), 9)         # 20 real -> 27 slots (3 cells)
    assert q.shape[1] == 27


def test_trim_leaves_runs_it_cannot_shorten():
    pixels = np.zeros((2, 18, 6), dtype=np.float32)
    full = _positions([18, 18], 18)
    assert trim_padding(pixels, full, 9)[1] is full                   # no padding
    inner = _positions([18, 9], 18)
    inner[1, :9], inner[1, 9:] = -1, inner[0, :9]                      # padding before real patches
    assert trim_padding(pixels, inner, 9)[1] is inner
    empty = np.full((1, 18, 2), -1, dtype=np.int64)
    assert trim_padding(pixels[:1], empty, 9)[1] is empty


@pytest.fixture(scope="module")
def vision_graph(e2b_model):
    pytest.importorskip("transformers")
    return e2b_model[1] / "onnx" / "vision_encoder.onnx"


def test_trimmed_runs_equal_the_padded_graph_run(vision_graph):
    """Frames padded to the 630-slot budget of 70 soft tokens: the session (trimmed, 4 frames per run) returns
    exactly what the graph returns on the full padded input."""
    import onnxruntime as ort

    from edgevid.model.preprocess import preprocess_video
    from edgevid.model.providers import select_providers
    from edgevid.model.sessions import SessionConfig, VisionEncoderSession

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (5, 120, 160, 3), dtype=np.uint8)
    vision = preprocess_video(frames)
    pixels, positions = vision.pixel_values, vision.position_ids
    assert pixels.shape[1] > trim_padding(pixels, positions, 9)[0].shape[1]      # the run is shortened
    session = VisionEncoderSession(vision_graph, select_providers("cpu", ["CPUExecutionProvider"]),
                                   SessionConfig(threads=1, frames_per_run=4))
    got = session.encode(pixels, positions)
    raw = ort.InferenceSession(str(vision_graph), providers=["CPUExecutionProvider"])
    want = np.concatenate([raw.run(None, {"pixel_values": pixels[i:i + 4], "pixel_position_ids": positions[i:i + 4]})[0]
                           for i in range(0, len(pixels), 4)])       # rows per soft token, padding slots sliced off
    assert got.shape == want.shape == (int(np.sum(vision.soft_tokens)), want.shape[1])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_embedding_tables_are_mapped_from_aligned_external_data(vision_graph):
    """The exporter writes the embedding tables (fp32 and every quantised variant) to
    ``embed_tokens*.onnx_data`` at 64 KiB-aligned offsets, the layout onnxruntime memory-maps."""
    import onnx

    folder = vision_graph.parent
    graphs = sorted(folder.glob("embed_tokens*.onnx"))
    assert graphs
    for path in graphs:
        model = onnx.load(str(path), load_external_data=False)
        tables = [t for t in model.graph.initializer if t.external_data]
        assert tables, path.name
        if path.name == "embed_tokens.onnx":
            assert {"embed_tokens.weight", "embed_tokens_per_layer.weight"} <= {t.name for t in tables}
        for tensor in tables:
            entries = {e.key: e.value for e in tensor.external_data}
            assert entries["location"] == path.name + "_data"
            assert int(entries.get("offset", 0)) % (64 * 1024) == 0, (path.name, tensor.name)
