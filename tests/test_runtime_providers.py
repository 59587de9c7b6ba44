"""Provider selection (pure logic over explicit provider lists) and session options on a real session."""
import json

import numpy as np
import pytest

from edgevid.errors import ProviderUnavailableError
from edgevid.model.providers import installed_providers, select_providers

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DML = "DmlExecutionProvider"
OV = "OpenVINOExecutionProvider"


@pytest.mark.parametrize(
    "available, device",
    [
        ([CUDA, DML, OV, CPU], "cuda"),
        (["TensorrtExecutionProvider", CUDA, CPU], "cuda"),
        ([DML, OV, CPU], "dml"),
        ([OV, CPU], "openvino"),
        (["AzureExecutionProvider", CPU], "cpu"),
        ([], "cpu"),
    ],
)
def test_auto_picks_best_installed_provider(available, device):
    choice = select_providers("auto", available)
    assert choice.device == device
    assert choice.names()[-1] == CPU          # CPU always last, as the fallback for missing kernels


def test_cuda_keeps_kv_cache_on_device_and_grows_arena_by_request():
    choice = select_providers("cuda", [CUDA, CPU])
    assert choice.names() == [CUDA, CPU]
    assert choice.ort_device == "cuda" and choice.on_gpu
    assert choice.options()[0]["arena_extend_strategy"] == "kSameAsRequested"


def test_directml_binds_to_dml_device():
    choice = select_providers("DML", [DML, CPU])
    assert choice.name == DML and choice.ort_device == "dml"


def test_openvino_forces_f32_on_cpu_device():
    choice = select_providers("openvino", [OV, CPU], threads=2)
    options = choice.options()[0]
    assert options["device_type"] == "CPU"
    config = json.loads(options["load_config"])["CPU"]
    assert config["INFERENCE_PRECISION_HINT"] == "f32"
    assert config["INFERENCE_NUM_THREADS"] == "2"
    assert choice.ort_device == "cpu" and not choice.on_gpu


@pytest.mark.parametrize("device, missing", [("cuda", CUDA), ("dml", DML), ("openvino", OV)])
def test_missing_provider_names_the_available_ones(device, missing):
    with pytest.raises(ProviderUnavailableError) as info:
        select_providers(device, ["AzureExecutionProvider", CPU])
    message = str(info.value)
    assert missing in message and "AzureExecutionProvider, CPUExecutionProvider" in message
    assert info.value.param == "device"


def test_unknown_device_lists_accepted_values():
    with pytest.raises(ProviderUnavailableError, match="auto, cuda, dml, openvino, cpu"):
        select_providers("tpu", [CPU])


def test_auto_on_this_machine_runs_a_real_session(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgevid.model.sessions import GraphSession

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    path = tmp_path / "double.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    choice = select_providers("auto", installed_providers())
    session = GraphSession(path, choice)
    assert session.provider == choice.name
    assert np.array_equal(session.run({"x": np.arange(3, dtype=np.float32)})["y"], [0, 2, 4])
