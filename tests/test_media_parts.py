"""The one media path on its own: parts by reference come back decoded and preprocessed, once per content
(through the cache), with ``param`` naming the part on errors and the decode gate held only while decoding."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from clips import write_clip, write_image
from edgevid import DEMO_DIR, MediaError, SourcePolicy
from edgevid.messages import image_part, text_part, user_message, video_part
from edgevid.model.cache import CacheUse, MediaCache
from edgevid.model.manifest import ModelFolder
from edgevid.model.media_parts import resolve_media_parts

POLICY = SourcePolicy.permissive()


@pytest.fixture(scope="module")
def folder():
    return ModelFolder.load(DEMO_DIR)


class CountingGate:
    def __init__(self):
        self.entered = 0
        self.lock = threading.Lock()

    def __enter__(self):
        self.entered += 1
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def test_parts_come_back_decoded_once_per_content(folder, tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=12, fps=12, size=(96, 64))
    copy = tmp_path / "b.mp4"
    copy.write_bytes(clip.read_bytes())                   # another name, the same bytes
    image = write_image(tmp_path / "still.png", size=(64, 48))
    cache, use, gate = MediaCache(), CacheUse(), CountingGate()
    messages = [user_message("q", videos=[clip, str(copy)], images=[image])]
    out = resolve_media_parts(messages, folder, num_frames=3, policy=POLICY, cache=cache, use=use, gate=gate)
    video, same, picture, text = out[0]["content"]
    assert video["type"] == "video" and len(video["video"].frames) == 3 and video["vision"].num_frames == 3
    assert same["video"] is video["video"] and same["vision"] is video["vision"]
    assert picture["type"] == "image" and picture["image"].shape == (48, 64, 3)
    assert text == text_part("q")
    assert gate.entered == 2 and use.frames_cached == 1     # the copy came from the cache, undecoded


def test_decoded_values_pass_through_and_part_frame_counts_win(folder, tmp_path):
    clip = write_clip(tmp_path / "a.mp4", frames=12, fps=12, size=(96, 64))
    pixels = np.zeros((32, 32, 3), np.uint8)
    part = video_part(clip)
    part["video_url"]["num_frames"] = 2
    out = resolve_media_parts([user_message("q", media=[part], images=[pixels])], folder, num_frames=5, policy=POLICY)
    assert len(out[0]["content"][0]["video"].frames) == 2
    assert out[0]["content"][1] == image_part(pixels)


def test_errors_name_the_part(folder, tmp_path):
    messages = [{"role": "user", "content": "hello"},
                user_message("q", videos=[tmp_path / "missing.mp4"])]
    with pytest.raises(MediaError) as err:
        resolve_media_parts(messages, folder, num_frames=2, policy=POLICY)
    assert err.value.param == "messages[1].content[0].video_url.url"
