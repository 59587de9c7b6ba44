"""The model folder: the Hugging Face configs, tokenizer and chat template, the ONNX graphs (in ``onnx/``,
as onnx-community publishes them, or at the root, as edgevid wrote them before), and optionally
``edgevid.json``.

``ModelFolder.load(dir)`` reads and checks everything the runtime needs before any graph is opened, and
answers the questions the other layers ask: which graph file serves a precision (``select_graphs``, one
precision per graph), which token ids mark media and end generation, how many frames and soft tokens a
video gets. Without ``edgevid.json`` every fact comes from ``config.json``, ``generation_config.json``,
``processor_config.json``, ``tokenizer*.json`` and a scan of the graph files; ``edgevid.json`` only adds
facts (parity report, frames per video) and, in format 1 folders, lists the graph files per precision.
The layout is described in ``docs/ARCHITECTURE.md`` ("The model folder contract") and docs/models.md.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgevid.errors import ModelFolderError
from edgevid.model.folder_format import (
    GRAPH_DIR, GRAPH_FILES, GRAPHS, MANIFEST, RUNTIME_SUFFIXES, SUPPORTED_FORMAT_VERSIONS,
)

log = logging.getLogger(__name__)

_GRAPH_ALIASES = {"decoder_model_merged": "decoder", "vision": "vision_encoder", "embed": "embed_tokens"}
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
GRAPH_STEMS = GRAPH_FILES
GRAPH_DIRS = (GRAPH_DIR, ".")
SUFFIXES = RUNTIME_SUFFIXES
PRECISIONS = tuple(SUFFIXES)
# 8-bit files under another name count as the asked-for precision being in the folder
_SAME_BITS = {"int8": {"q8", "uint8"}, "q8": {"int8", "uint8"}, "uint8": {"q8", "int8"}}
# a graph without the asked-for precision takes the first of these that exists: 4-bit asks stay small,
# the rest prefer accuracy (fp16 last before fp32-less folders: fp16 Gemma overflows in some runtimes)
_FALLBACK = {
    "fp32": ("fp32", "q8", "int8", "uint8", "fp16", "q4", "q4f16", "bnb4"),
    "fp16": ("fp16", "fp32", "q8", "q4f16", "q4"),
    "q8": ("q8", "int8", "uint8", "fp32", "q4", "fp16", "q4f16"),
    "int8": ("int8", "q8", "uint8", "fp32", "q4", "fp16", "q4f16"),
    "uint8": ("uint8", "q8", "int8", "fp32", "q4", "fp16", "q4f16"),
    "q4": ("q4", "q4f16", "bnb4", "q8", "int8", "uint8", "fp32", "fp16"),
    "q4f16": ("q4f16", "q4", "fp16", "bnb4", "q8", "fp32"),
    "bnb4": ("bnb4", "q4", "q4f16", "q8", "fp32", "fp16"),
}

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
class GraphSelection:
    """The graph file and precision chosen for each of the three graphs (see ``ModelFolder.select_graphs``)."""

    paths: dict[str, Path]
    precisions: dict[str, str]

    def path(self, graph: str) -> Path:
        return self.paths[_GRAPH_ALIASES.get(graph, graph)]

    @property
    def label(self) -> str:
        """``q4`` when every graph has the same precision, else ``decoder=q4f16,embed_tokens=q4,...``."""
        distinct = set(self.precisions.values())
        if len(distinct) == 1:
            return distinct.pop()
        return ",".join(f"{g}={self.precisions[g]}" for g in GRAPHS)


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
    precisions: dict[str, dict[str, Any]] = field(repr=False)   # edgevid.json's entries (format 1 folders)
    catalogue: dict[str, dict[str, Path]] = field(default_factory=dict, repr=False)  # graph -> precision -> file

    # ---- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> "ModelFolder":
        path = Path(directory)
        if not path.is_dir():
            raise ModelFolderError(f"model folder not found: {path}", source=str(path))
        for name in REQUIRED_FILES:
            if not (path / name).is_file():
                raise ModelFolderError(f"model folder {path} has no {name}", source=str(path))
        manifest = {}
        if (path / MANIFEST).is_file():
            manifest = _read_json(path, MANIFEST)
            _check_manifest(path, manifest)
        config = _read_json(path, "config.json")
        model_type = config.get("model_type")
        if model_type not in (None, "gemma4"):
            raise ModelFolderError(f"model folder {path} holds a {model_type!r} model; edgevid runs Gemma 4 "
                                   "(model_type 'gemma4')", source=str(path))
        tokenizer_config = _read_json(path, "tokenizer_config.json")
        processor_config = _optional_json(path, "processor_config.json")
        generation_config = _optional_json(path, "generation_config.json")
        precisions = manifest.get("precisions") or {}
        catalogue = _catalogue(path, precisions)
        if not any(catalogue.get(g) for g in GRAPHS):
            raise ModelFolderError(
                f"model folder {path} has no ONNX graphs (looked for onnx/decoder_model_merged*.onnx, "
                f"onnx/embed_tokens*.onnx, onnx/vision_encoder*.onnx and the same at the root); export a model "
                f"with `edgevid export` or download a Gemma 4 ONNX folder", source=str(path))
        special = _special_tokens(path, manifest, tokenizer_config, config)
        return cls(
            path=path,
            manifest=manifest,
            config=config,
            generation_config=generation_config,
            tokenizer_config=tokenizer_config,
            processor_config=processor_config,
            chat_template=_chat_template(path, tokenizer_config, processor_config),
            special=special,
            eos_token_ids=_eos_ids(manifest, generation_config, config, special),
            vision=_vision_budget(manifest, processor_config, config),
            precisions=precisions,
            catalogue=catalogue,
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
        """Precisions edgevid.json lists, then those found for at least one graph, in ``PRECISIONS`` order."""
        found = {p for g in GRAPHS for p in self.catalogue.get(g, {})}
        return tuple(dict.fromkeys([*self.precisions, *(p for p in PRECISIONS if p in found)]))

    def graph_precisions(self, graph: str) -> tuple[str, ...]:
        graph = _graph_name(graph, self.path)
        return tuple(p for p, file in self.catalogue.get(graph, {}).items() if file.is_file())

    @property
    def decoder_info(self) -> dict[str, Any]:
        return dict(self.manifest.get("decoder", {}))

    @property
    def context_length(self) -> int:
        text = self.config.get("text_config", self.config)
        return int(self.decoder_info.get("max_position_embeddings") or text.get("max_position_embeddings") or 131072)

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Path of ``graph`` (vision_encoder | embed_tokens | decoder) at exactly ``precision``; checks it exists."""
        graph = _graph_name(graph, self.path)
        files = self.catalogue.get(graph, {})
        if precision not in files:
            if precision in self.precisions:
                raise ModelFolderError(f"{MANIFEST} lists no {graph} graph for precision {precision}",
                                       source=str(self.path))
            raise ModelFolderError(
                f"precision {precision!r} is not in {self.path} for {graph}; available: "
                f"{', '.join(self.graph_precisions(graph)) or 'none'}",
                source=str(self.path))
        file = files[precision]
        if not file.is_file():
            raise ModelFolderError(f"model folder {self.path} has no {file.relative_to(self.path).as_posix()} "
                                   f"({graph}, {precision})", source=str(self.path))
        return file

    def select_graphs(self, spec: str = "fp32") -> GraphSelection:
        """One graph file per graph for a precision spec: ``q4`` (each graph at q4, or the nearest precision
        it has: see ``_FALLBACK``; a precision no graph of the folder has is an error),
        ``decoder=q4f16,vision=fp16`` (exactly those; the others at fp32, or the nearest) or both
        (``q4,vision=fp32``). A precision edgevid.json lists is taken exactly."""
        default, exact = parse_precision_spec(spec)
        held = {p for g in GRAPHS for p in self.graph_precisions(g)} | set(self.precisions)
        if not ({default} | _SAME_BITS.get(default, set())) & held and len(exact) < len(GRAPHS):
            raise ModelFolderError(f"precision {default!r} is not in {self.path}; available: "
                                   f"{', '.join(self.available_precisions) or 'none'}", source=str(self.path))
        paths, chosen = {}, {}
        for graph in GRAPHS:
            if graph in exact:
                chosen[graph], paths[graph] = exact[graph], self.graph_path(graph, exact[graph])
                continue
            if default in self.precisions:
                chosen[graph], paths[graph] = default, self.graph_path(graph, default)
                continue
            present = self.graph_precisions(graph)
            pick = next((p for p in (*_FALLBACK[default], *PRECISIONS) if p in present), None)
            if pick is None:
                raise ModelFolderError(f"model folder {self.path} has no {GRAPH_STEMS[graph]}*.onnx graph",
                                       source=str(self.path))
            if pick != default:
                log.info("%s: no %s graph at %s, using %s", self.name, graph, default, pick)
            chosen[graph], paths[graph] = pick, self.catalogue[graph][pick]
        return GraphSelection(paths, chosen)


# ---- helpers -------------------------------------------------------------------------------------------
def _read_json(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read {name} in {folder}: {exc}", source=str(folder)) from exc
    if not isinstance(data, dict):
        raise ModelFolderError(f"{name} in {folder} is not a JSON object", source=str(folder))
    return data


def _optional_json(folder: Path, name: str) -> dict[str, Any]:
    return _read_json(folder, name) if (folder / name).is_file() else {}


def _graph_name(graph: str, folder: Path) -> str:
    graph = _GRAPH_ALIASES.get(graph, graph)
    if graph not in GRAPHS:
        raise ModelFolderError(f"unknown graph {graph!r}; graphs are {', '.join(GRAPHS)}", source=str(folder))
    return graph


def parse_precision_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"q4"`` -> ("q4", {}); ``"decoder=q4f16,vision=fp16"`` -> ("fp32", {"decoder": "q4f16", ...})."""
    default, exact = None, {}
    for item in str(spec or "fp32").split(","):
        item = item.strip().lower()
        if not item:
            continue
        graph, _, precision = item.rpartition("=")
        if precision not in SUFFIXES:
            raise ModelFolderError(f"unknown precision {precision!r} in {spec!r}; precisions are "
                                   f"{', '.join(PRECISIONS)}, per graph as decoder=q4f16,vision=fp16", param="precision")
        if not graph:
            if default is not None and default != precision:
                raise ModelFolderError(f"two default precisions in {spec!r}", param="precision")
            default = precision
            continue
        name = _GRAPH_ALIASES.get(graph, graph)
        if name not in GRAPHS:
            raise ModelFolderError(f"unknown graph {graph!r} in {spec!r}; graphs are "
                                   f"{', '.join(GRAPHS)} (or decoder_model_merged, vision, embed)", param="precision")
        exact[name] = precision
    return default or "fp32", exact


def _catalogue(folder: Path, listed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Path]]:
    """graph -> precision -> file: the files edgevid.json lists (kept even when missing, so the error names
    them), then ``<stem><suffix>.onnx`` found in onnx/ and at the root (onnx/ first)."""
    catalogue: dict[str, dict[str, Path]] = {g: {} for g in GRAPHS}
    for precision, entry in listed.items():
        for graph in GRAPHS:
            file = entry.get(graph)
            if isinstance(file, str) and file:
                catalogue[graph][precision] = folder / file
    for directory in GRAPH_DIRS:
        base = folder / directory
        if not base.is_dir():
            continue
        for graph, stem in GRAPH_STEMS.items():
            for precision, suffix in SUFFIXES.items():
                file = base / f"{stem}{suffix}.onnx"
                if file.is_file() and not _listed_under_alias(catalogue[graph], precision, file):
                    catalogue[graph].setdefault(precision, file)
    return catalogue


def _listed_under_alias(files: dict[str, Path], precision: str, file: Path) -> bool:
    """A format 1 folder lists ``_quantized`` files as "int8": do not list them again as "q8"."""
    return any(p != precision and f == file for p, f in files.items())


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFolderError(
            f"{MANIFEST} in {folder} has format_version {version!r}; this edgevid reads "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}", source=str(folder))
    precisions = manifest.get("precisions")
    if version == 1 and (not isinstance(precisions, dict) or not precisions):
        raise ModelFolderError(f"{MANIFEST} in {folder} lists no precisions", source=str(folder))
    if precisions is not None and (not isinstance(precisions, dict)
                                   or not all(isinstance(v, dict) for v in precisions.values())):
        raise ModelFolderError(f"{MANIFEST} in {folder}: precisions must map names to graph files",
                               source=str(folder))


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


# SpecialTokens field -> config.json key (top level, then text_config)
_CONFIG_IDS = {"bos": "bos_token_id", "pad": "pad_token_id", "boi": "boi_token_id", "eoi": "eoi_token_id",
               "image": "image_token_id", "video": "video_token_id"}


def _special_tokens(folder: Path, manifest: dict[str, Any], tokenizer_config: dict[str, Any],
                    config: dict[str, Any]) -> SpecialTokens:
    """edgevid.json's ids and strings first, then config.json's ids; anything still missing is looked up
    in tokenizer.json by its string."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    given = dict(manifest.get("special_tokens") or {})
    for key, name in _CONFIG_IDS.items():
        if given.get(key) is None:
            value = config.get(name, text_config.get(name))
            if isinstance(value, int) and not isinstance(value, bool):
                given[key] = value
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


def _eos_ids(manifest: dict[str, Any], generation_config: dict[str, Any], config: dict[str, Any],
             special: SpecialTokens) -> tuple[int, ...]:
    """generation_config's eos ids, then edgevid.json's, then config.json's, then the end-of-turn token;
    order kept, no repeats."""
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    ids = (_as_ids(generation_config.get("eos_token_id")) + _as_ids((manifest.get("special_tokens") or {}).get("eos"))
           + _as_ids(config.get("eos_token_id", text_config.get("eos_token_id"))))
    if special.end_of_turn is not None:
        ids.append(special.end_of_turn)
    return tuple(dict.fromkeys(ids))


def _vision_budget(manifest: dict[str, Any], processor_config: dict[str, Any],
                   config: dict[str, Any]) -> VisionBudget:
    video = manifest.get("video") or {}
    image = manifest.get("image") or {}
    vision = dict(config.get("vision_config") or {}) if isinstance(config.get("vision_config"), dict) else {}
    vision.update(manifest.get("vision") or {})
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
