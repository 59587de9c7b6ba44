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

TESTED = ("5.5.0", "5.25.0")          # oldest and newest transformers the export tests run on in CI


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
