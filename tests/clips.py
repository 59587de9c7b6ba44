"""Real media fixtures for tests: clips encoded with PyAV, GIFs and stills written with Pillow.

Every frame carries its own number as a 4 x 4 grid of big black/white blocks (16 bits, most significant
bit top-left), so ``frame_id(rgb)`` recovers it after lossy coding, scaling, or at any frame size.
Frames may carry a little moving texture (``texture=True``) so codecs have real work to do.

    path = write_clip(tmp_path / "a.mp4", frames=48, fps=24)       # H.264 in MP4
    write_clip(tmp_path / "a.webm", codec="libvpx-vp9")
    write_clip(tmp_path / "vfr.mp4", pts=[0, 0.04, 0.5, 0.52, ...])  # variable frame rate (seconds)
    write_clip(tmp_path / "rot.mp4", rotation=90)                   # display matrix side data
    probe_frames(path) -> [(frame_id, seconds), ...]                # independent decode through PyAV
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

GRID = 4                     # GRID x GRID blocks = 16 bits
BITS = GRID * GRID
ON, OFF = 230, 25            # block levels, far from the 128 threshold

# suffix -> (PyAV container format, default codec, default pixel format)
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "yuv420p"),
    ".m4v": ("mp4", "libx264", "yuv420p"),
    ".mov": ("mov", "libx264", "yuv420p"),
    ".mkv": ("matroska", "libx264", "yuv420p"),
    ".webm": ("webm", "libvpx-vp9", "yuv420p"),
    ".avi": ("avi", "mjpeg", "yuvj420p"),
    ".mpg": ("mpeg", "mpeg2video", "yuv420p"),
    ".mpeg": ("mpeg", "mpeg2video", "yuv420p"),
    ".ts": ("mpegts", "mpeg2video", "yuv420p"),
}
PIX_FMT = {"mjpeg": "yuvj420p", "libx264": "yuv420p", "libvpx-vp9": "yuv420p", "mpeg2video": "yuv420p",
           "mpeg4": "yuv420p", "libvpx": "yuv420p"}


def frame_image(index: int, size: tuple[int, int] = (160, 120), *, texture: bool = False) -> np.ndarray:
    """The RGB frame (H, W, 3) that encodes ``index``; ``size`` is (width, height)."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"frame index {index} does not fit in {BITS} bits")
    width, height = size
    bits = np.array([(index >> (BITS - 1 - k)) & 1 for k in range(BITS)], dtype=np.uint8).reshape(GRID, GRID)
    rows = (np.arange(height) * GRID // height)
    cols = (np.arange(width) * GRID // width)
    level = np.where(bits[rows][:, cols] == 1, ON, OFF).astype(np.int16)
    rgb = np.repeat(level[:, :, None], 3, axis=2)
    rgb[:, :, 2] = np.clip(rgb[:, :, 2] + 20, 0, 255)     # a little blue so RGB/BGR swaps show
    rgb[:, :, 0] = np.clip(rgb[:, :, 0] - 20, 0, 255)
    if texture:
        rgb += _texture(index, width, height)[:, :, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _texture(index: int, width: int, height: int) -> np.ndarray:
    """A moving diagonal pattern plus noise (amplitude ~ +-30), cheap to make, not cheap to encode."""
    y, x = np.ogrid[:height, :width]
    wave = (((x + y + 3 * index) // 6) % 2) * 24 - 12
    noise = np.random.default_rng(index).integers(-18, 19, size=(height, width), dtype=np.int16)
    return (wave + noise).astype(np.int16)


def frame_id(rgb: np.ndarray) -> int:
    """Recover the frame number from an RGB (or BGR, or grey) frame of any size."""
    grey = rgb.astype(np.float32).mean(axis=2) if rgb.ndim == 3 else rgb.astype(np.float32)
    height, width = grey.shape
    value = 0
    for r in range(GRID):
        for c in range(GRID):
            y0, y1 = (4 * r + 1) * height // (4 * GRID), (4 * r + 3) * height // (4 * GRID)
            x0, x1 = (4 * c + 1) * width // (4 * GRID), (4 * c + 3) * width // (4 * GRID)
            bit = grey[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean() > (ON + OFF) / 2
            value = (value << 1) | int(bit)
    return value


def write_clip(path, *, frames: int = 48, fps: float = 24, size: tuple[int, int] = (160, 120),
               codec: str | None = None, container: str | None = None, pix_fmt: str | None = None,
               pts: list[float] | None = None, gop: int | None = None, rotation: int = 0,
               texture: bool = False, options: dict | None = None, start: int = 0,
               faststart: bool = False) -> Path:
    """Encode a real clip whose frame i shows ``frame_id`` i (+ ``start``); returns the path.

    ``pts``: presentation time of each frame in seconds (variable frame rate; ``frames`` is then
    ``len(pts)``). ``gop``: keyframe interval. ``rotation``: counter-clockwise degrees written as the
    stream's display matrix (players and OpenCV rotate by it). ``options``: extra encoder options.
    ``faststart``: MP4/MOV index (moov) before the data, so a truncated copy still opens.
    """
    path = Path(path)
    fmt, default_codec, default_pix = CONTAINERS.get(path.suffix.lower(), ("mp4", "libx264", "yuv420p"))
    codec = codec or default_codec
    pix_fmt = pix_fmt or PIX_FMT.get(codec, default_pix)
    if pts is not None:
        frames = len(pts)
    rate = Fraction(fps).limit_denominator(1001)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=container or fmt, options=container_options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        opts = dict(options or {})
        if codec == "libx264":
            opts.setdefault("preset", "ultrafast")
        if codec == "libvpx-vp9":
            opts.update({"deadline": "realtime", "cpu-used": "8"} | opts)
        if gop:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                opts.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0")
        stream.options = opts
        time_base = Fraction(1, 1000) if pts is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(start + i, size, texture=texture), format="rgb24")
            frame.pts = round(pts[i] / time_base) if pts is not None else i
            frame.time_base = time_base
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path, *, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An MP4 (by suffix) holding only an AAC tone."""
    path = Path(path)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        n, t = 1024, 0
        while t < seconds * rate:
            samples = (0.2 * np.sin(2 * np.pi * 440 * (t + np.arange(n)) / rate)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, t
            for packet in stream.encode(frame):
                out.mux(packet)
            t += n
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_gif(path, *, frames: int = 12, size: tuple[int, int] = (160, 120),
              durations_ms: int | list[int] = 100, loop: int = 0) -> Path:
    """An animated GIF through Pillow; ``durations_ms`` per frame (GIF stores centiseconds)."""
    path = Path(path)
    images = [Image.fromarray(frame_image(i, size)) for i in range(frames)]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=durations_ms,
                   loop=loop, disposal=1, optimize=False)
    return path


def write_image(path, *, index: int = 7, size: tuple[int, int] = (160, 120), format: str | None = None,
                exif_orientation: int | None = None) -> Path:
    """A still (png/jpeg/webp by suffix) showing ``frame_id`` ``index``; optional EXIF orientation tag."""
    path = Path(path)
    path.write_bytes(image_bytes(index=index, size=size, format=format or _pil_format(path),
                                 exif_orientation=exif_orientation))
    return path


def image_bytes(*, index: int = 7, size: tuple[int, int] = (160, 120), format: str = "PNG",
                exif_orientation: int | None = None) -> bytes:
    image = Image.fromarray(frame_image(index, size))
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if format.upper() in ("JPEG", "WEBP"):
        kwargs["quality"] = 95
    buf = io.BytesIO()
    image.save(buf, format=format, **kwargs)
    return buf.getvalue()


def _pil_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}[path.suffix.lower()]


def probe_frames(path) -> list[tuple[int, float]]:
    """Decode every frame with PyAV (independent of OpenCV): ``[(frame_id, seconds), ...]`` in display order.

    Seconds count from the stream's start time (MPEG-PS/TS clips start at ~0.5 s on the wire)."""
    result = []
    with av.open(str(path)) as inp:
        stream = inp.streams.video[0]
        start = stream.start_time or 0
        for packet in inp.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:        # a damaged packet (truncated file): skip it as players do
                continue
            for frame in frames:
                seconds = float((frame.pts - start) * frame.time_base) if frame.pts is not None else float("nan")
                result.append((frame_id(frame.to_ndarray(format="rgb24")), seconds))
    return result


def truncate(path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes (a download that stopped half-way)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path
