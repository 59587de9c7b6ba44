"""The model folder: ``edgevid.json`` + the Hugging Face configs, tokenizer and chat template beside it.

``ModelFolder.load(dir)`` reads and checks everything the runtime needs before any graph is opened, and
answers the questions the other layers ask: which graph file serves a precision, which token ids mark
media and end generation, how many frames and soft tokens a video gets. The layout is described in
``docs/ARCHITECTURE.md`` ("The model folder contract").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevid.errors import ModelFolderError
from edgevid.model.folder_format import GRAPHS, MANIFEST, SUPPORTED_FORMAT_VERSIONS

REQUIRED_FILES = (MANIFEST, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_GRAPH_ALIASES = {"decoder_model_merged": "decoder", "vision": "vision_encoder", "embed": "embed_tokens"}

# tokenizer_config.json attribute -> SpecialTokens field, with the Gemma 4 string as the fallback
_TOKEN_STRINGS = {
    "bos": ("bos_token", "<bos>"), "eos": ("eos_token", "<eos>"), "pad": ("pad_token", "<pad>"),
    "boi": ("boi_token", "<|image>"), "eoi": ("eoi_token", "<image|>"), "image": ("image_token", "<|image|>"),
    "video": ("video_token", "<|video|>"), "end_of_turn": ("eot_token", "<turn|>"),
}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids and strings of the tokens the runtime writes or watches for."""

    bos: int
    pad: int
    boi: int
    eoi: int
    image: int
    video: int
    end_of_turn: int | None
    bos_text: str
    boi_text: str
    eoi_text: str
    image_text: str
    video_text: str


@dataclass(frozen=True)
class VisionBudget:
    """Frames and soft tokens per medium (from edgevid.json, else processor_config.json, else Gemma 4's)."""

    num_frames: int = 32
    video_max_soft_tokens: int = 70
    image_max_soft_tokens: int = 280
    default_fps: float = 24.0
    patch_size: int = 16
    pooling: int = 3


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    generation_config: dict[str, Any]
    tokenizer_config: dict[str, Any]
    processor_config: dict[str, Any]
    chat_template: str
    special: SpecialTokens
    eos_token_ids: tuple[int, ...]
    vision: VisionBudget
    precisions: dict[str, dict[str, Any]] = field(repr=False)

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> "ModelFolder":
        path = Path(directory)
        if not path.is_dir():
            raise ModelFolderError(f"model folder not found: {path}", source=str(path))
        for name in REQUIRED_FILES:
            if not (path / name).is_file():
                raise ModelFolderError(
                    f"model folder {path} has no {name}"
                    + (" (export the model with `edgevid export`)" if name == MANIFEST else ""),
                    source=str(path))
        manifest = _read_json(path, MANIFEST)
        _check_manifest(path, manifest)
        tokenizer_config = _read_json(path, "tokenizer_config.json")
        processor_config = _read_json(path, "processor_config.json") if (path / "processor_config.json").is_file() else {}
        generation_config = _read_json(path, "generation_config.json")
        special = _special_tokens(path, manifest, tokenizer_config)
        return cls(
            path=path,
            manifest=manifest,
            config=_read_json(path, "config.json"),
            generation_config=generation_config,
            tokenizer_config=tokenizer_config,
            processor_config=processor_config,
            chat_template=_chat_template(path, tokenizer_config, processor_config),
            special=special,
            eos_token_ids=_eos_ids(manifest, generation_config, special),
            vision=_vision_budget(manifest, processor_config),
            precisions=manifest["precisions"],
        )

    # ---- questions -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def available_precisions(self) -> tuple[str, ...]:
        return tuple(self.precisions)

    @property
    def decoder_info(self) -> dict[str, Any]:
        return dict(self.manifest.get("decoder", {}))

    @property
    def context_length(self) -> int:
        text = self.config.get("text_config", self.config)
        return int(self.decoder_info.get("max_position_embeddings") or text.get("max_position_embeddings") or 131072)

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Path of ``graph`` (vision_encoder | embed_tokens | decoder) at ``precision``; checks it exists."""
        graph = _GRAPH_ALIASES.get(graph, graph)
        if graph not in GRAPHS:
            raise ModelFolderError(f"unknown graph {graph!r}; graphs are {', '.join(GRAPHS)}", source=str(self.path))
        if precision not in self.precisions:
            raise ModelFolderError(
                f"precision {precision!r} is not in {self.path}; available: {', '.join(self.precisions) or 'none'}",
                source=str(self.path))
        entry = self.precisions[precision].get(graph)
        if not isinstance(entry, str) or not entry:
            raise ModelFolderError(f"{MANIFEST} lists no {graph} graph for precision {precision}", source=str(self.path))
        file = self.path / entry
        if not file.is_file():
            raise ModelFolderError(f"model folder {self.path} has no {entry} ({graph}, {precision})",
                                   source=str(self.path))
        return file


# ---- helpers -------------------------------------------------------------------------------------------
def _read_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {name} in {folder}: {exc}", source=str(folder)) from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{name} in {folder} is not a JSON object", source=str(folder))
    return data


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFolderError(
            f"{MANIFEST} in {folder} has format_version {version!r}; this edgevid reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}", source=str(folder))
    precisions = manifest.get("precisions")
    if not isinstance(precisions, dict) or not precisions or not all(isinstance(v, dict) for v in precisions.values()):
        raise ModelFolderError(f"{MANIFEST} in {folder} lists no precisions", source=str(folder))


def _chat_template(folder: Path, tokenizer_config: dict[str, Any], processor_config: dict[str, Any]) -> str:
    file = folder / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    candidates = [tokenizer_config.get("chat_template"), processor_config.get("chat_template")]
    if (folder / "chat_template.json").is_file():
        candidates.append(_read_json(folder, "chat_template.json").get("chat_template"))
    for template in candidates:
        if isinstance(template, list):   # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template.strip():
            return template
    raise ModelFolderError(
        f"model folder {folder} has no chat template (chat_template.jinja, or chat_template in "
        f"tokenizer_config.json)", source=str(folder))


def _added_tokens(folder: Path) -> dict[str, int]:
    data = _read_json(folder, "tokenizer.json")
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if "content" in t and "id" in t}


def _special_tokens(folder: Path, manifest: dict[str, Any], tokenizer_config: dict[str, Any]) -> SpecialTokens:
    """edgevid.json's ids and strings first; anything missing is looked up in tokenizer.json by its string."""
    given = manifest.get("special_tokens") or {}
    texts = {}
    for key, (attr, default) in _TOKEN_STRINGS.items():
        value = given.get(f"{key}_text") or tokenizer_config.get(attr) or default
        texts[key] = value["content"] if isinstance(value, dict) else str(value)
    ids: dict[str, int | None] = {}
    lookup: dict[str, int] | None = None
    for key in ("bos", "pad", "boi", "eoi", "image", "video", "end_of_turn"):
        value = given.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            ids[key] = value
            continue
        if lookup is None:
            lookup = _added_tokens(folder)
        ids[key] = lookup.get(texts[key])
        if ids[key] is None and key != "end_of_turn":
            raise ModelFolderError(
                f"model folder {folder}: no id for the {key} token {texts[key]!r} in {MANIFEST} or tokenizer.json",
                source=str(folder))
    return SpecialTokens(
        bos=ids["bos"], pad=ids["pad"], boi=ids["boi"], eoi=ids["eoi"], image=ids["image"], video=ids["video"],
        end_of_turn=ids["end_of_turn"], bos_text=texts["bos"], boi_text=texts["boi"], eoi_text=texts["eoi"],
        image_text=texts["image"], video_text=texts["video"])


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _eos_ids(manifest: dict[str, Any], generation_config: dict[str, Any], special: SpecialTokens) -> tuple[int, ...]:
    """generation_config's eos ids, then edgevid.json's, then the end-of-turn token; order kept, no repeats."""
    ids = _as_ids(generation_config.get("eos_token_id")) + _as_ids((manifest.get("special_tokens") or {}).get("eos"))
    if special.end_of_turn is not None:
        ids.append(special.end_of_turn)
    return tuple(dict.fromkeys(ids))


def _vision_budget(manifest: dict[str, Any], processor_config: dict[str, Any]) -> VisionBudget:
    video = manifest.get("video") or {}
    image = manifest.get("image") or {}
    vision = manifest.get("vision") or {}
    pv = processor_config.get("video_processor") or {}
    pi = processor_config.get("image_processor") or {}
    default = VisionBudget()
    return VisionBudget(
        num_frames=int(video.get("num_frames") or pv.get("num_frames") or default.num_frames),
        video_max_soft_tokens=int(video.get("max_soft_tokens") or pv.get("max_soft_tokens")
                                  or default.video_max_soft_tokens),
        image_max_soft_tokens=int(image.get("max_soft_tokens") or pi.get("max_soft_tokens")
                                  or processor_config.get("image_seq_length") or default.image_max_soft_tokens),
        default_fps=float(video.get("default_fps") or default.default_fps),
        patch_size=int(vision.get("patch_size") or pv.get("patch_size") or default.patch_size),
        pooling=int(vision.get("pooling_kernel_size") or pv.get("pooling_kernel_size") or default.pooling),
    )
