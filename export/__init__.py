"""edgevid_export: the torch + transformers side of edgevid (installed with the ``export`` extra).

Turns a Gemma 4 checkpoint into the model folder described in docs/ARCHITECTURE.md. The runtime package
``edgevid`` never imports this package.

    from edgevid_export import export_model, verify_export
    export_model("google/gemma-4-E2B-it", "models/gemma-4-e2b", precisions=("fp32", "q4"))

The names load torch on first use, so ``import edgevid_export`` alone stays cheap.
"""
import importlib

_LAZY = {"export_model": "edgevid_export.convert", "verify_export": "edgevid_export.convert",
         "build_demo_checkpoint": "edgevid_export.demo"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgevid_export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
