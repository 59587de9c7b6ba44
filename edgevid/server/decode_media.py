"""Fetch and decode a request's images and videos in the HTTP thread, before the model worker is taken.

A slow download or a long decode then holds only its own request thread, never the single model worker,
and a refused or unreadable source is answered with its own status (403, 413, 400) before any response
has started. The result is the message list :class:`edgevid.pipeline.Pipeline` takes, with media parts
already sampled (``{"type": "video", "video": SampledVideo, "vision": VisionInput}``,
``{"type": "image", "image": ndarray}``). Videos go through the pipeline's media cache (when it has
one) under the key the pipeline itself uses, so a video seen before — by an earlier turn of the chat or
by ``/v1/frames`` — is not decoded again.
"""
from __future__ import annotations

from edgevid.errors import EdgevidError
from edgevid.media import SourcePolicy, load_image, sample_video
from edgevid.model.cache import CacheUse, prepare_videos
from edgevid.server.request import ChatRequest, MediaPart, TextPart


def decode_request_media(request: ChatRequest, pipeline, policy: SourcePolicy) -> list[dict]:
    return [{"role": m.role, "content": [_decode_part(p, policy, pipeline) for p in m.parts]}
            for m in request.messages]


def _decode_part(part: TextPart | MediaPart, policy: SourcePolicy, pipeline) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    try:
        if part.kind == "video":
            return video_part(part, policy, pipeline)[0]
        return {"type": "image", "image": load_image(part.url, policy=policy)}
    except EdgevidError as err:
        if err.param is None:
            err.param = part.param
        raise


def video_part(part: MediaPart, policy: SourcePolicy, pipeline=None) -> tuple[dict, bool]:
    """The sampled video part, and whether its frames came from the media cache."""
    cache = getattr(pipeline, "cache", None)
    if cache is None:
        return {"type": "video", "video": sample_video(part.url, num_frames=part.num_frames, policy=policy)}, False
    use = CacheUse()
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": part.url}}]}]
    prepared = prepare_videos(messages, cache, num_frames=part.num_frames, policy=policy, folder=pipeline.folder,
                              use=use)
    return prepared[0]["content"][0], use.frames_cached > 0
