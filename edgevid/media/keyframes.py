"""Fast mode: one decoded keyframe per target, for long MP4/MOV clips."""
from __future__ import annotations


def sample_keyframes(media, num_frames):
    return None
