"""``edgevid run``: ask a model folder about videos and images, one-shot (``-i``) or as a chat.

    edgevid run -m models/gemma-4-e2b --video clip.mp4 -i "What happens in this video?"
    edgevid run -m models/gemma-4-e2b            # interactive; paths typed in the prompt are attached

The answer streams to stdout; a short status (frames sampled, prompt tokens, time to first token,
tokens/s) goes to stderr. ``--json`` prints one object instead of streaming.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import click

from edgevid.commands.options import device_options, generation_options, model_options
from edgevid.errors import InvalidRequestError
from edgevid.messages import image_part, user_message as _user_message, video_part

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@click.command("run")
@model_options
@click.option("--video", "videos", multiple=True, help="Video file or URL (repeatable). With --demo and no media: "
              "the bundled sample clip.")
@click.option("--image", "images", multiple=True, help="Image file or URL (repeatable).")
@click.option("-i", "--prompt", "prompt", type=str, help="Ask once and exit (otherwise: interactive chat).")
@click.option("--num-frames", type=click.IntRange(1), help="Frames sampled per video (default: the model folder's).")
@generation_options
@device_options
@click.option("--json", "as_json", is_flag=True, help="With -i: print one JSON object instead of streaming.")
@click.option("--spin/--no-spin", "spinning", default=None,
              help="onnxruntime threads busy-wait between ops: faster when this process has the cores to itself, "
                   "much slower when other work shares them. Default: on unless the load average says the "
                   "cores are busy.")
@click.option("--prefix-cache-mb", type=click.IntRange(min=0), default=512, show_default=True,
              help="Chat: keep prefilled prompt prefixes (the video of earlier turns) up to this size; 0 = off.")
def run(model_dir, demo, videos, images, prompt, num_frames, generation, device, precision, as_json, spinning,
        prefix_cache_mb):
    """Ask a model folder about videos and images."""
    from edgevid.pipeline import Pipeline

    options = dataclasses.replace(generation, num_frames=num_frames)
    if as_json and prompt is None:
        raise InvalidRequestError("--json needs a one-shot prompt (-i)", param="json")
    # one question: nothing to reuse, and a stored prefix would only hold a second KV copy during decode
    prefix_bytes = 0 if prompt is not None else prefix_cache_mb * 2**20
    if spinning is None:
        from edgevid.model.sessions import cores_look_free

        spinning = cores_look_free()
    pipeline = Pipeline.load(model_dir, device=device, precision=precision, spinning=spinning,
                             prefix_cache_bytes=prefix_bytes)
    media = [video_part(v) for v in videos] + [image_part(i) for i in images]
    sample = model_dir / "sample.mp4"
    if demo and not media and sample.is_file():
        click.echo(f"[demo: asking about the bundled clip {sample.name}]", err=True)
        media = [video_part(str(sample))]
    if prompt is not None:
        ask_once(pipeline, media, prompt, options, as_json)
    else:
        chat(pipeline, media, options)


def user_message(media: list[dict], text: str) -> dict:
    return _user_message(text, media=media)


# ---- one-shot ------------------------------------------------------------------------------------------
def ask_once(pipeline, media, prompt, options, as_json: bool) -> None:
    messages = [user_message(media, prompt)]
    if as_json:
        result = pipeline.chat(messages, options)
        click.echo(json.dumps({
            "text": result.text, "token_ids": list(result.token_ids), "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
            "timings": result.timings,
        }))
        return
    stream_answer(pipeline, messages, options)


def stream_answer(pipeline, messages, options) -> str:
    """Stream one answer to stdout, the status line to stderr; Ctrl-C stops generation."""
    stream = pipeline.stream(messages, options)
    pieces = []
    try:
        for piece in stream:
            pieces.append(piece.text)
            click.echo(piece.text, nl=False)
            sys.stdout.flush()
    except KeyboardInterrupt:
        click.echo(" [stopped]", err=True, nl=False)
    finally:
        stream.close()
    click.echo()
    click.echo(status_line(stream), err=True)
    return "".join(pieces)


def status_line(stream) -> str:
    t = stream.timings
    parts = [f"{m['frames']} frames from {brief_name(m['source'])}" for m in stream.media if m.get("kind") == "video"]
    images = sum(1 for m in stream.media if m.get("kind") == "image")
    if images:
        parts.append(f"{images} image{'s' if images > 1 else ''}")
    parts.append(f"prompt {stream.prompt_tokens} tokens")
    if t.get("ttft_s") is not None:
        parts.append(f"first token {t['ttft_s']:.2f} s")
    if t.get("tokens_per_s"):
        parts.append(f"{t['tokens_per_s']:.1f} tokens/s")
    parts.append(f"{stream.completion_tokens} tokens ({stream.finish_reason or 'stopped'})")
    return "[" + " · ".join(parts) + "]"


def brief_name(source) -> str:
    """A media source as the status line names it: the file name, not the whole path or data URL."""
    if not isinstance(source, str) or not source:
        return "a video"
    if source[:5].lower() == "data:":
        return "a data URL"
    if "://" in source:
        parts = urlsplit(source)
        return posixpath.basename(parts.path) or parts.netloc or source
    return os.path.basename(source.rstrip("/\\")) or source


# ---- interactive ------------------------------------------------------------------------------------------
_QUOTED = re.compile(r"""(["'])(.+?)\1""")
_URL_PREFIXES = ("http://", "https://", "file://")


@dataclass
class TypedLine:
    """A chat line split into the question, the media typed in it, and path-like words naming no file."""

    text: str
    media: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def split_media(line: str) -> TypedLine:
    """Find video/image paths and URLs typed in a prompt; return the rest of the text and media parts."""
    found = TypedLine("")
    kept = []
    quoted = [m.group(2) for m in _QUOTED.finditer(line)]
    rest = _QUOTED.sub(" ", line)
    for token in quoted + rest.split():
        word = token.strip(",;").rstrip(":!?)").lstrip("(")
        part = media_part_for(word)
        if part is not None:
            found.media.append(part)
        elif looks_like_media_path(word) and not Path(word).expanduser().is_file():
            found.missing.append(word)
        elif token in quoted:
            kept.append(f'"{token}"')
        else:
            kept.append(token)
    found.text = " ".join(kept)
    return found


def looks_like_media_path(word: str) -> bool:
    """A word the user probably meant as a file: a media file name, or an absolute/relative/home path."""
    if word.startswith(_URL_PREFIXES[:2]):
        return False
    suffix = Path(word.split("?", 1)[0]).suffix.lower()
    return (suffix in VIDEO_EXTENSIONS | IMAGE_EXTENSIONS or word.startswith(("./", "../", "~/", "file://"))
            or (word.startswith("/") and len(word) > 1) or re.match(r"^[A-Za-z]:[\\/]", word) is not None)


def media_part_for(token: str) -> dict | None:
    suffix = Path(token.split("?", 1)[0]).suffix.lower()
    is_url = token.startswith(_URL_PREFIXES)
    if not is_url and not Path(token).expanduser().is_file():
        return None
    source = token if is_url else str(Path(token).expanduser())
    if suffix in VIDEO_EXTENSIONS:
        return video_part(source)
    if suffix in IMAGE_EXTENSIONS:
        return image_part(source)
    return None


def media_key(part: dict) -> str:
    """What makes two parts the same media: the real path of a local file, else the URL as typed."""
    from edgevid.model.media_parts import media_reference

    source = media_reference(part)[1]
    if isinstance(source, bytes):
        return "bytes:" + hashlib.sha256(source).hexdigest()
    if source.startswith("file://"):
        source = url2pathname(urlsplit(source).path)
    if "://" in source or source[:5].lower() == "data:":
        return source
    return os.path.realpath(os.path.expanduser(source))


def chat(pipeline, media, options) -> None:
    click.echo(f"edgevid chat with {pipeline.model_name} on {pipeline.provider}. Type a question; paths to videos "
               "or images in it are attached. /clear forgets the conversation, /exit quits.", err=True)
    history, pending, attached = [], list(media), set()
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/clear":
            history, pending, attached = [], [], set()
            click.echo("[conversation cleared]", err=True)
            continue
        if not line:
            continue
        typed = split_media(line)
        if typed.missing:      # answering without the video the user meant would be an answer about nothing
            click.echo(f"[no such file: {', '.join(typed.missing)} — not attached, question not sent]", err=True)
            continue
        new_media, keys = [], []
        for part in pending + typed.media:
            key = media_key(part)
            if key in attached or key in keys:
                click.echo(f"[{brief_name(key)} is already attached]", err=True)
                continue
            new_media.append(part)
            keys.append(key)
        message = user_message(new_media, typed.text)
        try:
            answer = stream_answer(pipeline, history + [message], options)
        except (InvalidRequestError,) + _media_errors() as err:
            click.echo(f"error: {err}", err=True)
            continue
        history += [message, {"role": "assistant", "content": answer}]
        attached.update(keys)
        pending = []


def _media_errors() -> tuple:
    from edgevid.errors import ContextLengthError, MediaError

    return (MediaError, ContextLengthError)
