"""Mapped weight pages are handed back (edgevid.model.mapped_pages): a graph whose weights onnxruntime pre-packs
must not keep the file's pages resident beside the packed copy, during the load or after it, and must compute
the same after its pages were dropped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and madvise (Linux)")

N = K = 16384                    # 128 MiB of 4-bit weights + 32 MiB of scales
LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np

    def status():
        out = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def resident(suffix):
        total, inside = 0, False
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                inside = line.rstrip().endswith(suffix)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
        return total

    x = np.random.default_rng(1).random((1, int(sys.argv[3])), dtype=np.float32)
    base = status()["VmHWM"]
    if sys.argv[1] == "edgevid":
        from edgevid.model.providers import select_providers
        from edgevid.model.sessions import GraphSession, SessionConfig
        graph = GraphSession(sys.argv[2], select_providers("cpu", ["CPUExecutionProvider"]), SessionConfig(threads=1))
        session = graph.session
    else:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(sys.argv[2], options, providers=["CPUExecutionProvider"])
    peak = status()["VmHWM"] - base
    after_load = resident(".onnx_data")
    y = session.run(None, {"x": x})[0]
    np.save(sys.argv[4], y)
    print(json.dumps({"load_peak": peak, "resident_after_load": after_load}))
""")


@pytest.fixture(scope="module")
def q4_matmul(tmp_path_factory) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8), "B")
    scales = numpy_helper.from_array(rng.random(N * K // 32, dtype=np.float32) * 0.01, "scales")
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=32, accuracy_level=4)
    graph = helper.make_graph([node], "q4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], [weights, scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path_factory.mktemp("mapped") / "matmul_q4.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="matmul_q4.onnx_data")
    return path


def _load(kind: str, graph: Path, out: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", LOAD, kind, str(graph), str(K), str(out)],
                         check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_packed_weights_do_not_keep_their_file_pages(q4_matmul, tmp_path):
    file_bytes = (q4_matmul.parent / "matmul_q4.onnx_data").stat().st_size
    plain = _load("onnxruntime", q4_matmul, tmp_path / "plain.npy")
    ours = _load("edgevid", q4_matmul, tmp_path / "ours.npy")
    # onnxruntime alone keeps (some of) the pages it packed from; edgevid hands them all back
    assert ours["resident_after_load"] < 0.05 * file_bytes, ours
    assert plain["resident_after_load"] > ours["resident_after_load"] + 0.1 * file_bytes, (plain, ours)
    # during the load too: the file is released while onnxruntime packs, not after
    assert ours["load_peak"] < plain["load_peak"] - 0.3 * file_bytes, (plain, ours)
    # the dropped pages are read again when needed: the same result, bit for bit
    np.testing.assert_array_equal(np.load(tmp_path / "ours.npy"), np.load(tmp_path / "plain.npy"))


def _in_page_cache(path: Path) -> float:
    """Share of ``path``'s pages in the page cache (``mincore`` on a fresh mapping, nothing touched)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) == 0, ctypes.get_errno()
            return sum(v & 1 for v in vector) / pages
        finally:
            del address
            mapped.close()


def test_released_table_rows_stay_in_the_page_cache(tmp_path):
    """After a lookup, the embedding table's pages leave the process but not the page cache (the next prompt's
    rows fault in from memory); other weight files' pages are reclaimed."""
    import mmap

    from edgevid.model import mapped_pages

    files = {name: tmp_path / name for name in ("embed_tokens_q4.onnx_data", "decoder_model_merged_q4.onnx_data")}
    for path in files.values():
        path.write_bytes(np.random.default_rng(0).bytes(8 * 1024 ** 2))
        os.sync()
    mapped_pages.register_weights(tmp_path)
    maps = []
    for path in files.values():                        # mapped as onnxruntime maps them: private, read-write
        with open(path, "rb") as handle:
            maps.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY))
        assert sum(maps[-1][i] for i in range(0, len(maps[-1]), mmap.PAGESIZE)) >= 0      # every page touched
    assert mapped_pages.release_weight_pages() > 0
    for m in maps:
        m.close()
    table, other = (_in_page_cache(files[name]) for name in files)
    assert table > 0.9, table
    assert other < 0.5, other
