"""The export reads transformers' Gemma 4 internals only through ``edgevid_export.compat``.

transformers 5.25 renamed ``Gemma4RMSNorm.eps`` to ``variance_epsilon`` and broke every export; these tests
fail when another export module reads such a fact directly (so a rename is fixed in one place) and check
that the layer reads the installed transformers' real modules.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgevid_export import compat  # noqa: E402

EXPORT = Path(__file__).resolve().parents[1] / "export"
# attributes of transformers modules that have moved or may move between releases
FRAGILE_ATTRS = {"eps", "variance_epsilon", "with_scale", "scaling", "kv_sharing_modes", "per_layer_config"}
FRAGILE_SUFFIXES = ("_inv_freq", "_attention_scaling")


def _fragile_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and (node.attr in FRAGILE_ATTRS or node.attr.endswith(FRAGILE_SUFFIXES)):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(FRAGILE_SUFFIXES):
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers.models.gemma4.modeling"):
            found.append(f"{path.name}:{node.lineno} from {node.module} import ...")
    return found


def test_no_export_module_bypasses_the_compat_layer():
    graph_modules = ["decoder.py", "encoders.py", "embed_graph.py", "onnx_graphs.py", "convert.py", "parity.py",
                     "model_folder.py", "quantize.py"]
    bypasses = [hit for name in graph_modules for hit in _fragile_reads(EXPORT / name)]
    assert bypasses == [], f"read these through edgevid_export.compat: {bypasses}"


def test_the_bypass_check_sees_a_direct_read(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(norm, rotary, t):\n    return norm.eps + getattr(rotary, f'{t}_inv_freq')\n")
    assert len(_fragile_reads(sample)) == 2


class _OldNorm(torch.nn.Module):         # transformers <= 5.24
    def __init__(self):
        super().__init__()
        self.eps, self.with_scale = 1e-6, True
        self.weight = torch.nn.Parameter(torch.ones(4))


class _NewNorm(torch.nn.Module):         # transformers >= 5.25
    def __init__(self):
        super().__init__()
        self.variance_epsilon, self.with_scale = 1e-5, False


def test_norm_facts_under_both_spellings():
    assert compat.norm_eps(_OldNorm()) == 1e-6
    assert compat.norm_weight(_OldNorm()) is not None
    assert compat.norm_eps(_NewNorm()) == 1e-5
    assert compat.norm_weight(_NewNorm()) is None


def test_a_missing_fact_is_a_clear_error_naming_the_tested_range():
    with pytest.raises(compat.TransformersCompatError, match=r"RMSNorm epsilon.*tested on transformers"):
        compat.norm_eps(torch.nn.Identity())


def test_version_outside_the_tested_range_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="edgevid.export"):
        assert compat.check_version(compat.TESTED[0])
        assert compat.check_version(compat.TESTED[1])
        assert not compat.check_version("99.0.0")
    assert "outside the range" in caplog.text and caplog.text.count("outside") == 1


def test_pyproject_declares_the_tested_range():
    text = (EXPORT.parent / "pyproject.toml").read_text()
    assert f'"transformers>={compat.TESTED[0]},<={compat.TESTED[1]}"' in text


def test_reads_the_installed_transformers_modules():
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm, Gemma4TextModel

    config = Gemma4TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
                              hidden_size_per_layer_input=0, layer_types=["sliding_attention", "full_attention"],
                              rms_norm_eps=3e-6)
    model = Gemma4TextModel(config)
    assert compat.norm_eps(model.norm) == pytest.approx(3e-6)
    assert isinstance(model.norm, Gemma4RMSNorm)
    for layer_type in ("sliding_attention", "full_attention"):
        inv_freq, scaling = compat.rope_tables(model.rotary_emb, layer_type)
        assert inv_freq.ndim == 1 and scaling > 0
    assert compat.attention_scaling(model.layers[0].self_attn) == 1.0


def test_kv_sharing_and_layer_shapes_match_transformers_on_e2b():
    from transformers import Gemma4Config

    text = Gemma4Config().get_text_config()          # the E2B architecture: 35 layers, the last 20 share KV
    modes = compat.derive_kv_sharing_modes(text)
    assert modes.count("reuse") == text.num_kv_shared_layers
    if isinstance(getattr(type(text), "kv_sharing_modes", None), property):
        # which layers reuse a cache is what the export needs ("store" marks differ between releases)
        assert [m == "reuse" for m in modes] == [m == "reuse" for m in text.kv_sharing_modes]
    full = text.layer_types.index("full_attention")
    sliding = text.layer_types.index("sliding_attention")
    assert compat.layer_attention_shape(text, sliding)[1] == 256        # E2B: 256 / 512 head dims
    assert compat.layer_attention_shape(text, full)[1] == 512
