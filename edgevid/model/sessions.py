"""One onnxruntime session per graph of the model folder.

- :class:`VisionEncoderSession` — frames -> soft-token features (``image_features``), run in chunks of
  frames so activation memory stays bounded; checks that the graph returned one row per soft token.
- :class:`EmbedSession` — token ids -> ``inputs_embeds`` (+ ``per_layer_inputs``). Image/video/audio
  placeholder ids are replaced by the pad id first, exactly as transformers' Gemma 4 does, so the
  per-layer inputs at media positions are the pad token's.
- :class:`DecoderSession` — ``decoder_model_merged`` with a KV cache (:class:`KVCache`) that is fed
  back step after step through IO binding: presents become the next step's pasts as OrtValues, never
  converted to numpy, and on CUDA/DirectML they stay in device memory. Layers the graph lists under
  ``edgevid.kv_in_place`` (their attention is ``GroupQueryAttention``) keep one preallocated buffer on
  the CPU, bound as both past and present, so each step writes only its new row instead of copying the
  whole cache (capacity grows by doubling; a borrowed cache is copied before its first write).

``merge_vision_features`` writes each media item's features into its placeholder positions, in order.

Session options (``session_options``), chosen on purpose:

- graph optimisation ``ORT_ENABLE_ALL``: constant folding, MatMul/Add/GELU/norm fusions and the
  CPU layout transforms; on q4 graphs it also prepacks the MatMulNBits weights once at load.
- ``intra_op_num_threads`` = the ``threads`` asked for, else 0 (onnxruntime's default: one thread per
  physical core, which is what matmul-bound inference wants; hyper-threads only contend).
- sequential execution and ``inter_op_num_threads=1``: the graphs are one chain of layers, so
  parallel branches would only fight the intra-op pool for the same cores.
- memory patterns off: they cache an allocation plan per input shape, and the decoder sees a new
  past length every step (the vision encoder a new frame count per request), so a plan is never
  reused; DirectML requires them off anyway.
- intra-op spinning off (``spinning``): pool threads busy-wait between ops by default, which on shared
  cores (the usual edge box) takes CPU from the threads doing the work.
- prefill in chunks (the CPU variant's ``edgevid.prefill_chunk``, 128-512 tokens by model width, else 128): a
  chunk's attention scores and MLP activations are the prefill's transient memory.
- CPU memory arena off for every graph: the arena grows by powers of two and keeps what it took, for no
  decode speed; a vision arena would also stay reserved while the decoder runs.
- after loading each graph, each vision run and each prefill chunk the freed heap is handed back to the OS
  (``edgevid.model.heap.trim_heap``, glibc only; the parsed decoder file otherwise stays resident), and so
  are the pages of the mapped weight files read since (``edgevid.model.mapped_pages``, Linux): what
  pre-packing read, and embedding rows. While a graph loads a thread does that continuously.

What each of these measured: docs/benchmarks.md ("Session options").
"""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from edgevid.errors import ModelFolderError
from edgevid.model.folder_format import (EMBEDS_INSIDE, KV_IN_PLACE, KV_RING, PREFILL_CHUNK, VISION_BLOCKS,
                                         ring_path)
from edgevid.model.heap import trim_heap
from edgevid.model.mapped_pages import TrimMappedPages, register_weights, release_weight_pages
from edgevid.model.providers import CPU, ProviderChoice, select_providers

log = logging.getLogger(__name__)

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
CAPACITY_STEP = 256                     # in-place KV buffers grow in multiples of this many rows
DEFAULT_PREFILL_CHUNK = 128


@dataclass(frozen=True)
class SessionConfig:
    threads: int | None = None          # intra-op threads; None = one per physical core
    optimization: str = "all"           # "disable" | "basic" | "extended" | "all"
    frames_per_run: int = 4             # vision encoder chunk: bounds activation memory
    prefill_chunk: int | None = None    # prompt tokens per decoder run during prefill (0 = all at once;
                                        # None: the graph's own suggestion, else DEFAULT_PREFILL_CHUNK)
    optimized_model_dir: str | None = None  # write the optimised graphs here (debugging)
    spinning: bool = False              # intra-op threads busy-wait between ops (onnxruntime's default: on)
    kv_in_place: bool = True            # write the KV cache in place where the graph allows it


def cores_look_free() -> bool:
    """Whether intra-op spinning should pay off here: the 1-minute load average is below half the CPUs (no
    load average, e.g. on Windows: assume so). Measured on 2 cores under a load average of ~11, decode with
    spinning on ran 2.6x (fp32) to 4.7x (q4) slower than with it off (docs/performance.md)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return True
    return load < (os.cpu_count() or 1) / 2


def session_options(config: SessionConfig, *, arena: bool, label: str = "graph"):
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[config.optimization]
    so.intra_op_num_threads = int(config.threads or 0)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = False
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
    if config.optimized_model_dir:
        so.optimized_model_filepath = os.path.join(config.optimized_model_dir, f"{label}.optimized.onnx")
    return so


def trim_memory() -> None:
    """Freed heap and the mapped weight pages read since the last call go back to the OS."""
    trim_heap()
    release_weight_pages()


class GraphSession:
    """Owns one ``onnxruntime.InferenceSession`` created once with explicit options and providers."""

    arena = False

    def __init__(self, path: str | os.PathLike, choice: ProviderChoice, config: SessionConfig = SessionConfig()):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFolderError(f"graph file missing: {self.path}", source=str(self.path))
        self.config = config
        self._open(choice)

    def _open(self, choice: ProviderChoice) -> None:
        import onnxruntime as ort

        self.choice = choice
        options = session_options(self.config, arena=self.arena, label=self.path.stem)
        try:
            # the weight pages pre-packing has read are handed back while it goes on (mapped_pages)
            with TrimMappedPages(self.path.parent):
                self.session = ort.InferenceSession(
                    str(self.path), sess_options=options, providers=choice.names(), provider_options=choice.options()
                )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelFolderError(f"cannot load {self.path.name}: {exc}", source=str(self.path)) from exc
        register_weights(self.path.parent)
        trim_memory()               # the parsed graph file and load-time copies are freed by now
        # graph inputs plus initializers a caller may override (e.g. the decoder's num_logits_to_keep,
        # which defaults to 0 = logits for every position)
        self.inputs = {arg.name: arg for arg in self.session.get_inputs()}
        self.inputs.update({arg.name: arg for arg in self.session.get_overridable_initializers()})
        self.output_names = [arg.name for arg in self.session.get_outputs()]
        active = self.session.get_providers()[0]
        if active != choice.name:
            log.warning("%s: asked for %s, onnxruntime runs it on %s", self.path.name, choice.name, active)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def input_dtype(self, name: str):
        return _NP_TYPES.get(self.inputs[name].type, np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own error types
            self._fall_back_to_cpu(exc)
            outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))

    def _fall_back_to_cpu(self, exc: Exception) -> None:
        """A provider that accepted the graph at load time but rejects a node when it runs (onnxruntime's
        CUDA provider and GroupQueryAttention with attention_bias before onnxruntime 1.24, for one): this
        graph runs on the CPU provider from now on; the other graphs keep theirs. Re-raises on CPU."""
        if self.provider == CPU:
            raise exc
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        log.warning("%s: %s failed at run time (%s); running this graph on %s from now on",
                    self.path.name, self.provider, first_line, CPU)
        self._open(select_providers("cpu", [CPU]))


class VisionEncoderSession(GraphSession):
    def __init__(self, path, choice, config=SessionConfig(), *, pooling_kernel_size: int = 3,
                 patch_size: int | None = None):
        super().__init__(path, choice, config)
        self.pool_area = pooling_kernel_size ** 2
        patch_dim = self.inputs["pixel_values"].shape[-1] if "pixel_values" in self.inputs else None
        if patch_size is not None and isinstance(patch_dim, int) and patch_dim != 3 * patch_size ** 2:
            raise ModelFolderError(
                f"{self.path.name} takes patches of {patch_dim} values, but the folder's configs give "
                f"patch_size {patch_size} (3 x {patch_size}^2 = {3 * patch_size ** 2}); the graph and the configs "
                f"come from different models", source=str(self.path))

    def soft_token_counts(self, position_ids: np.ndarray) -> np.ndarray:
        """Soft tokens per frame: real (non-padding) patches / pooling area, as transformers counts them."""
        return (position_ids != -1).all(axis=-1).sum(axis=-1) // self.pool_area

    def encode(self, pixel_values: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """``[frames, patches, 768]`` + ``[frames, patches, 2]`` -> ``[soft_tokens, text_hidden]``."""
        step = max(1, self.config.frames_per_run)
        chunks = [
            self._encode_chunk(pixel_values[i : i + step], position_ids[i : i + step])
            for i in range(0, len(pixel_values), step)
        ]
        return np.concatenate(chunks, axis=0) if len(chunks) > 1 else chunks[0]

    def _encode_chunk(self, pixel_values, position_ids) -> np.ndarray:
        pixel_values, position_ids = trim_padding(pixel_values, position_ids, self.pool_area)
        feeds = {
            "pixel_values": np.ascontiguousarray(pixel_values, dtype=self.input_dtype("pixel_values")),
            "pixel_position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
        }
        features = self.run(feeds)["image_features"]
        trim_memory()
        counts = self.soft_token_counts(position_ids)
        expected = int(counts.sum())
        if features.ndim == 2 and features.shape[0] != expected and len(counts) > 1 \
                and features.shape[0] % len(counts) == 0:
            # rows per frame = the chunk's most soft tokens (edgevid's graphs slice the padding slots off
            # by shape, not by value): frames with fewer real patches carry padding rows at their end
            features = features.reshape(len(counts), -1, features.shape[-1])
        if features.ndim == 3 and features.shape[0] == len(counts):
            # a graph without data-dependent shapes: [frames, max tokens, hidden], each frame's real
            # soft tokens first (the pooler maps padding patches to no output row)
            features = np.concatenate([f[:n] for f, n in zip(features, counts)], axis=0)
        if features.ndim != 2 or features.shape[0] != expected:
            features = self._fallback(feeds, expected, features.shape)
        return features

    def _fallback(self, feeds, expected: int, got) -> np.ndarray:
        """A provider that mis-shapes the padding-dropping output: rerun the graph on the CPU provider."""
        if self.provider == CPU:
            raise ModelFolderError(
                f"{self.path.name} returned {got[0]} feature rows for {expected} soft tokens", source=str(self.path)
            )
        log.warning(
            "%s on %s returned %s rows for %d soft tokens; running the vision encoder on %s from now on",
            self.path.name, self.provider, got[0], expected, CPU,
        )
        self._open(select_providers("cpu", [CPU]))
        return self._encode_chunk(feeds["pixel_values"], feeds["pixel_position_ids"])


def trim_padding(pixel_values: np.ndarray, position_ids: np.ndarray, pool_area: int):
    """Drop the trailing patch slots that are padding in every frame of a chunk (rounded to whole pooling
    cells). Exact: the vision graph masks padding keys to a softmax weight of exactly 0 and pools no
    padding row, so those slots only cost compute (36 of 630 per 640x360 video frame)."""
    real = (position_ids != -1).all(axis=-1)                      # [frames, patches]
    patches = real.shape[1]
    keep = int(real.sum(axis=-1).max()) if real.size else 0
    keep = min(patches, -(-keep // pool_area) * pool_area)
    if keep == 0 or keep == patches or real[:, keep:].any():
        return pixel_values, position_ids
    return pixel_values[:, :keep], position_ids[:, :keep]


@dataclass
class Embeddings:
    inputs_embeds: np.ndarray               # [1, seq, hidden]
    per_layer_inputs: np.ndarray | None     # [1, seq, layers, dim] or None


class EmbedSession(GraphSession):
    def __init__(self, path, choice, config=SessionConfig(), *, placeholder_ids: Sequence[int] = (), pad_id: int = 0):
        # a lookup runs on the calling thread: a second intra-op pool would wake (or spin) beside the decoder's
        # once per generated token, for a few rows of work
        super().__init__(path, choice, replace(config, threads=1, spinning=False))
        self.placeholder_ids = np.asarray(sorted(set(placeholder_ids)), dtype=np.int64)
        self.pad_id = int(pad_id)
        self.has_per_layer = "per_layer_inputs" in self.output_names

    def text_ids(self, input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        if self.placeholder_ids.size:
            ids = np.where(np.isin(ids, self.placeholder_ids), self.pad_id, ids)
        return ids

    def embed(self, input_ids: np.ndarray) -> Embeddings:
        out = self.run({"input_ids": self.text_ids(input_ids).reshape(1, -1)})
        return Embeddings(out["inputs_embeds"], out.get("per_layer_inputs"))

    def embed_bound(self, input_ids: np.ndarray, device: str) -> dict:
        """Embed through IO binding; returns ``{output name: OrtValue}`` resident on ``device``."""
        import onnxruntime as ort

        ids = ort.OrtValue.ortvalue_from_numpy(self.text_ids(input_ids).reshape(1, -1), device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", ids)
        for name in self.output_names:
            binding.bind_output(name, device, 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs()))


def merge_vision_features(inputs_embeds: np.ndarray, positions: Sequence[np.ndarray],
                          features: Sequence[np.ndarray]) -> np.ndarray:
    """Write each media item's feature rows into its placeholder positions (in order), in place.

    ``inputs_embeds`` is ``[1, seq, hidden]``; ``positions[i]`` are the prompt positions of media item
    ``i``'s soft tokens and ``features[i]`` its ``[soft_tokens, hidden]`` vision-encoder output.
    """
    flat = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
    for where, rows in zip(positions, features, strict=True):
        if len(where) != len(rows):
            raise ModelFolderError(
                f"a media item has {len(where)} soft-token positions in the prompt but the vision encoder "
                f"returned {len(rows)} feature rows"
            )
        flat[where] = rows.astype(flat.dtype, copy=False)
    return inputs_embeds


@dataclass(frozen=True)
class CacheSpec:
    layer: int
    kv_heads: int
    head_dim: int
    dtype: type


class KVCache:
    """Past keys/values of the cache-owning layers as OrtValues, plus the number of tokens they hold.

    An in-place layer's value is a buffer ``[1, kv_heads, capacity, head_dim]`` whose first ``length`` rows
    are the cache; every other layer's value is exactly ``[1, kv_heads, length, head_dim]``. ``borrowed``:
    the buffers are shared with someone else (a prefix-cache entry), so the decoder copies them before it
    writes."""

    def __init__(self, values: dict, length: int = 0, borrowed: bool = False, ring: frozenset = frozenset()):
        self.values = values          # input name ("past_key_values.{i}.key") -> OrtValue
        self.length = length
        self.borrowed = borrowed
        self.ring = ring              # names whose buffer is a window-sized ring (its rows move as it evicts)
        self.binding = None           # (decoder, buffers, IOBinding, its step inputs) reused across steps
        self.room = 0                 # positions every in-place buffer has (set by DecoderSession._reserve)

    def snapshot(self) -> "KVCache":
        """A cache that later writes to this one cannot change: ring buffers copied, everything else shared
        (growing values are never written; in-place buffers only get rows past ``length``)."""
        import onnxruntime as ort

        values = {name: ort.OrtValue.ortvalue_from_numpy(value.numpy().copy(), "cpu", 0) if name in self.ring else value
                  for name, value in self.values.items()}
        return KVCache(values, self.length, borrowed=False, ring=self.ring)


class DecoderSession(GraphSession):
    """``decoder_model_merged``: one graph for prefill and decode, KV cache fed back via IO binding."""

    def __init__(self, path, choice, config=SessionConfig()):
        path = Path(path)
        ring = ring_path(path)
        use_ring = (ring != path and ring.is_file() and config.kv_in_place and choice.name == CPU)
        super().__init__(ring if use_ring else path, choice, config)
        if use_ring:
            log.info("%s: ring-cache variant %s (sliding layers keep a window-sized cache)", path.name, ring.name)
        self.cache_specs = self._read_cache_specs()
        self.needs_input_ids = "input_ids" in self.inputs
        self.needs_per_layer = "per_layer_inputs" in self.inputs
        self.keeps_logits = "num_logits_to_keep" in self.inputs
        self.embeds_dtype = self.input_dtype("inputs_embeds")
        self.device = choice.ort_device if self.provider == choice.name else "cpu"
        self.in_place = self._in_place_names()
        self.ring_capacity = self._ring_capacity() if self.in_place else {}
        metadata = self.session.get_modelmeta().custom_metadata_map
        # the CPU variant looks its tokens up itself: a decode step feeds input_ids and a zero embedding row
        self.embeds_inside = metadata.get(EMBEDS_INSIDE) == "1" and self.needs_input_ids
        # input_ids mark bidirectional vision blocks (prefill never cuts one) unless the graph reads them only
        # to look tokens up
        self.vision_blocks = self.needs_input_ids and (not self.embeds_inside or metadata.get(VISION_BLOCKS) == "1")
        self._zero_row = None
        self._logits = self._logits_value = self._reusable = None
        self._in_place_order, self._growing_order, self._reused_outputs = [], [], []
        self.prefill_chunk = (config.prefill_chunk if config.prefill_chunk is not None
                              else int(metadata.get(PREFILL_CHUNK, DEFAULT_PREFILL_CHUNK)))

    def step_feeds(self, token: int) -> dict:
        """A decode step's inputs when the graph embeds its own tokens (``embeds_inside``)."""
        if self._zero_row is None:
            self._zero_row = np.zeros((1, 1, self.inputs["inputs_embeds"].shape[-1]), dtype=self.embeds_dtype)
        return {"input_ids": np.array([[token]], dtype=np.int64), "inputs_embeds": self._zero_row}

    def _in_place_names(self) -> frozenset:
        """Past inputs that may share one buffer with their present (CPU only: growing a device buffer
        would need a device copy; other providers get the growing cache, which the same graph accepts)."""
        listed = self.session.get_modelmeta().custom_metadata_map.get(KV_IN_PLACE, "")
        layers = {int(x) for x in listed.split(",") if x.strip().isdigit()}
        if not layers or not self.config.kv_in_place:
            return frozenset()
        if self.device != "cpu":
            log.info("%s: KV cache grows by copy on %s (in-place buffers are CPU only)", self.path.name, self.provider)
            return frozenset()
        names = {f"past_key_values.{i}.{kind}" for i in layers for kind in ("key", "value")}
        return frozenset(names & set(self.inputs))

    def _read_cache_specs(self) -> list[CacheSpec]:
        specs = {}
        for name, arg in self.inputs.items():
            match = _PAST.match(name)
            if not match or match.group(2) != "key":
                continue
            shape = arg.shape  # [batch, kv_heads, past, head_dim]
            if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
                raise ModelFolderError(
                    f"{self.path.name}: {name} must have static kv_heads and head_dim, got {shape}",
                    source=str(self.path),
                )
            layer = int(match.group(1))
            specs[layer] = CacheSpec(layer, shape[1], shape[3], self.input_dtype(name))
        return [specs[k] for k in sorted(specs)]

    def empty_cache(self) -> KVCache:
        import onnxruntime as ort

        values = {}
        for spec in self.cache_specs:
            empty = np.zeros((1, spec.kv_heads, 0, spec.head_dim), dtype=spec.dtype)
            for kind in ("key", "value"):
                values[f"past_key_values.{spec.layer}.{kind}"] = ort.OrtValue.ortvalue_from_numpy(empty, self.device, 0)
        return KVCache(values, 0)

    def _ring_capacity(self) -> dict:
        """Ring layers' past names -> their fixed capacity (the ring variant's ``edgevid.kv_ring``)."""
        listed = self.session.get_modelmeta().custom_metadata_map.get(KV_RING, "")
        out = {}
        for item in filter(None, (x.strip() for x in listed.split(","))):
            layer, capacity = item.split(":")
            for kind in ("key", "value"):
                if f"past_key_values.{layer}.{kind}" in self.in_place:
                    out[f"past_key_values.{layer}.{kind}"] = int(capacity)
        return out

    def reserve(self, cache: KVCache, total: int) -> None:
        """Room for ``total`` positions in the in-place buffers now (no-op for a growing cache)."""
        if self.in_place:
            self._reserve(cache, total)

    def _reserve(self, cache: KVCache, total: int) -> None:
        """Give every in-place layer a private buffer with room for ``total`` rows (rows kept: the cache);
        a ring layer's buffer has its fixed capacity and is copied whole (its rows are the kernel's layout)."""
        import onnxruntime as ort

        if total <= cache.room and not cache.borrowed:
            return
        cache.ring = frozenset(self.ring_capacity)
        room = None
        for name in self.in_place:
            value = cache.values[name]
            shape = value.shape()
            ring = self.ring_capacity.get(name)
            if ring is not None:
                if shape[2] == ring and not cache.borrowed:
                    continue
                capacity, keep = ring, (shape[2] if cache.length else 0)
            else:
                if shape[2] >= total and not cache.borrowed:
                    room = shape[2] if room is None else min(room, shape[2])
                    continue
                capacity = shape[2] if shape[2] >= total else max(total, 2 * shape[2])
                capacity = -(-capacity // CAPACITY_STEP) * CAPACITY_STEP
                keep = cache.length
                room = capacity if room is None else min(room, capacity)
            buffer = np.zeros((shape[0], shape[1], capacity, shape[3]), dtype=_NP_TYPES.get(value.data_type(), np.float32))
            if keep:
                buffer[:, :, :keep] = value.numpy()[:, :, :keep]
            cache.values[name] = ort.OrtValue.ortvalue_from_numpy(buffer, "cpu", 0)
        cache.borrowed = False
        cache.room = sys.maxsize if room is None else room      # rings alone never run out of room

    def _bind(self, feeds: dict, arrays: dict, cache: KVCache):
        binding = self.session.io_binding()
        keep_alive = self._bind_inputs(binding, {**feeds, **arrays})
        for name, value in cache.values.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            past = name.replace("present.", "past_key_values.")
            if past in self.in_place:
                binding.bind_ortvalue_output(name, cache.values[past])      # the same buffer: written in place
            else:
                binding.bind_output(name, "cpu" if name == "logits" else self.device, 0)
        return binding, keep_alive

    def _bind_inputs(self, binding, values: dict) -> list:
        """Bind the step's own inputs (numpy arrays become OrtValues); returns what must outlive the run."""
        import onnxruntime as ort

        keep_alive = []
        for name, value in values.items():
            if name not in self.inputs or value is None:
                continue
            if isinstance(value, np.ndarray):
                value = np.asarray(value, dtype=self.input_dtype(name), order="C")  # keeps 0-d scalars 0-d
                keep_alive.append(value)
                value = ort.OrtValue.ortvalue_from_numpy(value, self.device, 0)
            keep_alive.append(value)
            binding.bind_ortvalue_input(name, value)
        return keep_alive

    def _bind_reused(self, feeds: dict, arrays: dict, cache: KVCache):
        """``_bind`` for a CPU decoder whose logits have one row: the cache keeps one binding (in-place buffers
        as past and present, the logits into one reused array), and a step binds only its own inputs and the
        growing layers, instead of every layer again."""
        import onnxruntime as ort

        buffers = tuple(cache.values[name] for name in self._in_place_order)
        state = cache.binding
        if state is None or state[0] is not self or not all(a is b for a, b in zip(state[1], buffers)):
            binding = self.session.io_binding()
            for name, value in zip(self._in_place_order, buffers):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
            if self._logits is None:
                logits = next(arg for arg in self.session.get_outputs() if arg.name == "logits")
                self._logits = np.empty((1, 1, logits.shape[-1]), dtype=_NP_TYPES.get(logits.type, np.float32))
                self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits, "cpu", 0)
            binding.bind_ortvalue_output("logits", self._logits_value)
            state = (self, buffers, binding)
        binding = state[2]
        keep_alive = self._bind_inputs(binding, {**feeds, **arrays})
        for name in self._growing_order:
            binding.bind_ortvalue_input(name, cache.values[name])
            binding.bind_output(name.replace("past_key_values.", "present."), "cpu", 0)
        cache.binding = (*state, keep_alive)        # what the binding points at lives until it is rebound
        return binding, keep_alive

    def _reuses_binding(self, cache: KVCache, seq_len: int) -> bool:
        if self._reusable is None or self._reusable[0] is not self.in_place:
            logits = next((arg for arg in self.session.get_outputs() if arg.name == "logits"), None)
            past = [name for name in self.inputs if _PAST.match(name)]
            self._in_place_order = [name for name in past if name in self.in_place]
            self._growing_order = [name for name in past if name not in self.in_place]
            # an IOBinding lists outputs in the order they were first bound (_bind_reused's order)
            presents = lambda names: [n.replace("past_key_values.", "present.") for n in names]  # noqa: E731
            self._reused_outputs = presents(self._in_place_order) + ["logits"] + presents(self._growing_order)
            self._reusable = (self.in_place, self.device == "cpu" and bool(self.in_place) and logits is not None
                              and isinstance(logits.shape[-1], int))
        return self._reusable[1] and (seq_len == 1 or self.keeps_logits) and len(cache.values) == len(
            self._in_place_order) + len(self._growing_order)

    def forward(self, feeds: dict, cache: KVCache, seq_len: int, trim: bool = True) -> np.ndarray:
        """Run ``seq_len`` new positions; ``feeds`` holds inputs_embeds / per_layer_inputs / input_ids as
        numpy arrays or OrtValues. Updates ``cache`` in place and returns the last position's logits.
        ``trim``: hand a multi-token run's freed memory back to the OS now (off: the caller does it later)."""
        import onnxruntime as ort

        total = cache.length + seq_len
        arrays = {
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(cache.length, total, dtype=np.int64).reshape(1, seq_len),
        }
        if self.keeps_logits:
            arrays["num_logits_to_keep"] = np.array(1, dtype=np.int64)
        if self.in_place:
            self._reserve(cache, total)
        reused = self._reuses_binding(cache, seq_len)
        try:
            binding, keep_alive = (self._bind_reused if reused else self._bind)(feeds, arrays, cache)
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime's own error types
            self._fall_back_to_cpu(exc)
            self.device = "cpu"
            self.in_place = frozenset()
            feeds = {k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in feeds.items() if v is not None}
            for name, value in cache.values.items():
                cache.values[name] = ort.OrtValue.ortvalue_from_numpy(value.numpy(), "cpu", 0)
            cache.binding, reused = None, False
            binding, keep_alive = self._bind(feeds, arrays, cache)
            self.session.run_with_iobinding(binding)
        if seq_len > 1 and trim:
            trim_memory()           # a prefill chunk's activations (decode steps are small: not worth it)
        cache.length = total
        del keep_alive
        if reused:                  # in-place presents went into the cache's buffers, the logits into ours
            if self._growing_order:
                outputs = dict(zip(self._reused_outputs, binding.get_outputs()))
                for name in self._growing_order:
                    cache.values[name] = outputs[name.replace("past_key_values.", "present.")]
            return self._logits[0, -1].astype(np.float32, copy=True)
        outputs = dict(zip(self.output_names, binding.get_outputs()))
        for name in cache.values:
            if name not in self.in_place:
                cache.values[name] = outputs[name.replace("past_key_values.", "present.")]
        logits = outputs["logits"].numpy()
        return logits.reshape(-1, logits.shape[-1])[-1].astype(np.float32, copy=False)
