"""Fetch and decode a request's images and videos in the HTTP thread, before the model worker is taken.

A slow download or a long decode then holds only its own request thread, never the single model worker,
and a refused or unreadable source is answered with its own status (403, 413, 400) before any response
has started. Decoding goes through the pipeline's one media path (:meth:`Pipeline.resolve_media`), so a
clip two requests send is decoded once: the second takes its frames from the media cache.
"""
from __future__ import annotations

from edgevid.errors import EdgevidError
from edgevid.media import SourcePolicy
from edgevid.model.cache import CacheUse
from edgevid.messages import image_part, text_part, video_part
from edgevid.server.request import ChatRequest, MediaPart, TextPart


def request_messages(request: ChatRequest) -> list[dict]:
    """The parsed request as pipeline messages (each video part keeps its own frame count)."""
    return [{"role": m.role, "content": [_part(p) for p in m.parts]} for m in request.messages]


def decode_request_media(request: ChatRequest, pipeline, policy: SourcePolicy, gate=None) -> list[dict]:
    """``gate`` (a semaphore) bounds how many requests decode at once; it is held while decoding only, so
    a slow upstream holds just its own request. ``policy.decode_timeout`` bounds the whole request: each
    of its n media parts gets 1/n of it."""
    parts = len(request.media)
    if parts > 1 and policy.decode_timeout is not None:
        policy = policy.with_(decode_timeout=policy.decode_timeout / parts)
    return pipeline.resolve_media(request_messages(request), request.options, policy, gate=gate)


def _part(part: TextPart | MediaPart) -> dict:
    if isinstance(part, TextPart):
        return text_part(part.text)
    if part.kind == "video":
        built = video_part(part.url)
        built["video_url"]["num_frames"] = part.num_frames
        return built
    return image_part(part.url)


def resolve_part(part: MediaPart, policy: SourcePolicy, pipeline, gate=None) -> tuple[dict, bool]:
    """One media part through the pipeline's media path (``/v1/frames``): the resolved part and whether its
    frames came from the media cache — the chat request that follows finds them there. ``gate`` is the
    server's concurrent-decode bound, held while decoding as for a chat request."""
    use = CacheUse()
    try:
        resolved = pipeline.resolve_media([{"role": "user", "content": [_part(part)]}], None, policy, use,
                                          gate=gate)
    except EdgevidError as err:
        err.param = part.param            # the frames body has one part: name it as the client sent it
        raise
    return resolved[0]["content"][0], use.frames_cached > 0
