"""Admission caps for one request, checked before any media is fetched or decoded.

The server checks its own (``--max-media-parts``, ``--max-total-frames``, ``--max-text-bytes``) while it
parses a body; :class:`edgevid.pipeline.Pipeline` checks :class:`AdmissionLimits` on the messages it is
given, so ``edgevid run``, ``watch`` and the Python API refuse a flood with
:class:`~edgevid.errors.LimitExceededError` instead of running out of memory.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgevid.errors import LimitExceededError

VIDEO_PARTS = ("video", "video_url")
IMAGE_PARTS = ("image", "image_url")


@dataclass(frozen=True)
class AdmissionLimits:
    """Library defaults: roomier than the server's, still far from an out-of-memory."""
    max_media_parts: int = 16
    max_total_frames: int = 256          # video frames (+1 per image)
    max_text_bytes: int = 4 * 2**20      # UTF-8 bytes of all texts together


def check_messages(messages, limits: AdmissionLimits, num_frames: int) -> None:
    """Raise :class:`LimitExceededError` naming the cap when ``messages`` ask for more than ``limits``.
    Malformed messages are left to the prompt layer, which reports them."""
    if not isinstance(messages, (list, tuple)):
        return
    parts = frames = text = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            text += len(content.encode("utf-8", "surrogatepass"))
            continue
        for part in content if isinstance(content, (list, tuple)) else ():
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                text += len(part["text"].encode("utf-8", "surrogatepass"))
            elif kind in VIDEO_PARTS + IMAGE_PARTS:
                parts += 1
                frames += _frames(part, num_frames) if kind in VIDEO_PARTS else 1
    if parts > limits.max_media_parts:
        raise LimitExceededError(f"the messages hold {parts} images/videos, over the limit of "
                                 f"{limits.max_media_parts} (AdmissionLimits.max_media_parts)", param="messages")
    if frames > limits.max_total_frames:
        raise LimitExceededError(f"the messages ask for {frames} frames in all, over the limit of "
                                 f"{limits.max_total_frames} (AdmissionLimits.max_total_frames)", param="num_frames")
    if text > limits.max_text_bytes:
        raise LimitExceededError(f"the messages' text is {text} bytes, over the limit of {limits.max_text_bytes} "
                                 "(AdmissionLimits.max_text_bytes)", param="messages")


def _frames(part: Mapping, num_frames: int) -> int:
    value = part.get(part.get("type"))
    held = getattr(value, "frames", None)
    if held is None and isinstance(value, Mapping):
        if isinstance(value.get("num_frames"), int):           # video_url.num_frames
            return value["num_frames"]
        held = value.get("frames")
    return len(held) if held is not None and hasattr(held, "__len__") else num_frames
