"""edgevid: Gemma 4 video understanding on edge machines (ONNX Runtime + OpenCV; no torch, no FFmpeg).

    from edgevid import Pipeline

    print(Pipeline.demo().ask("What happens in this video?", videos=[edgevid.DEMO_CLIP]))
    p = Pipeline.load("models/gemma-4-e2b")
    print(p.ask("What happens?", videos=["clip.mp4"], max_tokens=64))

Names are imported on first use, so ``import edgevid`` (and ``edgevid --help``) stays cheap.
"""
from __future__ import annotations

import importlib

from edgevid.errors import (  # noqa: F401  (the errors are cheap: always imported)
    BatchError, ContextLengthError, EdgevidError, EmptyMediaError, ExportError, FetchError, FetchTimeoutError,
    InvalidRequestError, MediaError, MediaNotAllowedError, MediaNotFoundError, MediaTooLargeError,
    ModelFolderError, NoVideoStreamError, ProviderUnavailableError, StreamUnavailableError,
    UnreadableMediaError, UnsupportedMediaError,
)

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "edgevid.pipeline",
    "ChatResult": "edgevid.pipeline",
    "ChatStream": "edgevid.pipeline",
    "Answer": "edgevid.pipeline",
    "GenerationOptions": "edgevid.model.generate",
    "TextPiece": "edgevid.model.generate",
    "sample_video": "edgevid.media",
    "load_image": "edgevid.media",
    "SampledVideo": "edgevid.media",
    "SourcePolicy": "edgevid.media",
    "user_message": "edgevid.messages",
    "video_part": "edgevid.messages",
    "image_part": "edgevid.messages",
    "run_batch": "edgevid.batch",
    "BatchSummary": "edgevid.batch",
    "DEMO_DIR": "edgevid.bundled_demo",
    "DEMO_CLIP": "edgevid.bundled_demo",
}

_ERRORS = ["EdgevidError", "InvalidRequestError", "ContextLengthError", "MediaError", "UnsupportedMediaError",
           "UnreadableMediaError", "NoVideoStreamError", "EmptyMediaError", "MediaTooLargeError",
           "MediaNotAllowedError", "MediaNotFoundError", "FetchError", "FetchTimeoutError",
           "StreamUnavailableError", "ModelFolderError", "ProviderUnavailableError", "ExportError", "BatchError"]
__all__ = ["__version__", *_ERRORS, *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgevid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
