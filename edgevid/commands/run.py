"""``edgevid run``: ask a model folder about videos and images, one-shot (``-i``) or as a chat.

    edgevid run -m models/gemma-4-e2b --video clip.mp4 -i "What happens in this video?"
    edgevid run -m models/gemma-4-e2b            # interactive; paths typed in the prompt are attached

The answer streams to stdout; a short status (frames sampled, prompt tokens, time to first token,
tokens/s) goes to stderr. ``--json`` prints one object instead of streaming.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from edgevid.errors import InvalidRequestError, ModelFolderError

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DEMO_HINT = "run `edgevid export --demo --output models/edgevid-demo` and pass -m models/edgevid-demo"


@click.command("run")
@click.option("-m", "--model", "model", type=str, help="Model folder written by `edgevid export`.")
@click.option("--demo", is_flag=True, help="Use the demo model bundled with edgevid (if this install ships one); "
              "without --video/--image it asks about the bundled sample clip.")
@click.option("--video", "videos", multiple=True, help="Video file or URL (repeatable).")
@click.option("--image", "images", multiple=True, help="Image file or URL (repeatable).")
@click.option("-i", "--prompt", "prompt", type=str, help="Ask once and exit (otherwise: interactive chat).")
@click.option("--num-frames", type=int, help="Frames sampled per video (default: the model folder's, 32).")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--seed", type=int, help="Seed for sampling (same seed, same answer).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | dml | openvino")
@click.option("--precision", default="fp32", show_default=True, help="fp32 | fp16 | int8 | q4 (as exported).")
@click.option("--json", "as_json", is_flag=True, help="With -i: print one JSON object instead of streaming.")
def run(model, demo, videos, images, prompt, num_frames, max_tokens, temperature, top_p, top_k, seed,
        device, precision, as_json):
    """Ask a model folder about videos and images."""
    from edgevid.model.generate import GenerationOptions
    from edgevid.pipeline import Pipeline

    options = GenerationOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                seed=seed, num_frames=num_frames)
    if as_json and prompt is None:
        raise InvalidRequestError("--json needs a one-shot prompt (-i)", param="json")
    model_dir = resolve_model_dir(model, demo)
    pipeline = Pipeline.load(model_dir, device=device, precision=precision)
    media = [video_part(v) for v in videos] + [image_part(i) for i in images]
    sample = model_dir / "sample.mp4"
    if (demo or model == "--demo") and not media and sample.is_file():
        click.echo(f"[demo: asking about the bundled clip {sample}]", err=True)
        media = [video_part(str(sample))]
    if prompt is not None:
        ask_once(pipeline, media, prompt, options, as_json)
    else:
        chat(pipeline, media, options)


BUNDLED_DEMO = Path(__file__).resolve().parent.parent / "demo"      # edgevid/demo (package data)


def resolve_model_dir(model: str | None, demo: bool) -> Path:
    if demo or model == "--demo":
        if (BUNDLED_DEMO / "edgevid.json").is_file():
            return BUNDLED_DEMO
        raise ModelFolderError(f"this edgevid install ships no demo model; {DEMO_HINT}")
    if not model:
        raise InvalidRequestError(f"pass a model folder with -m MODEL_DIR (no model yet? {DEMO_HINT})", param="model")
    return Path(model)


def video_part(source: str) -> dict:
    return {"type": "video_url", "video_url": {"url": source}}


def image_part(source: str) -> dict:
    return {"type": "image_url", "image_url": {"url": source}}


def user_message(media: list[dict], text: str) -> dict:
    return {"role": "user", "content": [*media, {"type": "text", "text": text}]}


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
    parts = [f"{m['frames']} frames from {m['source']}" for m in stream.media if m.get("kind") == "video"]
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


# ---- interactive ------------------------------------------------------------------------------------------
_QUOTED = re.compile(r"""(["'])(.+?)\1""")


def split_media(line: str) -> tuple[str, list[dict]]:
    """Find video/image paths and URLs typed in a prompt; return the rest of the text and media parts."""
    media, kept = [], []
    tokens = [m.group(2) for m in _QUOTED.finditer(line)]
    rest = _QUOTED.sub(" ", line)
    for token in tokens + rest.split():
        part = media_part_for(token.strip(",;"))
        if part is not None:
            media.append(part)
        elif token in tokens:
            kept.append(f'"{token}"')
        else:
            kept.append(token)
    return " ".join(kept), media


def media_part_for(token: str) -> dict | None:
    suffix = Path(token.split("?", 1)[0]).suffix.lower()
    is_url = token.startswith(("http://", "https://", "file://"))
    if not is_url and not Path(token).expanduser().is_file():
        return None
    source = token if is_url else str(Path(token).expanduser())
    if suffix in VIDEO_EXTENSIONS:
        return video_part(source)
    if suffix in IMAGE_EXTENSIONS:
        return image_part(source)
    return None


def chat(pipeline, media, options) -> None:
    click.echo(f"edgevid chat with {pipeline.model_name} on {pipeline.provider}. Type a question; paths to videos "
               "or images in it are attached. /clear forgets the conversation, /exit quits.", err=True)
    history, pending = [], list(media)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            return
        if line in ("/exit", "/quit"):
            return
        if line == "/clear":
            history, pending = [], []
            click.echo("[conversation cleared]", err=True)
            continue
        if not line:
            continue
        text, found = split_media(line)
        message = user_message(pending + found, text)
        try:
            answer = stream_answer(pipeline, history + [message], options)
        except (InvalidRequestError,) + _media_errors() as err:
            click.echo(f"error: {err}", err=True)
            continue
        history += [message, {"role": "assistant", "content": answer}]
        pending = []


def _media_errors() -> tuple:
    from edgevid.errors import ContextLengthError, MediaError

    return (MediaError, ContextLengthError)
