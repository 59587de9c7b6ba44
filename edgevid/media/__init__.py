"""Media layer: sources under a policy, video frames via OpenCV, GIF and still images via Pillow.

    from edgevid.media import SourcePolicy, open_source, sample_video, load_image
    video = sample_video("clip.mp4", num_frames=32)          # SampledVideo
    image = load_image("data:image/png;base64,...", SourcePolicy())
"""
from .images import load_image
from .policy import SourcePolicy
from .sources import MediaSource, open_source
from .sampled import SampledVideo, sample_indices
from .video import sample_video
from .working_size import WorkingSize

__all__ = ["SourcePolicy", "open_source", "MediaSource", "sample_video", "sample_indices", "SampledVideo",
           "load_image", "WorkingSize"]
