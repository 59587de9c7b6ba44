"""The one place the export reads transformers' Gemma 4 internals.

transformers renames module attributes between minor releases (5.25 renamed ``Gemma4RMSNorm.eps`` to
``variance_epsilon``); every fact the export graphs need from a live module goes through a function here,
so a rename is fixed in one file and a test (tests/test_compat.py) fails if another module reads them
directly. ``TESTED`` is the range CI runs the export tests on (the oldest and the newest release of it);
pyproject's ``export`` extra declares the same bounds.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("edgevid.export")

TESTED = ("5.23.0", "5.25.0")         # oldest and newest transformers the export tests run on in CI


class TransformersCompatError(RuntimeError):
    """A Gemma 4 module no longer has a fact the export reads: the installed transformers is unsupported."""


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_version(version: str | None = None) -> bool:
    """True inside the tested range; outside it, one warning naming the range (the export still tries)."""
    version = version or transformers_version()
    low, high = (_release(v) for v in TESTED)
    inside = low <= _release(version) <= high
    if not inside:
        log.warning("transformers %s is outside the range edgevid's export is tested on (%s to %s); "
                    "if the export fails, install a tested one: pip install 'transformers>=%s,<=%s'",
                    version, *TESTED, *TESTED)
    return inside


def _first_attr(module, names: tuple[str, ...], what: str):
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise TransformersCompatError(
        f"{type(module).__name__} has none of {', '.join(names)} ({what}) in transformers "
        f"{transformers_version()}; edgevid's export is tested on transformers {TESTED[0]} to {TESTED[1]}")


def norm_eps(norm) -> float:
    """Gemma4RMSNorm's epsilon (``eps`` up to 5.24, ``variance_epsilon`` from 5.25)."""
    return float(_first_attr(norm, ("variance_epsilon", "eps"), "the RMSNorm epsilon"))


def norm_weight(norm) -> torch.Tensor | None:
    """The RMSNorm scale, or None for the scale-free norms (``with_scale=False``: v_norm, the router's)."""
    if not bool(getattr(norm, "with_scale", True)):
        return None
    return getattr(norm, "weight", None)


def rope_tables(rotary, layer_type: str) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention_scaling) of the text rotary embedding for one layer type."""
    inv_freq = _first_attr(rotary, (f"{layer_type}_inv_freq",), f"{layer_type} inverse frequencies")
    scaling = _first_attr(rotary, (f"{layer_type}_attention_scaling",), f"{layer_type} rope scaling")
    return inv_freq, float(scaling)


def attention_scaling(attn) -> float:
    """The score scale of a Gemma 4 attention module (1.0: q/k norms replace 1/sqrt(d))."""
    return float(_first_attr(attn, ("scaling",), "the attention score scale"))


def apply_vision_rope(x, cos, sin, positions):
    """transformers' 2-D rotary embedding of the vision tower (its function, so numerics match)."""
    from transformers.models.gemma4 import modeling_gemma4

    fn = _first_attr(modeling_gemma4, ("apply_multidimensional_rope",), "the vision rotary embedding")
    return fn(x, cos, sin, positions)


def kv_sharing_modes(text_config) -> list[str | None]:
    """Per layer: "reuse" (reads another layer's KV), "store" or None (owns its cache). transformers
    5.23 added the ``kv_sharing_modes`` property; before it, the same rule is derived here from
    ``num_kv_shared_layers``: the last layers reuse the last owning layer of their type."""
    if isinstance(getattr(type(text_config), "kv_sharing_modes", None), property):
        return list(text_config.kv_sharing_modes)
    return derive_kv_sharing_modes(text_config)


def derive_kv_sharing_modes(text_config) -> list[str | None]:
    n = text_config.num_hidden_layers
    types = list(text_config.layer_types)
    first_shared = n - int(getattr(text_config, "num_kv_shared_layers", 0) or 0)
    if first_shared <= 0:
        return ["reuse"] * n
    modes: list[str | None] = [None if i < first_shared else "reuse" for i in range(n)]
    for layer_type in set(types):
        owners = [i for i in range(first_shared) if types[i] == layer_type]
        if not owners:
            raise TransformersCompatError(f"no layer before the KV-shared ones owns a {layer_type} cache")
        modes[owners[-1]] = "store"
    return modes


def layer_attention_shape(text_config, layer: int) -> tuple[int, int]:
    """(kv_heads, head_dim) of one decoder layer: full-attention layers have their own (``per_layer_config``
    from transformers 5.15)."""
    per_layer = _first_attr(text_config, ("per_layer_config",), "per-layer attention shapes")
    entry = per_layer[layer]
    read = entry.get if isinstance(entry, dict) else (lambda name, default=None: getattr(entry, name, default))
    kv_heads = read("num_key_value_heads", None) or text_config.num_key_value_heads
    head_dim = read("head_dim", None) or text_config.head_dim
    return int(kv_heads), int(head_dim)
