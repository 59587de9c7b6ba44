"""Builders for the OpenAI-style messages every surface speaks (API, CLI, server, tests).

    user_message("What happens?", videos=["clip.mp4"])
    -> {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "clip.mp4"}},
                                    {"type": "text", "text": "What happens?"}]}

Media comes before the text, as Gemma 4's chat template expects. A path may be a ``str`` or any
``os.PathLike``; a ``SampledVideo`` or an RGB array is passed through as a ``video``/``image`` part.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

MediaValue = Any      # path | URL | data URL | bytes | SampledVideo | uint8 RGB array


def video_part(source: MediaValue) -> dict:
    if isinstance(source, (str, os.PathLike)):
        return {"type": "video_url", "video_url": {"url": os.fspath(source)}}
    return {"type": "video", "video": source}


def image_part(source: MediaValue) -> dict:
    if isinstance(source, (str, os.PathLike)):
        return {"type": "image_url", "image_url": {"url": os.fspath(source)}}
    return {"type": "image", "image": source}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def user_message(text: str, *, videos: Iterable[MediaValue] = (), images: Iterable[MediaValue] = (),
                 media: Iterable[dict] = ()) -> dict:
    """One user turn: ``media`` parts as given, then ``videos``, then ``images``, then the text."""
    content = [*media, *map(video_part, videos), *map(image_part, images), text_part(text)]
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system_message(text: str) -> dict:
    return {"role": "system", "content": text}
