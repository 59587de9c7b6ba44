"""``POST /v1/frames``: the frames a chat request about the same media would show the model, as thumbnails.

The playground draws them as a contact sheet before the answer. The body names one media part the way a
chat message does, so the same parsing applies (``num_frames`` capped by ``--max-frames``, data URLs over
``--max-media-bytes`` refused from their length), and the media is fetched under the server's
SourcePolicy. Videos are sampled through the pipeline's media cache with the key the chat path uses, so
the question that follows (and every later turn) finds the frames decoded already::

    {"video_url": {"url": "data:video/mp4;base64,..."}, "num_frames": 4}
    -> {"object": "edgevid.frames", "kind": "video", "cached": false, "width": 320, ..., "frames": [
         {"index": 0, "timestamp": 0.0, "label": "00:00", "thumbnail": "data:image/jpeg;base64,..."}, ...]}
"""
from __future__ import annotations

import base64
import dataclasses
import io
from dataclasses import dataclass

import numpy as np

from edgevid.model.prompt import format_timestamp
from edgevid.server.decode_media import resolve_part
from edgevid.server.errors import InvalidValueError
from edgevid.server.request import MEDIA_PARTS, MediaPart, RequestLimits, _frames, _parse_part

THUMBNAIL_SIDE = 192          # longest side of a thumbnail, pixels
THUMBNAIL_QUALITY = 80        # JPEG quality: ~4-8 KB per thumbnail, 32 frames stay well under 300 KB


@dataclass(frozen=True)
class FramesRequest:
    part: MediaPart


def parse_frames_request(body: object, limits: RequestLimits) -> FramesRequest:
    if not isinstance(body, dict):
        raise InvalidValueError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    kinds = [k for k in MEDIA_PARTS if k in body]
    unknown = sorted(set(body) - set(MEDIA_PARTS) - {"num_frames", "model"})
    if unknown:
        raise InvalidValueError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if len(kinds) != 1:
        raise InvalidValueError("send exactly one of 'video_url' or 'image_url' (as in a chat message part)",
                                param="video_url")
    kind = kinds[0]
    num_frames = _frames(body, "num_frames", limits) if "num_frames" in body else None
    part = _parse_part("body", {"type": kind, kind: body[kind]}, limits, num_frames)
    return FramesRequest(dataclasses.replace(part, param=f"{kind}.url"))


def sample_frames(req: FramesRequest, pipeline, policy, gate=None) -> dict:
    """The response body: metadata and one thumbnail per sampled frame (one for an image). The media goes
    through the pipeline's one media path (policy, caps, cache), as the chat request's will."""
    resolved, cached = resolve_part(req.part, policy, pipeline, gate=gate)
    if req.part.kind == "image":
        image = np.asarray(resolved["image"])
        height, width = image.shape[:2]
        return {"object": "edgevid.frames", "kind": "image", "cached": cached, "width": width,
                "height": height, "frames": [{"index": 0, "timestamp": None, "label": "image",
                                              "thumbnail": thumbnail(image)}]}
    video = resolved["video"]
    frames = [{"index": int(i), "timestamp": round(float(t), 3), "label": format_timestamp(float(t)),
               "thumbnail": thumbnail(frame)}
              for frame, i, t in zip(video.frames, video.indices, video.timestamps)]
    return {"object": "edgevid.frames", "kind": "video", "cached": cached, "width": video.width,
            "height": video.height, "fps": round(float(video.fps), 3), "duration": round(float(video.duration), 3),
            "frame_count": int(video.frame_count), "num_frames": len(frames), "frames": frames}


def thumbnail(frame: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG data URL of ``frame`` (uint8 RGB) scaled so its longest side is at most ``side``."""
    from PIL import Image
    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail((side, side), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()
