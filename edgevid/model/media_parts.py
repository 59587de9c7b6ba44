"""The one media path: a request's media parts -> fetched, sampled and preprocessed, through the cache.

Every surface (the Python API, ``edgevid run``, ``edgevid serve``, ``edgevid watch``) hands its messages to
:func:`resolve_media_parts` (through :meth:`Pipeline.resolve_media` or :meth:`Pipeline.stream`). A part that
names its media (``video_url``/``image_url``, or ``video``/``image`` holding a path, URL, data URL or bytes)
comes back decoded, with the vision encoder's input made once:

    {"type": "video", "video": SampledVideo, "vision": VisionInput}
    {"type": "image", "image": uint8 [H, W, 3], "vision": VisionInput}

With a :class:`MediaCache` the source is fetched once and keyed by the sha256 of its bytes, so the same
clip asked about again (the next chat turn, a second client) is neither decoded nor preprocessed again;
its vision features are cached by the pipeline on top. Parts that already hold frames or pixels (a
``SampledVideo``, an RGB array, a live window) are left for the prompt layer to preprocess.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping

from edgevid.errors import EdgevidError, InvalidRequestError
from edgevid.model.cache import CacheUse, MediaCache, frames_key
from edgevid.model.manifest import ModelFolder

MEDIA_KEYS = {"video_url": "video", "image_url": "image", "video": "video", "image": "image"}


@dataclass(frozen=True)
class PreparedMedia:
    """Decoded media and the vision encoder's input made from it (one cache entry)."""

    value: Any          # edgevid.media.SampledVideo | uint8 RGB image
    vision: Any         # edgevid.model.preprocess.VisionInput


def media_reference(part: Any) -> tuple[str, Any, int | None] | None:
    """``(kind, source, num_frames)`` for a part that names its media by reference, else None.

    ``kind`` is "video" or "image"; ``num_frames`` is the part's own frame count (``video_url.num_frames``)
    when it sets one. A ``*_url`` part without a url raises :class:`InvalidRequestError`."""
    if not isinstance(part, Mapping) or part.get("type") not in MEDIA_KEYS:
        return None
    key = part["type"]
    value = part.get(key)
    num_frames = None
    if key.endswith("_url"):
        if isinstance(value, Mapping):
            num_frames = value.get("num_frames")
            value = value.get("url")
        if not isinstance(value, (str, bytes, os.PathLike)) or not value:
            raise InvalidRequestError(f"a {key} part needs a url (or path)", param="messages")
    elif not isinstance(value, (str, bytes, os.PathLike)) or not value:
        return None             # frames or pixels already
    return MEDIA_KEYS[key], os.fspath(value) if isinstance(value, os.PathLike) else value, num_frames


def resolve_media_parts(messages: Any, folder: ModelFolder, *, num_frames: int, policy: Any,
                        cache: MediaCache | None = None, use: CacheUse | None = None,
                        mode: str = "accurate", gate: ContextManager | None = None) -> Any:
    """A copy of ``messages`` whose media parts given by reference are decoded and preprocessed.

    ``gate`` (e.g. a semaphore) is held while a part is decoded, not while it is fetched, so a server can
    bound concurrent decodes without a slow download holding a slot. Errors are the media layer's typed
    errors with ``param`` naming the part (``messages[0].content[1].video_url.url``); anything that is not
    a list of messages is returned as it is (the prompt layer reports it)."""
    if not isinstance(messages, (list, tuple)):
        return messages
    out = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, (list, tuple)):
            parts = [_resolve_part(part, f"messages[{i}].content[{j}]", folder, num_frames, policy, cache, use, mode,
                                   gate) for j, part in enumerate(content)]
            message = {**message, "content": parts}
        out.append(message)
    return out


def _resolve_part(part, where, folder, num_frames, policy, cache, use, mode, gate):
    reference = media_reference(part)
    if reference is None:
        return part
    kind, source, frames = reference
    param = f"{where}.{part['type']}" + (".url" if part["type"].endswith("_url") else "")
    try:
        prepared, hit = prepare_media(kind, source, folder, num_frames=frames or num_frames, policy=policy,
                                      cache=cache, mode=mode, gate=gate)
    except EdgevidError as err:
        if err.param is None or err.param == "messages":
            err.param = param
        raise
    if hit and use is not None:
        use.frames_cached += 1
    rest = {k: v for k, v in part.items() if k not in MEDIA_KEYS and k != "type"}
    return {**rest, "type": kind, kind: prepared.value, "vision": prepared.vision}


def prepare_media(kind: str, source: Any, folder: ModelFolder, *, num_frames: int, policy: Any,
                  cache: MediaCache | None = None, mode: str = "accurate",
                  gate: ContextManager | None = None) -> tuple[PreparedMedia, bool]:
    """Fetch -> sample (or load) -> preprocess one video or image; ``(prepared, came_from_cache)``."""
    from edgevid.media import open_source

    def decode() -> PreparedMedia:
        with gate or contextlib.nullcontext():
            return _decode(kind, media, folder, num_frames, policy, mode)

    with open_source(source, policy) as media:       # fetched once; the cache key is the hash of its bytes
        if cache is None:
            return decode(), False
        key = frames_key(media.sha256, num_frames=num_frames if kind == "video" else 1,
                         mode=mode if kind == "video" else "image", preprocess=_recipe(kind, folder))
        return cache.frames(key, decode)


def _decode(kind, media, folder, num_frames, policy, mode) -> PreparedMedia:
    from edgevid.media import WorkingSize, load_image, sample_video
    from edgevid.model.preprocess import preprocess_image, preprocess_video

    v = folder.vision
    if kind == "video":      # frames scaled at decode to exactly what preprocess_video makes of them
        video = sample_video(media, num_frames, mode, policy, WorkingSize.for_video(v))
        return PreparedMedia(video, preprocess_video(video.frames, v.video_max_soft_tokens, v.patch_size, v.pooling,
                                                     source_size=(video.height, video.width)))
    image = load_image(media, policy)
    return PreparedMedia(image, preprocess_image(image, v.image_max_soft_tokens, v.patch_size, v.pooling))


def _recipe(kind: str, folder: ModelFolder) -> str:
    v = folder.vision
    budget = v.video_max_soft_tokens if kind == "video" else v.image_max_soft_tokens
    return f"{kind}:max_soft_tokens={budget},patch={v.patch_size},pool={v.pooling}"
