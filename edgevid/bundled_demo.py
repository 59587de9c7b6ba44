"""The demo model shipped as package data in ``edgevid/demo/``, and its sample clip.

``Pipeline.demo()`` and every ``--demo`` flag resolve here; an install without the package data gets one
line saying how to get a model instead.
"""
from __future__ import annotations

from pathlib import Path

from edgevid.errors import InvalidRequestError, ModelFolderError

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_CLIP = DEMO_DIR / "sample.mp4"
DEMO_ANSWER = "a red circle moves from left to right."      # the demo's answer to "What happens in this video?"
NO_MODEL_HINT = ("reinstall edgevid from its wheel (it ships the demo model), or build a quick stand-in with "
                 "`edgevid export --random-demo --output models/edgevid-demo` (seconds; random answers) and "
                 "pass -m models/edgevid-demo")


def demo_dir(root: Path | None = None) -> Path:
    """The bundled demo model folder; :class:`ModelFolderError` when this install has none."""
    folder = DEMO_DIR if root is None else Path(root)
    if not (folder / "edgevid.json").is_file():
        raise ModelFolderError(f"this edgevid install ships no demo model; {NO_MODEL_HINT}", source=str(folder))
    return folder


def model_dir(model: str | None, demo: bool, *, root: Path | None = None) -> Path:
    """The folder named by ``-m``, or the bundled demo for ``--demo`` (``-m --demo`` too)."""
    if model == "--demo":
        model, demo = None, True
    if demo and model:
        raise InvalidRequestError("give either -m MODEL_DIR or --demo, not both", param="model")
    if demo:
        return demo_dir(root)
    if not model:
        raise InvalidRequestError("pass a model folder with -m MODEL_DIR, or --demo for the bundled demo model",
                                  param="model")
    return Path(model)
