"""A model folder in the published layout whose decoder attends with ``com.microsoft.GroupQueryAttention``
(what onnx-community's and onnxruntime-genai's Gemma decoders use), built with ``onnx.helper``, plus a numpy
reference of the same network.

The network is small and Gemma-shaped where the runtime contract is concerned: ``embed_tokens`` ->
``inputs_embeds``; a decoder taking ``inputs_embeds``, ``attention_mask``, ``position_ids`` and
``past_key_values.{i}.key/value`` [batch_size, kv_heads, past_sequence_length, head_dim] and returning
``logits`` and ``present.*``, with ``seqlens_k`` / ``total_sequence_length`` derived from the attention mask
in-graph as those exporters do, RMSNorms, grouped-query heads, a tied lm_head and Gemma's 30·tanh(x/30)
soft-cap; no ``num_logits_to_keep`` input; a vision encoder that returns one row per soft token.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, FFN = 32, 4, 2, 8, 2, 64
EPS = 1e-6
SOFTCAP = 30.0


def weights(vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out = {"embed": w(vocab, HIDDEN, scale=1.0), "final_norm": 1 + w(HIDDEN, scale=0.1),
           "vision_proj": w(768, HIDDEN, scale=0.05)}
    for i in range(LAYERS):
        out.update({f"l{i}.norm1": 1 + w(HIDDEN, scale=0.1), f"l{i}.q": w(HIDDEN, HEADS * HEAD_DIM),
                    f"l{i}.k": w(HIDDEN, KV_HEADS * HEAD_DIM), f"l{i}.v": w(HIDDEN, KV_HEADS * HEAD_DIM),
                    f"l{i}.o": w(HEADS * HEAD_DIM, HIDDEN), f"l{i}.norm2": 1 + w(HIDDEN, scale=0.1),
                    f"l{i}.up": w(HIDDEN, FFN), f"l{i}.down": w(FFN, HIDDEN)})
    return out


# ---- numpy reference ---------------------------------------------------------------------------------------
def _rms(x, g):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * g


def reference_logits(W: dict, ids: np.ndarray) -> np.ndarray:
    """[seq, vocab] logits of the whole sequence, no cache (causal attention, groups of HEADS/KV_HEADS)."""
    h = W["embed"][ids].astype(np.float64)
    seq = len(ids)
    causal = np.tril(np.ones((seq, seq), bool))
    for i in range(LAYERS):
        x = _rms(h, W[f"l{i}.norm1"])
        q = (x @ W[f"l{i}.q"]).reshape(seq, HEADS, HEAD_DIM).transpose(1, 0, 2)
        k = (x @ W[f"l{i}.k"]).reshape(seq, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
        v = (x @ W[f"l{i}.v"]).reshape(seq, KV_HEADS, HEAD_DIM).transpose(1, 0, 2)
        k, v = np.repeat(k, HEADS // KV_HEADS, 0), np.repeat(v, HEADS // KV_HEADS, 0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(HEAD_DIM)
        scores = np.where(causal, scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        h = h + (p @ v).transpose(1, 0, 2).reshape(seq, -1) @ W[f"l{i}.o"]
        x = _rms(h, W[f"l{i}.norm2"])
        h = h + np.maximum(x @ W[f"l{i}.up"], 0) @ W[f"l{i}.down"]
    logits = _rms(h, W["final_norm"]) @ W["embed"].T
    return SOFTCAP * np.tanh(logits / SOFTCAP)


def reference_greedy(W: dict, prompt: list[int], steps: int, eos: set[int]) -> list[int]:
    ids, out = list(prompt), []
    for _ in range(steps):
        token = int(reference_logits(W, np.asarray(ids))[-1].argmax())
        out.append(token)
        if token in eos:
            break
        ids.append(token)
    return out


# ---- graphs ------------------------------------------------------------------------------------------------
def _save(nodes, name, inputs, outputs, inits, path: Path, ms_domain=False):
    from onnx import helper, numpy_helper, save

    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="gqa_folder")
    model.ir_version = 9
    save(model, str(path))


def write_decoder(W: dict, vocab: int, path: Path) -> None:
    from onnx import TensorProto, helper

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = {k: v for k, v in W.items() if k.startswith("l") or k == "final_norm"}
    inits.update({"lm_head": np.ascontiguousarray(W["embed"].T), "eps": np.array(EPS, np.float32),
                  "two": np.array(2.0, np.float32), "axis_last": np.array([-1], np.int64),
                  "axis_1": np.array([1], np.int64), "one": np.array(1, np.int64),
                  "cap": np.array(SOFTCAP, np.float32)})
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "axis_1"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", "one"], ["seqlens_k64"]),
        helper.make_node("Cast", ["seqlens_k64"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"], start=1, end=2),
        helper.make_node("Squeeze", ["mask_shape"], ["total64"]),
        helper.make_node("Cast", ["total64"], ["total_sequence_length"], to=TensorProto.INT32),
    ]

    def rms(x, g, out):
        nodes.extend([
            helper.make_node("Pow", [x, "two"], [f"{out}_sq"]),
            helper.make_node("ReduceMean", [f"{out}_sq", "axis_last"], [f"{out}_ms"], keepdims=1),
            helper.make_node("Add", [f"{out}_ms", "eps"], [f"{out}_mse"]),
            helper.make_node("Sqrt", [f"{out}_mse"], [f"{out}_rt"]),
            helper.make_node("Div", [x, f"{out}_rt"], [f"{out}_n"]),
            helper.make_node("Mul", [f"{out}_n", g], [out]),
        ])

    h = "inputs_embeds"
    inputs = [helper.make_tensor_value_info("inputs_embeds", f32, ["batch_size", "sequence_length", HIDDEN]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", vocab])]
    for i in range(LAYERS):
        p = f"l{i}"
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        ["batch_size", KV_HEADS, "past_sequence_length", HEAD_DIM]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         ["batch_size", KV_HEADS, "total_sequence_length", HEAD_DIM]))
        rms(h, f"{p}.norm1", f"{p}_x")
        nodes += [helper.make_node("MatMul", [f"{p}_x", f"{p}.{w}"], [f"{p}_{w}_out"]) for w in ("q", "k", "v")]
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [f"{p}_q_out", f"{p}_k_out", f"{p}_v_out", f"past_key_values.{i}.key", f"past_key_values.{i}.value",
             "seqlens_k", "total_sequence_length"],
            [f"{p}_attn", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft", num_heads=HEADS, kv_num_heads=KV_HEADS))
        nodes += [helper.make_node("MatMul", [f"{p}_attn", f"{p}.o"], [f"{p}_o_out"]),
                  helper.make_node("Add", [h, f"{p}_o_out"], [f"{p}_h1"])]
        rms(f"{p}_h1", f"{p}.norm2", f"{p}_x2")
        nodes += [helper.make_node("MatMul", [f"{p}_x2", f"{p}.up"], [f"{p}_up_out"]),
                  helper.make_node("Relu", [f"{p}_up_out"], [f"{p}_act"]),
                  helper.make_node("MatMul", [f"{p}_act", f"{p}.down"], [f"{p}_down_out"]),
                  helper.make_node("Add", [f"{p}_h1", f"{p}_down_out"], [f"{p}_h2"])]
        h = f"{p}_h2"
    rms(h, "final_norm", "final")
    nodes += [helper.make_node("MatMul", ["final", "lm_head"], ["raw_logits"]),
              helper.make_node("Div", ["raw_logits", "cap"], ["capped"]),
              helper.make_node("Tanh", ["capped"], ["tanh_logits"]),
              helper.make_node("Mul", ["tanh_logits", "cap"], ["logits"])]
    _save(nodes, "decoder_model_merged", inputs, outputs, inits, path, ms_domain=True)


def write_embed(W: dict, path: Path) -> None:
    from onnx import TensorProto, helper

    _save([helper.make_node("Gather", ["embed", "input_ids"], ["inputs_embeds"])], "embed_tokens",
          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])],
          [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                         ["batch_size", "sequence_length", HIDDEN])],
          {"embed": W["embed"]}, path)


def write_vision(W: dict, path: Path) -> None:
    """Patches -> 3x3-pooled rows, one per soft token (the published graphs' output), real patches only."""
    from onnx import TensorProto, helper

    inits = {"vision_proj": W["vision_proj"], "rows": np.array([-1, 9, 768], np.int64),
             "axis_1": np.array([1], np.int64), "out_shape": np.array([-1, HIDDEN], np.int64)}
    nodes = [helper.make_node("Reshape", ["pixel_values", "rows"], ["cells"]),
             helper.make_node("ReduceMean", ["cells", "axis_1"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "vision_proj"], ["projected"]),
             helper.make_node("Reshape", ["projected", "out_shape"], ["image_features"])]
    _save(nodes, "vision_encoder",
          [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["num_images", "num_patches", 768]),
           helper.make_tensor_value_info("pixel_position_ids", TensorProto.INT64, ["num_images", "num_patches", 2])],
          [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["num_soft_tokens", HIDDEN])],
          inits, path)


def write_gqa_folder(out: Path, seed: int = 0) -> tuple[Path, dict]:
    """(folder, weights): configs + demo tokenizer at the root, the three graphs in onnx/, no edgevid.json."""
    from edgevid_export.demo import demo_token_ids
    from model_folder import write_model_folder

    folder = write_model_folder(out, graphs=False)
    (folder / "edgevid.json").unlink()
    vocab = demo_token_ids().vocab_size
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"] = {"patch_size": 16, "pooling_kernel_size": 3}
    (folder / "config.json").write_text(json.dumps(config))
    W = weights(vocab, seed)
    (folder / "onnx").mkdir()
    write_decoder(W, vocab, folder / "onnx" / "decoder_model_merged.onnx")
    write_embed(W, folder / "onnx" / "embed_tokens.onnx")
    write_vision(W, folder / "onnx" / "vision_encoder.onnx")
    return folder, W
