"""What every worker of one batch run shares (:class:`BatchJob`) and what one item is (:class:`Item`).

A record's resume key is the hash of (where the source is, the hash of its bytes, the question, the
model's identity, the generation options): rerunning the same command skips exactly the answers already
in the results, and a changed file, question, model or option is answered again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgevid.media import SourcePolicy
from edgevid.model.generate import GenerationOptions
from edgevid.model.manifest import ModelFolder
from edgevid.model.folder_format import ring_path

GRAPHS = ("vision_encoder", "embed_tokens", "decoder")
IDENTITY_FILES = ("edgevid.json", "config.json", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "chat_template.jinja", "processor_config.json")


@dataclass(frozen=True)
class BatchJob:
    """Picklable: sent once to every local worker process and Ray actor."""

    model_dir: str | None            # None with demo=True: each machine uses its own bundled demo folder
    model_id: str                    # :func:`model_identity` on the driver; workers check theirs matches
    model_name: str
    options: GenerationOptions
    url_policy: SourcePolicy         # for http(s) sources (local files are named by the user: any size)
    demo: bool = False
    precision: str = "fp32"
    device: str = "auto"
    threads: int = 1                 # onnxruntime intra-op threads per worker
    shipped_model: dict | None = field(default=None, compare=False)   # Ray: file name -> object ref

    @functools.cached_property
    def answer_basis(self) -> str:
        """The part of every resume key that is the same for the whole run (model, precision, options)."""
        return json.dumps([self.model_id, self.precision, dataclasses.asdict(self.options)], sort_keys=True,
                          default=str)


@dataclass(frozen=True)
class Item:
    """One source and the questions still to answer about it (all run in one worker, in order, so the
    media cache and the prompt prefix are reused between them)."""

    index: int
    name: str
    location: str
    questions: tuple[str, ...]
    done: frozenset[str] = frozenset()   # keys already in the results for this location (resume)
    sha256: str | None = None            # content hash when the driver already knows it (unchanged file)
    attempt: int = 0

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


def answer_key(location: str, content_sha256: str | None, question: str, job: BatchJob) -> str:
    """The resume key of one answer; ``content_sha256`` None = the source could not be read."""
    payload = json.dumps([location, content_sha256 or "unreadable", question, job.answer_basis])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_identity(model_dir: str | os.PathLike, precision: str) -> str:
    """What the answers depend on in a model folder: its configs, tokenizer and chat template by content,
    the graphs of ``precision`` by name and size (hashing gigabytes of weights would cost more than a
    rerun saves). The same folder copied to another machine has the same identity."""
    folder = ModelFolder.load(model_dir)
    digest = hashlib.sha256(f"precision={precision}".encode())
    for name in IDENTITY_FILES:
        path = folder.path / name
        if path.is_file():
            digest.update(b"\0" + name.encode() + b"\0" + path.read_bytes())
    for path in model_files(folder, precision):
        if ".onnx" in path.name:
            digest.update(f"\0{path.relative_to(folder.path).as_posix()}\0{path.stat().st_size}".encode())
    return digest.hexdigest()[:24]


def model_files(folder: ModelFolder, precision: str) -> list[Path]:
    """The files a worker needs for ``precision``: every non-graph file, and the precision's graphs with
    their external data (``<graph>.onnx_data``, ``<graph>_data``, ...) and the decoder's ring variant."""
    graphs = [Path(folder.graph_path(kind, precision)) for kind in GRAPHS]
    decoder = graphs[list(GRAPHS).index("decoder")]
    graphs.append(ring_path(decoder))
    wanted = []
    for path in sorted(p for p in folder.path.rglob("*") if p.is_file()):
        if ".onnx" in path.name:
            if any(path.parent == g.parent and path.name.startswith(g.name) for g in graphs):
                wanted.append(path)
        else:
            wanted.append(path)
    return wanted
