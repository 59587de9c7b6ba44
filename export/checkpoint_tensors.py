"""The checkpoint's tensors read straight from its safetensors files, one tensor (or row chunk) at a time.

``safe_open`` maps the files, so a tensor costs memory only while it is being converted (bf16 -> fp32) and
written; nothing holds the whole checkpoint. This is what lets the export of a 5 B-parameter model stay
within a fixed memory budget (see docs/real-size.md).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevid.errors import ExportError

SKIPPED_PREFIXES = ("model.audio_tower.", "model.embed_audio.")      # audio is out of scope
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str                       # safetensors dtype name ("BF16", "F32"...)
    shape: tuple[int, ...]
    offset: int = 0                  # of the data in the file

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _DTYPE_BYTES.get(self.dtype, 4)


def _header(path: Path) -> tuple[dict, int]:
    """(tensor entries, offset of the data section)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size <= 0 or size > 100 * 1024 ** 2:
            raise ExportError(f"not a safetensors file: {path}", source=str(path))
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


class CheckpointTensors:
    """Name -> tensor of a local checkpoint folder (``model.safetensors`` or a sharded index)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ExportError(f"no .safetensors weights in {self.folder}", source=str(self.folder))
        self.infos: dict[str, TensorInfo] = {}
        for path in files:
            header, data_start = _header(path)
            for name, meta in header.items():
                self.infos[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]),
                                              data_start + int(meta["data_offsets"][0]))
        self._handles: dict = {}

    @classmethod
    def find(cls, folder: Path | None) -> "CheckpointTensors | None":
        if folder is None or not any(Path(folder).glob("*.safetensors")):
            return None
        return cls(folder)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def weight_bytes(self, fp32: bool = True) -> int:
        """Bytes of the tensors the export reads (audio skipped), as fp32 when ``fp32``."""
        return sum(info.numel * 4 if fp32 else info.nbytes for name, info in self.infos.items()
                   if not name.startswith(SKIPPED_PREFIXES))

    def _handle(self, name: str):
        from safetensors import safe_open

        info = self.infos[name]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = safe_open(str(info.file), framework="pt")
        return handle

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """The tensor (rows ``start:stop`` of it) as float32 (floats) or its own integer type."""
        import torch

        if name not in self.infos:
            raise ExportError(f"the checkpoint has no tensor {name}", source=str(self.folder))
        handle = self._handle(name)
        if start is None and stop is None:
            tensor = handle.get_tensor(name)
        else:
            tensor = handle.get_slice(name)[start:stop]
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            tensor = tensor.float()
        return tensor.numpy()

    def memmap(self, name: str) -> np.ndarray:
        """The stored tensor as a read-only memory map (bf16 as uint16 bits): only the rows read become
        resident."""
        info = self.infos[name]
        dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info.dtype]
        return np.memmap(info.file, dtype=dtype, mode="r", offset=info.offset, shape=info.shape)

    def close(self) -> None:
        self._handles.clear()
