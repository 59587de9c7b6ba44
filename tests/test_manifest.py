"""ModelFolder.load: what it reads from a model folder and how it fails."""
from __future__ import annotations

import json

import pytest

from edgevid.errors import ModelFolderError
from edgevid.model.manifest import ModelFolder
from model_folder import write_model_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model") / "demo-model")


def test_reads_ids_budgets_and_template(folder):
    from edgevid_export.demo import demo_token_ids

    ids = demo_token_ids()
    model = ModelFolder.load(folder)
    s = model.special
    assert (s.bos, s.pad, s.boi, s.eoi, s.image, s.video) == (ids.bos, ids.pad, ids.boi, ids.eoi, ids.image, ids.video)
    assert (s.boi_text, s.eoi_text, s.image_text, s.video_text, s.bos_text) == (
        "<|image>", "<image|>", "<|image|>", "<|video|>", "<bos>")
    assert s.end_of_turn == ids.end_of_turn
    assert model.eos_token_ids == (ids.eos, ids.end_of_turn)
    assert (model.vision.num_frames, model.vision.video_max_soft_tokens, model.vision.image_max_soft_tokens) == (32, 70, 280)
    assert (model.vision.patch_size, model.vision.pooling) == (16, 3)
    assert "<|turn>" in model.chat_template
    assert model.context_length == 4096
    assert model.name == "demo-model"


def test_special_ids_fall_back_to_tokenizer_json(tmp_path):
    from edgevid_export.demo import demo_token_ids

    path = write_model_folder(tmp_path / "m", special_tokens=False)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    model = ModelFolder.load(path)
    ids = demo_token_ids()
    assert (model.special.video, model.special.image, model.special.boi) == (ids.video, ids.image, ids.boi)
    assert model.eos_token_ids == (ids.eos, ids.end_of_turn)   # end of turn added from eot_token


def test_graph_paths_per_precision(folder):
    model = ModelFolder.load(folder)
    assert model.graph_path("decoder") == folder / "decoder_model_merged.onnx"
    assert model.graph_path("vision_encoder", "fp32").name == "vision_encoder.onnx"
    assert model.available_precisions == ("fp32", "q4")
    with pytest.raises(ModelFolderError, match="decoder_model_merged_q4.onnx") as err:
        model.graph_path("decoder", "q4")     # listed, file absent
    assert str(folder) in str(err.value)
    with pytest.raises(ModelFolderError, match="available: fp32, q4"):
        model.graph_path("decoder", "int3")
    with pytest.raises(ModelFolderError, match="vision_encoder, embed_tokens, decoder"):
        model.graph_path("lm_head")


@pytest.mark.parametrize("missing", ["edgevid.json", "config.json", "generation_config.json", "tokenizer.json",
                                     "tokenizer_config.json"])
def test_missing_file_is_named(tmp_path, missing):
    path = write_model_folder(tmp_path / "m")
    (path / missing).unlink()
    with pytest.raises(ModelFolderError) as err:
        ModelFolder.load(path)
    assert missing in str(err.value) and str(path) in str(err.value)


def test_missing_chat_template(tmp_path):
    path = write_model_folder(tmp_path / "m")
    (path / "chat_template.jinja").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="no chat template"):
        ModelFolder.load(path)


def test_template_inside_tokenizer_config_is_used(tmp_path):
    path = write_model_folder(tmp_path / "m")
    template = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelFolder.load(path).chat_template == template


def test_bad_manifest(tmp_path):
    path = write_model_folder(tmp_path / "m")
    (path / "edgevid.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="edgevid.json"):
        ModelFolder.load(path)
    (path / "edgevid.json").write_text(json.dumps({"format_version": 9, "precisions": {"fp32": {}}}))
    with pytest.raises(ModelFolderError, match="format_version 9"):
        ModelFolder.load(path)
    with pytest.raises(ModelFolderError, match="not found"):
        ModelFolder.load(tmp_path / "nowhere")
