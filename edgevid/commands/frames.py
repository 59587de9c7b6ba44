"""``edgevid frames SOURCE``: show the frames (and timestamps) the model would see."""
from __future__ import annotations

import json
import os

import click
import numpy as np

from edgevid.media import SampledVideo, SourcePolicy, sample_video
from edgevid.model.prompt import format_timestamp as mmss      # the label the prompt gives each frame


@click.command("frames")
@click.argument("source")
@click.option("--num-frames", "-n", default=32, show_default=True, type=click.IntRange(min=1),
              help="How many frames to sample.")
@click.option("--mode", type=click.Choice(["accurate", "fast"]), default="accurate", show_default=True,
              help="accurate: the exact frames floor(i*total/n); fast: the keyframe before each (long MP4s).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the frames as PNG files into this folder.")
@click.option("--sheet", type=click.Path(dir_okay=False), help="Write a contact sheet (PNG) labelled mm:ss.")
def frames(source: str, num_frames: int, mode: str, as_json: bool, out: str | None, sheet: str | None) -> None:
    """Sample frames from SOURCE (path, file://, http(s):// or data: URL)."""
    video = sample_video(source, num_frames=num_frames, mode=mode, policy=SourcePolicy.permissive())
    if out:
        write_frames(video, out)
    if sheet:
        write_sheet(video, sheet)
    if as_json:
        click.echo(json.dumps(describe(video, source)))
    else:
        click.echo(table(video, source))


def describe(video: SampledVideo, source: str) -> dict:
    return {
        "source": source if not source.startswith("data:") else video.source,
        "width": video.width, "height": video.height, "fps": round(video.fps, 6),
        "duration": round(video.duration, 6), "frame_count": video.frame_count,
        "frames": [{"index": int(i), "timestamp": round(float(t), 6)}
                   for i, t in zip(video.indices, video.timestamps)],
    }


def table(video: SampledVideo, source: str) -> str:
    head = (f"{video.source}: {video.width}x{video.height}, {video.fps:.3f} fps, {video.duration:.2f} s, "
            f"{video.frame_count} frames; {len(video.indices)} sampled")
    rows = ["  #   index   time (s)  label"]
    rows += [f"{k:3d} {int(i):7d} {float(t):10.3f}  {mmss(float(t))}"
             for k, (i, t) in enumerate(zip(video.indices, video.timestamps))]
    return "\n".join([head, *rows])


def write_frames(video: SampledVideo, folder: str) -> None:
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for k, (frame, index) in enumerate(zip(video.frames, video.indices)):
        Image.fromarray(frame).save(os.path.join(folder, f"frame_{k:03d}_{int(index):06d}.png"))


def write_sheet(video: SampledVideo, path: str, columns: int = 8, thumb_width: int = 240) -> None:
    from PIL import Image, ImageDraw
    scale = thumb_width / video.width
    thumb_height = max(1, round(video.height * scale))
    label_height = 18
    rows = -(-len(video.frames) // columns)
    cols = min(columns, len(video.frames))
    sheet = Image.new("RGB", (cols * thumb_width, rows * (thumb_height + label_height)), "black")
    draw = ImageDraw.Draw(sheet)
    for k, (frame, t) in enumerate(zip(video.frames, video.timestamps)):
        x, y = (k % columns) * thumb_width, (k // columns) * (thumb_height + label_height)
        thumb = Image.fromarray(np.ascontiguousarray(frame)).resize((thumb_width, thumb_height), Image.BILINEAR)
        sheet.paste(thumb, (x, y))
        draw.text((x + 4, y + thumb_height + 2), f"{mmss(float(t))}  #{int(video.indices[k])}", fill="white")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    sheet.save(path, format="PNG")
