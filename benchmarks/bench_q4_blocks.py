"""4-bit block size: what a decode step's matmuls would gain, and what the weights would lose.

    python benchmarks/bench_q4_blocks.py
    python benchmarks/bench_q4_blocks.py --shapes 1024x65536,1536x262144 --rounds 15 --threads 2

One ``MatMulNBits`` per block size (onnxruntime's own RTN quantiser and kernel, int8 activations as
edgevid's q4 uses them: ``accuracy_level=4``), one input row as in decode, each block size its own session
in one process, timed in interleaved rounds (medians, and the ratio to edgevid's 64-blocks in the same
round). Beside the time, the output's error against the fp32 product, relative to its RMS, on Gaussian
weights: a block's scale follows its largest weight, so larger blocks round the rest more coarsely.

Default shapes are the benchmark decoder's (bench_genai.py): its lm_head (1024 x 65,536) and its MLP
up-projection (1024 x 4,096).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevid_export.quantize_q4 import ACCURACY_LEVEL, MATMUL_BLOCK as EDGEVID_BLOCK

BLOCKS = (32, 64, 128, 256)


def quantised_graph(weight: np.ndarray, block: int, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    k, n = weight.shape
    blocks = k // block
    packed = np.zeros((n, blocks, block // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, weight, scales, zero_points, block, n, k, True)
    node = helper.make_node("MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=block, accuracy_level=ACCURACY_LEVEL)
    graph = helper.make_graph([node], "q4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(packed, "q"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))


def measure(k: int, n: int, rounds: int, threads: int, workdir: Path) -> dict:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((k, n), dtype=np.float32)
    x = rng.standard_normal((1, k), dtype=np.float32)
    exact = x @ weight
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    sessions, error = {}, {}
    for block in BLOCKS:
        path = workdir / f"q4-{k}x{n}-b{block}.onnx"
        quantised_graph(weight, block, path)
        sessions[block] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        y = sessions[block].run(None, {"x": x})[0]
        error[block] = float(np.sqrt(np.mean((y - exact) ** 2)) / np.sqrt(np.mean(exact ** 2)))
    del weight
    times = {block: [] for block in BLOCKS}
    start = time.perf_counter()
    sessions[EDGEVID_BLOCK].run(None, {"x": x})
    repeats = max(5, int(0.05 / (time.perf_counter() - start)))     # ~50 ms a timing window
    for _ in range(rounds):
        for block, session in sessions.items():
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, {"x": x})
            times[block].append((time.perf_counter() - start) / repeats * 1000)
    return {block: {"ms": statistics.median(times[block]),
                    "ratio": statistics.median(b / a for a, b in zip(times[block], times[EDGEVID_BLOCK])),
                    "error": error[block]} for block in BLOCKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1024x65536,1024x4096", help="KxN matmul shapes, comma-separated")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.threads} threads, {args.rounds} rounds interleaved, medians; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| K x N | block | ms per row | speed vs 64-blocks | output error (relative RMS) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            k, n = (int(v) for v in shape.lower().split("x"))
            for block, row in measure(k, n, args.rounds, args.threads, Path(tmp)).items():
                print(f"| {k} x {n} | {block}{' (edgevid)' if block == EDGEVID_BLOCK else ''} | {row['ms']:.3f} | "
                      f"{row['ratio']:.2f}x | {row['error'] * 100:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
