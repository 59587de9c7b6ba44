"""The CPU decoder variant (``decoder_model_ring*.onnx``): its graph rewrites keep every number, and the
runtime's decode step with the embedding inside the graph gives the tokens the portable graph gives.

Each rewrite of ``edgevid_export.cpu_fusions`` is checked on a small graph built here, run by onnxruntime
before and after; the whole variant on the E2B-like tiny model against its portable graph (the parity
tests hold it against transformers)."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevid_export import cpu_fusions
from edgevid_export.convert import prefill_chunk

HIDDEN = 16


def _run(model, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # our graph, not ORT's
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _rms(x: str, out: str, weight: str | None, tag: str) -> list:
    nodes = [
        helper.make_node("Pow", [x, "two"], [f"{tag}_sq"]),
        helper.make_node("ReduceMean", [f"{tag}_sq", "last"], [f"{tag}_mean"], keepdims=1),
        helper.make_node("Add", [f"{tag}_mean", "eps"], [f"{tag}_var"]),
        helper.make_node("Sqrt", [f"{tag}_var"], [f"{tag}_root"]),
        helper.make_node("Div", [x, f"{tag}_root"], [f"{tag}_div" if weight else out]),
    ]
    if weight:
        nodes.append(helper.make_node("Mul", [f"{tag}_div", weight], [out]))
    return nodes


def _residual_block(captured: str | None = None):
    """a -> norm(w) -> Add(residual) -> norm (w2) -> [x * 1.0] -> Reshape -> Reshape -> y; the residual sum
    is also an output; a v_norm-like scale-free norm on a second path. With ``captured``, an If's branches
    read that value from the outer scope."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
        numpy_helper.from_array(np.asarray([-1], np.int64), "last"),
        numpy_helper.from_array(np.asarray(1e-6, np.float32), "eps"),
        numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "w2"),
        numpy_helper.from_array(np.asarray(1.0, np.float32), "one"),
        numpy_helper.from_array(np.asarray([1, 3, 4, 4], np.int64), "split_heads"),
        numpy_helper.from_array(np.asarray([1, 3, HIDDEN], np.int64), "merge_heads"),
    ]
    nodes = [
        *_rms("a", "a_norm", "w", "n1"),
        helper.make_node("Add", ["residual", "a_norm"], ["sum"]),
        *_rms("sum", "sum_norm", "w2", "n2"),
        helper.make_node("Mul", ["sum_norm", "one"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "split_heads"], ["heads"]),
        helper.make_node("Reshape", ["heads", "merge_heads"], ["y"]),
        *_rms("v", "v_norm", None, "n3"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "sum", "v_norm")]
    if captured:
        branch = lambda name, op: helper.make_graph(  # noqa: E731
            [helper.make_node(op, [captured], [f"{name}_out"])], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["flag"], ["branch"], then_branch=branch("then", "Relu"),
                                      else_branch=branch("else", "Neg")))
        outputs.append(helper.make_tensor_value_info("branch", TensorProto.FLOAT, None))
    shape = ["batch", "seq", HIDDEN]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "residual")]
    inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", "seq", 2, 8]))
    if captured:
        inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    graph = helper.make_graph(nodes, "block", inputs, outputs, initializer=inits,
                              value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                          for n in ("a_norm", "sum", "sum_norm")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _feeds(with_if: bool = False) -> dict:
    """Feeds for 3 tokens (the reshape targets are literal [1, 3, ...])."""
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((1, 3, HIDDEN)).astype(np.float32),
             "residual": rng.standard_normal((1, 3, HIDDEN)).astype(np.float32),
             "v": rng.standard_normal((1, 3, 2, 8)).astype(np.float32)}
    if with_if:
        feeds["flag"] = np.asarray(True)
    return feeds


def test_rewrites_fuse_the_block_and_keep_its_numbers():
    model = _residual_block()
    before = _run(model, _feeds())
    counts = cpu_fusions.fuse_for_cpu(model)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert (counts["rms_norm"], counts["skip_norm"], counts["identity_mul"], counts["reshape"]) == (3, 1, 1, 1)
    assert ops["SimplifiedLayerNormalization"] == 2 and ops["SkipSimplifiedLayerNormalization"] == 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Div", "Mul", "Add"} & set(ops) and ops["Reshape"] == 1
    after = _run(model, _feeds())
    for got, want in zip(after, before):              # a fused norm rounds as onnxruntime's kernel does
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("captured, rms_norms, identity_muls", [("sum", 3, 1), ("n2_root", 2, 1), ("scaled", 3, 0)])
def test_a_value_read_inside_a_subgraph_is_never_rewritten_away(captured, rms_norms, identity_muls):
    """An If's branches read ``captured`` from the outer scope: the rewrites that would remove it leave it."""
    model = _residual_block(captured)
    before = _run(model, _feeds(with_if=True))
    counts = cpu_fusions.fuse_for_cpu(model)
    assert (counts["rms_norm"], counts["identity_mul"]) == (rms_norms, identity_muls)
    assert captured in {o for n in model.graph.node for o in n.output}
    after = _run(model, _feeds(with_if=True))
    np.testing.assert_allclose(after[3], before[3], rtol=1e-5, atol=1e-6)


def test_attention_bias_is_dropped_and_its_mask_with_it():
    mask = [helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask_f", "axes"], ["bias"])]
    gqa = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens", "total", "", "", "", "bias"],
                           ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=2, kv_num_heads=1)
    graph = helper.make_graph(mask + [gqa], "g", [], [], initializer=[
        numpy_helper.from_array(np.asarray([1, 2], np.int64), "axes")])
    graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                        for n in ("out", "present_k", "present_v"))
    model = helper.make_model(graph)
    counts = cpu_fusions.fuse_for_cpu(model)
    assert counts["attention_bias"] == 1 and counts["dead"] == 2
    assert list(model.graph.node[0].input) == ["q", "k", "v", "pk", "pv", "seqlens", "total"]
    assert not model.graph.initializer


@pytest.mark.parametrize("intermediate, chunk", [(4096, 256), (9216, 128), (16384, 128), (1024, 512), (64, 512)])
def test_prefill_chunk_keeps_a_chunks_mlp_activations_near_4_mib(intermediate, chunk):
    class Text:
        intermediate_size = intermediate

    assert prefill_chunk(Text()) == chunk


@pytest.fixture(scope="module")
def variant(e2b_model):
    _, model_dir = e2b_model
    return model_dir / "onnx" / "decoder_model_ring.onnx"


def test_the_variant_embeds_its_tokens_and_has_fewer_nodes(variant):
    model = onnx.load(str(variant), load_external_data=False)
    portable = onnx.load(str(variant.with_name("decoder_model_merged.onnx")), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgevid.embeds_inside"] == "1" and "edgevid.vision_blocks" not in meta
    assert int(meta["edgevid.prefill_chunk"]) in (128, 256, 512)
    names = [i.name for i in model.graph.input]
    assert "input_ids" in names and "inputs_embeds" in names and "per_layer_inputs" not in names
    tables = [t for t in model.graph.initializer if t.name.startswith("embed/") and t.external_data]
    assert tables and all({e.key: e.value for e in t.external_data}["location"] == "embed_tokens.onnx_data"
                          for t in tables)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["SkipSimplifiedLayerNormalization"] > 0 and "Pow" not in ops
    assert all(len(n.input) <= 10 for n in model.graph.node if n.op_type == "GroupQueryAttention")
    assert len(model.graph.node) < len(portable.graph.node)


def test_decode_steps_inside_the_graph_equal_the_embedding_session(e2b_model):
    """The same prompt decoded on the CPU variant (tokens looked up inside the graph, the step's binding
    reused) and on the portable graph fed by the embedding session: the same logits every step."""
    from edgevid.model.generate import PromptInputs, decode_steps, prefill
    from edgevid.model.manifest import ModelFolder
    from edgevid.model.providers import select_providers
    from edgevid.model.sessions import DecoderSession, EmbedSession, SessionConfig

    _, model_dir = e2b_model
    folder = ModelFolder.load(model_dir)
    choice = select_providers("cpu", ["CPUExecutionProvider"])
    embed = EmbedSession(folder.graph_path("embed_tokens", "fp32"), choice, SessionConfig(threads=1),
                         placeholder_ids=[folder.special.image, folder.special.video], pad_id=folder.special.pad)
    ids = np.concatenate([[folder.special.bos], np.random.default_rng(2).integers(300, 1000, 40)]).astype(np.int64)
    runs = {}
    for in_place in (True, False):
        decoder = DecoderSession(folder.graph_path("decoder", "fp32"), choice,
                                 SessionConfig(threads=1, kv_in_place=in_place, prefill_chunk=16))
        assert decoder.embeds_inside is in_place
        prompt = PromptInputs(ids, embed.embed(ids))
        logits, cache = prefill(decoder, prompt, room=24)
        seen = []
        sampler = lambda row: seen.append(row.copy()) or int(row.argmax())  # noqa: E731
        steps = decode_steps(decoder, embed, prompt, sampler, prefilled=(logits, cache))
        tokens = [next(steps) for _ in range(24)]
        steps.close()
        if in_place:
            assert cache.binding is not None          # the decode steps reused one binding
        runs[in_place] = (np.stack(seen), tokens)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=0, atol=1e-4)
    assert runs[True][1] == runs[False][1]


def test_a_reshape_to_the_dims_it_already_has_is_dropped():
    """Shape inference gave input and output the same dims (sizes or symbols): the Reshape returns its input;
    one whose output dims are unknown stays."""
    shape = ["batch", "seq", HIDDEN]
    nodes = [helper.make_node("Shape", ["x"], ["target"]),
             helper.make_node("Reshape", ["x", "target"], ["same"]),
             helper.make_node("Relu", ["same"], ["y"]),
             helper.make_node("Reshape", ["x", "target"], ["unknown"]),
             helper.make_node("Neg", ["unknown"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")],
                              value_info=[helper.make_tensor_value_info("same", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    x = np.random.default_rng(3).standard_normal((2, 3, HIDDEN)).astype(np.float32)
    before = _run(model, {"x": x})
    assert cpu_fusions.fuse_for_cpu(model)["reshape"] == 1
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    assert list(relu.input) == ["x"] and sum(n.op_type == "Reshape" for n in model.graph.node) == 1
    for got, want in zip(_run(model, {"x": x}), before):
        np.testing.assert_array_equal(got, want)


def test_a_prompt_for_the_cpu_variant_runs_no_separate_lookup(e2b_model, test_clip, monkeypatch):
    """The variant reads only media rows from ``inputs_embeds``: the pipeline hands it zeros plus the vision
    features, never running the embedding session, and answers as the portable graph fed by that session."""
    from edgevid.model.generate import GenerationOptions
    from edgevid.model.sessions import SessionConfig
    from edgevid.pipeline import Pipeline

    _, model_dir = e2b_model
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(test_clip)}},
                                             {"type": "text", "text": "What happens?"}]}]
    options = GenerationOptions(max_tokens=6, num_frames=4)
    portable = Pipeline.load(model_dir, device="cpu", session_config=SessionConfig(kv_in_place=False))
    variant = Pipeline.load(model_dir, device="cpu")
    assert variant.decoder.embeds_inside and not portable.decoder.embeds_inside

    def no_lookup(ids):
        raise AssertionError("the embedding session ran for a decoder that looks tokens up itself")

    monkeypatch.setattr(variant.embed, "embed", no_lookup)
    monkeypatch.setattr(variant.embed, "embed_bound", no_lookup)
    assert variant.chat(messages, options).token_ids == portable.chat(messages, options).token_ids
