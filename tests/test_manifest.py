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
    with pytest.raises(ModelFolderError, match="available: fp32"):
        model.graph_path("decoder", "q4f16")
    with pytest.raises(ModelFolderError, match="unknown precision 'int3'"):
        model.select_graphs("int3")
    with pytest.raises(ModelFolderError, match="vision_encoder, embed_tokens, decoder"):
        model.graph_path("lm_head")


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "tokenizer_config.json"])
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


# ---- folders without edgevid.json: the layout onnx-community publishes --------------------------------------
def _published(tmp_path, files, *, manifest=False):
    """A folder in the published layout: configs at the root, graphs (empty files) in onnx/."""
    path = write_model_folder(tmp_path / "published", graphs=False)
    if not manifest:
        (path / "edgevid.json").unlink()
    (path / "onnx").mkdir()
    for name in files:
        (path / "onnx" / name).write_bytes(b"")
    return path


ALL_SUFFIXES = ("", "_fp16", "_q4", "_q4f16", "_quantized", "_int8", "_uint8", "_bnb4")


def test_published_layout_loads_without_edgevid_json(tmp_path):
    from edgevid_export.demo import demo_token_ids

    files = [f"{stem}{suffix}.onnx" for stem in ("vision_encoder", "embed_tokens", "decoder_model_merged",
                                                 "audio_encoder") for suffix in ALL_SUFFIXES]
    path = _published(tmp_path, files)
    (path / "generation_config.json").unlink()          # eos then comes from config.json + the end-of-turn token
    model = ModelFolder.load(path)
    ids = demo_token_ids()
    assert model.manifest == {}
    assert model.available_precisions == ("fp32", "fp16", "q8", "int8", "uint8", "q4", "q4f16", "bnb4")
    assert model.eos_token_ids == (ids.eos, ids.end_of_turn)
    assert model.special.video == ids.video and model.special.image == ids.image
    for precision, suffix in zip(("fp32", "fp16", "q4", "q4f16", "q8", "int8", "uint8", "bnb4"), ALL_SUFFIXES):
        chosen = model.select_graphs(precision)
        assert chosen.path("decoder") == path / "onnx" / f"decoder_model_merged{suffix}.onnx"
        assert chosen.path("vision") == path / "onnx" / f"vision_encoder{suffix}.onnx"
        assert chosen.label == precision


def test_precision_per_graph_and_nearest_available(tmp_path, caplog):
    files = ["vision_encoder.onnx", "vision_encoder_fp16.onnx", "vision_encoder_quantized.onnx",
             "embed_tokens.onnx", "embed_tokens_q4.onnx",
             "decoder_model_merged.onnx", "decoder_model_merged_q4.onnx", "decoder_model_merged_q4f16.onnx"]
    path = _published(tmp_path, files)
    model = ModelFolder.load(path)
    onnx = path / "onnx"
    with caplog.at_level("INFO", logger="edgevid.model.manifest"):
        q4 = model.select_graphs("q4")
    # no q4 vision graph: the 8-bit one, and one log line saying so
    assert q4.precisions == {"vision_encoder": "q8", "embed_tokens": "q4", "decoder": "q4"}
    assert q4.label == "vision_encoder=q8,embed_tokens=q4,decoder=q4"
    assert [r.getMessage() for r in caplog.records if "vision_encoder" in r.getMessage()] == [
        "published: no vision_encoder graph at q4, using q8"]
    mixed = model.select_graphs("decoder=q4f16,vision=fp16")
    assert mixed.paths == {"vision_encoder": onnx / "vision_encoder_fp16.onnx",
                           "embed_tokens": onnx / "embed_tokens.onnx",
                           "decoder": onnx / "decoder_model_merged_q4f16.onnx"}
    assert model.select_graphs("q4,vision=fp32").precisions["vision_encoder"] == "fp32"
    assert model.select_graphs("int8").precisions["vision_encoder"] == "q8"      # edgevid's name for _quantized
    with pytest.raises(ModelFolderError, match="available: fp32, q4"):
        model.select_graphs("embed=fp16")                                   # asked per graph: exactly that
    with pytest.raises(ModelFolderError, match="unknown graph 'lm_head'"):
        model.select_graphs("lm_head=q4")
    with pytest.raises(ModelFolderError, match="precision 'bnb4' is not in .*; available: fp32, fp16, q8, q4"):
        model.select_graphs("bnb4")                                         # no graph has it at all


def test_graphs_at_the_root_and_in_onnx(tmp_path):
    """edgevid's format 1 folders keep their graphs at the root; onnx/ wins when both have one."""
    path = write_model_folder(tmp_path / "m")
    (path / "edgevid.json").unlink()
    assert ModelFolder.load(path).select_graphs().path("decoder") == path / "decoder_model_merged.onnx"
    (path / "onnx").mkdir()
    (path / "onnx" / "decoder_model_merged.onnx").write_bytes(b"")
    assert ModelFolder.load(path).select_graphs().path("decoder") == path / "onnx" / "decoder_model_merged.onnx"


def test_no_graphs_or_other_model(tmp_path):
    path = _published(tmp_path, [])
    with pytest.raises(ModelFolderError, match="no ONNX graphs"):
        ModelFolder.load(path)
    (path / "onnx" / "decoder_model_merged.onnx").write_bytes(b"")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(ModelFolderError, match="'llama' model"):
        ModelFolder.load(path)


def test_format_2_manifest_only_adds_facts(tmp_path):
    path = _published(tmp_path, ["vision_encoder.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx"],
                      manifest=True)
    (path / "edgevid.json").write_text(json.dumps({"format_version": 2, "video": {"num_frames": 8}}))
    model = ModelFolder.load(path)
    assert model.vision.num_frames == 8 and model.available_precisions == ("fp32",)
    (path / "edgevid.json").write_text(json.dumps({"format_version": 1, "video": {"num_frames": 8}}))
    with pytest.raises(ModelFolderError, match="lists no precisions"):
        ModelFolder.load(path)
