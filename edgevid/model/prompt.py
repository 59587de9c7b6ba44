"""Chat messages with media -> the Gemma 4 prompt: template text, expanded media tokens, token ids.

Follows transformers' ``Gemma4Processor.apply_chat_template`` step by step:

1. the model folder's chat template is rendered with jinja2 in a sandbox set up like transformers'
   (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``strftime_now``, a ``tojson``
   that does not escape HTML), given ``messages`` (media values replaced by inert placeholders),
   ``add_generation_prompt`` and the tokenizer's special-token strings (``bos_token``, ...);
2. every ``<|video|>`` marker, in order, becomes one ``"mm:ss <boi><|video|>*k<eoi>"`` per frame joined by
   single spaces (minutes and seconds floored, as ``Gemma4Processor.replace_video_token``), every
   ``<|image|>`` marker ``"<boi><|image|>*k<eoi>"``, k = the frame's / image's soft tokens;
3. the text is encoded with ``add_special_tokens`` off when it already starts with ``<bos>``.

Prompt integrity: a caller's text cannot inject control tokens. When a text of a user or system message
spells a special token (``<|turn>``, ``<turn|>``, ``<|image|>``...), each such string is replaced, before the
template is rendered, by a private-use placeholder character; after rendering, the placeholders are
tokenized as the *text* of the string they stand for (``Tokenizer.encode_literal``), while the
template's own markers stay control tokens. Messages without such strings take the unchanged path, so
their ids stay those of transformers' ``apply_chat_template`` (which would turn typed markers into
control tokens: there edgevid deliberately differs). Assistant turns are left as they are: the chat
template itself reads markers in them (Gemma 4 strips ``<|channel>...<channel|>`` thinking), and they are
the caller's own history, not third-party text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from edgevid.errors import InvalidRequestError, ModelFolderError
from edgevid.model.manifest import ModelFolder
from edgevid.model.preprocess import VisionInput, preprocess_image, preprocess_video
from edgevid.model.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
VIDEO_PARTS = ("video", "video_url")
IMAGE_PARTS = ("image", "image_url")
TEXT_PARTS = ("text",)

Resolver = Callable[[dict], Any]   # a media part -> SampledVideo-like (frames, timestamps) or uint8 image


@dataclass(frozen=True)
class PromptMedia:
    """One video or image of the prompt, in prompt order."""

    kind: str                         # "video" | "image"
    vision: VisionInput
    timestamps: tuple[float, ...]     # seconds per frame (videos); () for images
    source: str | None = None


@dataclass(frozen=True)
class Prompt:
    text: str                         # the expanded prompt text
    input_ids: np.ndarray             # int64 [seq]
    media: tuple[PromptMedia, ...]
    video_token_id: int
    image_token_id: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    def media_positions(self) -> list[np.ndarray]:
        """For each media item, the positions in ``input_ids`` its features go to (in order)."""
        queues = {"video": iter(np.flatnonzero(self.input_ids == self.video_token_id)),
                  "image": iter(np.flatnonzero(self.input_ids == self.image_token_id))}
        out = []
        for item in self.media:
            wanted = item.vision.total_soft_tokens
            positions = np.fromiter(queues[item.kind], dtype=np.int64, count=wanted)
            out.append(positions)
        return out


# ---- messages ------------------------------------------------------------------------------------------
def iter_media_parts(messages: Sequence[Mapping]) -> Iterator[dict]:
    """The media parts of ``messages`` in prompt order (what a resolver will be called with)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") in VIDEO_PARTS + IMAGE_PARTS:
                    yield part


def map_parts(messages: Any, fn) -> Any:
    """A copy of ``messages`` with every content part of a list content replaced by ``fn(part)``.
    Anything that is not a list of messages is returned as it is (the prompt layer reports it)."""
    if not isinstance(messages, (list, tuple)):
        return messages
    out = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, (list, tuple)):
            message = {**message, "content": [fn(part) for part in content]}
        out.append(message)
    return out


def validate_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{i}] must be an object", param="messages")
        if message.get("role") not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {message.get('role')!r}", param="messages")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)):
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts", param="messages")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind not in TEXT_PARTS + VIDEO_PARTS + IMAGE_PARTS:
                raise InvalidRequestError(
                    f"messages[{i}].content[{j}].type must be one of text, image_url, video_url, image, video; "
                    f"got {kind!r}", param="messages")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequestError(f"messages[{i}].content[{j}].text must be a string", param="messages")
            if kind in VIDEO_PARTS + IMAGE_PARTS and message.get("role") != "user":
                raise InvalidRequestError(f"messages[{i}]: media parts are accepted in user messages only",
                                          param="messages")


def _template_view(value: Any) -> Any:
    """What the template sees: JSON-like data only; media objects become ``"<TypeName>"`` (as transformers)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _template_view(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_template_view(v) for v in value]
    if isinstance(value, np.generic):
        return _template_view(value.item())
    return f"<{type(value).__name__}>"


# ---- template ------------------------------------------------------------------------------------------
def _compile(template: str):
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateError as exc:
        raise ModelFolderError(f"the model's chat template does not compile: {exc}") from exc


def special_token_strings(folder: ModelFolder) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ``image_token``... as transformers' ``special_tokens_map`` passes them."""
    config = folder.tokenizer_config
    out: dict[str, str] = {}
    sources = [config, config.get("extra_special_tokens") if isinstance(config.get("extra_special_tokens"), dict)
               else {}]
    for source in sources:
        for key, value in source.items():
            if isinstance(value, dict):
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                out[key] = value
    out.setdefault("bos_token", folder.special.bos_text)
    return out


def render_template(folder: ModelFolder, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                    **template_vars: Any) -> str:
    """The chat template's text (media still as one marker per part)."""
    import jinja2

    template = _compile(folder.chat_template)
    variables = {**special_token_strings(folder), **template_vars}
    try:
        return template.render(messages=_template_view(list(messages)), tools=None, documents=None,
                               add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as exc:
        raise InvalidRequestError(f"the chat template rejected the messages: {exc}", param="messages") from exc


# ---- media expansion -----------------------------------------------------------------------------------
def format_timestamp(seconds: float) -> str:
    """``mm:ss`` with minutes and seconds floored, exactly as Gemma4Processor prints frame times."""
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def expand_video(timestamps: Sequence[float], soft_tokens: Sequence[int], folder: ModelFolder) -> str:
    s = folder.special
    return " ".join(f"{format_timestamp(t)} {s.boi_text}{s.video_text * k}{s.eoi_text}"
                    for t, k in zip(timestamps, soft_tokens))


def expand_image(soft_tokens: int, folder: ModelFolder) -> str:
    s = folder.special
    return f"{s.boi_text}{s.image_text * soft_tokens}{s.eoi_text}"


def _video_media(value: Any, part: Mapping, folder: ModelFolder) -> PromptMedia:
    frames = getattr(value, "frames", None)
    timestamps = getattr(value, "timestamps", None)
    if isinstance(value, Mapping):
        frames, timestamps = value.get("frames"), value.get("timestamps")
    if frames is None and isinstance(value, np.ndarray):
        frames = value
    if frames is None:
        raise InvalidRequestError(f"a video part holds {type(value).__name__}, not frames", param="messages")
    frames = np.asarray(frames)
    if part.get("timestamps") is not None:
        timestamps = part["timestamps"]
    if timestamps is None:   # transformers: no metadata -> frame i at i / 24 fps
        timestamps = np.arange(len(frames)) / folder.vision.default_fps
    timestamps = tuple(float(t) for t in np.asarray(timestamps, dtype=np.float64).reshape(-1))
    if len(timestamps) != len(frames):
        raise InvalidRequestError(f"a video has {len(frames)} frames but {len(timestamps)} timestamps",
                                  param="messages")
    vision = part.get("vision") or preprocess_video(
        frames, folder.vision.video_max_soft_tokens, folder.vision.patch_size, folder.vision.pooling,
        source_size=source_size(value))
    return PromptMedia("video", vision, timestamps, getattr(value, "source", None))


def source_size(video: Any) -> tuple[int, int] | None:
    """(height, width) a SampledVideo was decoded at (its frames may be scaled to the working size)."""
    height, width = getattr(video, "height", None), getattr(video, "width", None)
    return (int(height), int(width)) if isinstance(height, int) and isinstance(width, int) else None


def _image_media(value: Any, part: Mapping, folder: ModelFolder) -> PromptMedia:
    pixels = getattr(value, "pixels", value)
    vision = part.get("vision") or preprocess_image(
        np.asarray(pixels), folder.vision.image_max_soft_tokens, folder.vision.patch_size, folder.vision.pooling)
    return PromptMedia("image", vision, (), getattr(value, "source", None))


def _resolve(part: Mapping, resolve: Resolver | None) -> Any:
    kind = part["type"]
    if kind in ("video", "image") and not isinstance(part.get(kind), (str, bytes)) and part.get(kind) is not None:
        return part[kind]
    if resolve is None:
        raise InvalidRequestError(f"a {kind} part must be resolved to frames/pixels before rendering the prompt",
                                  param="messages")
    return resolve(dict(part))


def prepare_media(messages: Sequence[Mapping], folder: ModelFolder,
                  resolve: Resolver | None = None) -> list[PromptMedia]:
    media = []
    for part in iter_media_parts(messages):
        value = _resolve(part, resolve)
        build = _video_media if part["type"] in VIDEO_PARTS else _image_media
        media.append(build(value, part, folder))
    return media


def expand_media(text: str, media: Sequence[PromptMedia], folder: ModelFolder) -> str:
    """Replace the template's media markers, in order, by their expansions (as transformers' regex pass)."""
    s = folder.special
    markers = re.compile(f"{re.escape(s.video_text)}|{re.escape(s.image_text)}")
    found = markers.findall(text)
    kinds = ["video" if m == s.video_text else "image" for m in found]
    if kinds != [m.kind for m in media]:
        raise InvalidRequestError(
            f"the prompt has media markers {kinds} but the messages carry {[m.kind for m in media]} "
            f"(is {s.video_text!r} or {s.image_text!r} typed into a text part?)", param="messages")
    items = iter(media)

    def replace(_match: re.Match) -> str:
        item = next(items)
        if item.kind == "video":
            return expand_video(item.timestamps, item.vision.soft_tokens, folder)
        return expand_image(item.vision.soft_tokens[0], folder)

    return markers.sub(replace, text)


# ---- prompt integrity ----------------------------------------------------------------------------------
PLACEHOLDER_BASE = 0xF0000        # Supplementary Private Use Area-A: one character per special token
GUARDED_ROLES = ("user", "system")


def guard_control_text(messages: Sequence[Mapping], tokenizer: Tokenizer) -> tuple[list, dict[str, str]]:
    """``messages`` with every special-token string in their texts replaced by a placeholder character,
    and the placeholder -> string table ({} and the messages unchanged when no text spells one)."""
    table: dict[str, str] = {}
    if tokenizer.special_pattern is None:
        return list(messages), table
    index = {text: chr(PLACEHOLDER_BASE + i) for i, text in enumerate(tokenizer.special_strings)}

    def guard(text: Any) -> Any:
        if not isinstance(text, str) or not tokenizer.has_special_strings(text):
            return text

        def swap(match: re.Match) -> str:
            table[index[match.group(0)]] = match.group(0)
            return index[match.group(0)]
        return tokenizer.special_pattern.sub(swap, text)

    out = []
    for message in messages:
        if message.get("role") not in GUARDED_ROLES:
            out.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": guard(content)}
        elif isinstance(content, (list, tuple)):
            message = {**message, "content": [
                {**part, "text": guard(part["text"])} if isinstance(part, Mapping) and part.get("type") == "text"
                else part for part in content]}
        out.append(message)
    return out, table


def encode_guarded(text: str, table: dict[str, str], tokenizer: Tokenizer) -> list[int]:
    """Ids of rendered ``text``: template segments as usual, each placeholder as the literal text it holds."""
    if not table:
        return tokenizer.encode(text)
    pattern = re.compile("|".join(map(re.escape, table)))
    ids: list[int] = []
    pos = 0
    for match in pattern.finditer(text):
        segment = text[pos:match.start()]
        if segment:
            ids += tokenizer.encode(segment, add_special_tokens=None if pos == 0 else False)
        ids += tokenizer.encode_literal(table[match.group(0)])
        pos = match.end()
    if text[pos:]:
        ids += tokenizer.encode(text[pos:], add_special_tokens=None if pos == 0 else False)
    return ids


def render_prompt(messages: Sequence[Mapping], folder: ModelFolder, tokenizer: Tokenizer | None = None, *,
                  add_generation_prompt: bool = True, resolve: Resolver | None = None,
                  **template_vars: Any) -> Prompt:
    """Messages -> :class:`Prompt` (text, int64 ids, media in order with their :class:`VisionInput`).

    Media parts are ``{"type": "video", "video": SampledVideo | {"frames", "timestamps"}}`` and
    ``{"type": "image", "image": uint8 HxWx3}``; other forms (``video_url``, paths) go through ``resolve``.
    A part may carry a precomputed ``"vision": VisionInput`` and, for videos, ``"timestamps"``.
    """
    validate_messages(messages)
    tokenizer = tokenizer or Tokenizer.from_folder(folder)
    media = prepare_media(messages, folder, resolve)
    guarded, table = guard_control_text(messages, tokenizer)
    text = expand_media(render_template(folder, guarded, add_generation_prompt, **template_vars), media, folder)
    ids = np.asarray(encode_guarded(text, table, tokenizer), dtype=np.int64)
    for placeholder, original in table.items():
        text = text.replace(placeholder, original)
    return Prompt(text, ids, tuple(media), folder.special.video, folder.special.image)
