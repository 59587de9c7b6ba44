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
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
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

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """The tensor (rows ``start:stop`` of it) as float32 (floats) or its own integer type.

        Plain file reads, not a mapping: a mapped file's pages would stay in this process's resident set
        (reading E2B's 10 GB through ``safe_open`` left 5.7 GB resident)."""
        if name not in self.infos:
            raise ExportError(f"the checkpoint has no tensor {name}", source=str(self.folder))
        info = self.infos[name]
        stored = _NUMPY.get(info.dtype)
        if stored is None:
            raise ExportError(f"tensor {name} has dtype {info.dtype}, which the export cannot read",
                              source=str(self.folder))
        shape = list(info.shape)
        rows = shape[0] if shape else 1
        first, last = max(0, start or 0), min(rows, rows if stop is None else stop)
        last = max(first, last)
        row_elems = info.numel // rows if rows else 0
        itemsize = np.dtype(stored).itemsize
        with open(info.file, "rb") as handle:
            handle.seek(info.offset + first * row_elems * itemsize)
            data = np.fromfile(handle, dtype=stored, count=(last - first) * row_elems)
        if start is None and stop is None:
            data = data.reshape(shape)
        else:
            data = data.reshape([last - first] + shape[1:])
        if info.dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        if data.dtype.kind == "f" and data.dtype != np.float32:
            return data.astype(np.float32)
        return data

    def memmap(self, name: str) -> np.ndarray:
        """The stored tensor as a read-only memory map (bf16 as uint16 bits): only the rows read become
        resident."""
        info = self.infos[name]
        dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info.dtype]
        return np.memmap(info.file, dtype=dtype, mode="r", offset=info.offset, shape=info.shape)
