"""Fetch and decode a request's images and videos in the HTTP thread, before the model worker is taken.

A slow download or a long decode then holds only its own request thread, never the single model worker,
and a refused or unreadable source is answered with its own status (403, 413, 400) before any response
has started. The result is the message list :class:`edgevid.pipeline.Pipeline` takes, with media parts
already sampled (``{"type": "video", "video": SampledVideo}``, ``{"type": "image", "image": ndarray}``).
"""
from __future__ import annotations

from edgevid.errors import EdgevidError
from edgevid.media import SourcePolicy, load_image, sample_video
from edgevid.server.request import ChatRequest, MediaPart, TextPart


def decode_request_media(request: ChatRequest, policy: SourcePolicy) -> list[dict]:
    return [{"role": m.role, "content": [_decode_part(p, policy) for p in m.parts]} for m in request.messages]


def _decode_part(part: TextPart | MediaPart, policy: SourcePolicy) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    try:
        if part.kind == "video":
            return {"type": "video", "video": sample_video(part.url, num_frames=part.num_frames, policy=policy)}
        return {"type": "image", "image": load_image(part.url, policy=policy)}
    except EdgevidError as err:
        if err.param is None:
            err.param = part.param
        raise
