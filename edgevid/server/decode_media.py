"""Fetch and decode a request's images and videos in the HTTP thread, before the model worker is taken.

A slow download or a long decode then holds only its own request thread, never the single model worker,
and a refused or unreadable source is answered with its own status (403, 413, 400) before any response
has started. Decoding goes through the pipeline's one media path (:meth:`Pipeline.resolve_media`), so a
clip two requests send is decoded once: the second takes its frames from the media cache.
"""
from __future__ import annotations

from edgevid.media import SourcePolicy
from edgevid.messages import image_part, text_part, video_part
from edgevid.server.request import ChatRequest, MediaPart, TextPart


def request_messages(request: ChatRequest) -> list[dict]:
    """The parsed request as pipeline messages (each video part keeps its own frame count)."""
    return [{"role": m.role, "content": [_part(p) for p in m.parts]} for m in request.messages]


def decode_request_media(request: ChatRequest, pipeline, policy: SourcePolicy) -> list[dict]:
    return pipeline.resolve_media(request_messages(request), request.options, policy)


def _part(part: TextPart | MediaPart) -> dict:
    if isinstance(part, TextPart):
        return text_part(part.text)
    if part.kind == "video":
        built = video_part(part.url)
        built["video_url"]["num_frames"] = part.num_frames
        return built
    return image_part(part.url)
