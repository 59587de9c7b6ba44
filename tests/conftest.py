"""Shared fixtures: the tiny exported models every runtime test module uses, built once per session.

- ``demo_model``: the random-weight demo checkpoint exported fp32 (cached across sessions in the system temp
  dir, keyed by the exporter's sources; see ``demo_model.py``). Server, CLI, live and cache tests use it.
- ``e2b_model``: the E2B-like tiny checkpoint and its export (``(checkpoint, model_dir)``), once per session
  (or under ``$EDGEVID_OV_FIXTURES`` for the OpenVINO run).
- ``test_clip``: a 24-frame 160x120 clip (``write_test_clip``).
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_model():
    pytest.importorskip("torch")
    from demo_model import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def e2b_model(tmp_path_factory):
    pytest.importorskip("torch")
    from runtime_models import exported_model, models_root

    return exported_model("e2b_like", models_root(tmp_path_factory))


@pytest.fixture(scope="session")
def test_clip(tmp_path_factory):
    from runtime_models import write_test_clip

    return write_test_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")
