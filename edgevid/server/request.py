"""Parse a chat-completions body once into a frozen :class:`ChatRequest`.

Everything the client may ask for is validated here and mapped into one
:class:`~edgevid.model.generate.GenerationOptions`; anything edgevid does not implement (``n > 1``,
tools, logprobs, JSON mode, audio, ...) is refused with a 400 that names the parameter rather than
ignored. Media is not touched here, except that a data URL larger than the media cap is refused (413)
from its length, before anything is decoded.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from edgevid.errors import LimitExceededError, MediaTooLargeError
from edgevid.model.generate import GenerationOptions
from edgevid.server.errors import InvalidValueError, ModelNotFoundError, UnsupportedParameterError

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
# accepted and without effect on the answer
IGNORED = {"user", "metadata", "service_tier"}
# refused whenever present with a value that asks for something
UNSUPPORTED = {
    "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "audio", "prediction",
    "web_search_options", "reasoning_effort", "top_logprobs", "verbosity",
}
HANDLED = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
    "stop", "stream", "stream_options", "num_frames", "n", "logprobs", "response_format", "modalities",
    "logit_bias", "presence_penalty", "frequency_penalty", "store",
}
MAX_STOP_SEQUENCES = 4          # as GenerationOptions (and OpenAI) allow
MAX_JSON_DEPTH = 32             # a chat body needs 6 levels
MAX_JSON_VALUES = 2_000_000     # ',' '[' '{' in a body: bounds the Python objects json.loads builds
_SURROGATE = re.compile("[\ud800-\udfff]")
_BASE64_IGNORED = re.compile(r"[\s=]")


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class MediaPart:
    kind: str                 # "video" | "image"
    url: str                  # path, file://, http(s) or data: URL
    num_frames: int | None    # videos only
    param: str                # where it sits in the body, for errors: messages[0].content[1].video_url.url


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[TextPart | MediaPart, ...]


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    options: GenerationOptions
    stream: bool = False
    include_usage: bool = False

    @property
    def media(self) -> list[MediaPart]:
        return [p for m in self.messages for p in m.parts if isinstance(p, MediaPart)]


@dataclass(frozen=True)
class RequestLimits:
    """What the server allows a request to ask for (from the ``serve`` flags)."""
    model_name: str
    max_frames: int
    default_frames: int          # frames per video when the request names none (<= max_frames)
    max_media_bytes: int
    defaults: GenerationOptions = field(default_factory=GenerationOptions)   # for the fields a request omits
    max_media_parts: int = 8             # images + videos per request
    max_total_frames: int = 128          # video frames (+1 per image) per request
    max_text_bytes: int = 1 * 2**20      # UTF-8 bytes of all text parts together


# ---- the raw body --------------------------------------------------------------------------------------
def check_body_size(raw: bytes) -> None:
    """Refuse, before ``json.loads``, a body that would build millions of Python objects."""
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > MAX_JSON_VALUES:
        raise LimitExceededError(f"the request body holds about {values} JSON values, over the limit of "
                                 f"{MAX_JSON_VALUES}", param="messages")


def check_json(body: object) -> None:
    """Nesting depth and string content of a parsed body, walked without recursion: deeper than
    :data:`MAX_JSON_DEPTH` or a lone UTF-16 surrogate anywhere (no valid UTF-8 text has one) is a 400."""
    stack = [(body, 1, "")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise InvalidValueError(f"{where or 'the body'} holds a lone UTF-16 surrogate; text must be valid "
                                        "Unicode", param=where or None)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidValueError(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels",
                                    param=where or None)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and _SURROGATE.search(key):
                raise InvalidValueError("a key of the request body holds a lone UTF-16 surrogate")
            path = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"
            stack.append((item, depth + 1, path.lstrip(".")))


def parse_chat_request(body: object, limits: RequestLimits) -> ChatRequest:
    if not isinstance(body, dict):
        raise InvalidValueError("the request body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    _refuse_unsupported(body)
    model = _parse_model(body.get("model"), limits.model_name)
    defaults = limits.defaults
    num_frames = _frames(body, "num_frames", limits) if "num_frames" in body else None
    messages = _parse_messages(body.get("messages"), limits, num_frames)
    _check_admission(messages, limits)
    stream = _bool(body, "stream", False)
    include_usage = _parse_stream_options(body, stream)
    options = GenerationOptions(
        max_tokens=_max_tokens(body, defaults.max_tokens),
        temperature=_number(body, "temperature", defaults.temperature, low=0.0, high=2.0),
        top_p=_number(body, "top_p", defaults.top_p, low=0.0, high=1.0, low_open=True),
        top_k=_int(body, "top_k", defaults.top_k, low=0),
        seed=_int(body, "seed", defaults.seed),
        stop=_stop(body.get("stop")),
        num_frames=num_frames if num_frames is not None else limits.default_frames,
    )
    return ChatRequest(model=model, messages=messages, options=options, stream=stream, include_usage=include_usage)


# ---- admission: caps checked before anything is fetched or decoded -------------------------------------
def _check_admission(messages: tuple[Message, ...], limits: RequestLimits) -> None:
    media = [p for m in messages for p in m.parts if isinstance(p, MediaPart)]
    if len(media) > limits.max_media_parts:
        raise LimitExceededError(f"the request has {len(media)} images/videos, over this server's limit of "
                                 f"{limits.max_media_parts} per request (--max-media-parts)", param="messages")
    frames = sum(p.num_frames or 1 for p in media)
    if frames > limits.max_total_frames:
        raise LimitExceededError(f"the request asks for {frames} frames in all, over this server's limit of "
                                 f"{limits.max_total_frames} per request (--max-total-frames)", param="num_frames")
    text = sum(len(p.text.encode("utf-8")) for m in messages for p in m.parts if isinstance(p, TextPart))
    if text > limits.max_text_bytes:
        raise LimitExceededError(f"the request's text is {text} bytes, over this server's limit of "
                                 f"{limits.max_text_bytes} bytes (--max-text-bytes)", param="messages")


# ---- refusals ------------------------------------------------------------------------------------------
def _refuse_unsupported(body: dict) -> None:
    for key in body:
        if key in UNSUPPORTED:
            raise UnsupportedParameterError(f"'{key}' is not supported by edgevid", param=key)
        if key not in HANDLED and key not in IGNORED:
            raise UnsupportedParameterError(f"Unrecognized request argument supplied: {key}", param=key)
    if body.get("n", 1) != 1:
        raise UnsupportedParameterError(f"'n' must be 1 (edgevid returns one choice), got {body['n']!r}", param="n")
    if body.get("logprobs"):
        raise UnsupportedParameterError("'logprobs' is not supported by edgevid", param="logprobs")
    fmt = body.get("response_format", {"type": "text"})
    if not isinstance(fmt, dict) or fmt.get("type") != "text":
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise UnsupportedParameterError(f"response_format {kind!r} is not supported; only 'text'",
                                        param="response_format")
    if body.get("modalities", ["text"]) != ["text"]:
        raise UnsupportedParameterError("'modalities': only the 'text' output modality is supported", param="modalities")
    if body.get("logit_bias"):
        raise UnsupportedParameterError("'logit_bias' is not supported by edgevid", param="logit_bias")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key, 0) != 0:
            raise UnsupportedParameterError(f"'{key}' is not supported by edgevid (only 0)", param=key)
    if body.get("store"):
        raise UnsupportedParameterError("'store' is not supported by edgevid", param="store")


def _parse_model(model: object, served: str) -> str:
    if model is None or model in (served, "default"):
        return served
    raise ModelNotFoundError(f"The model '{model}' does not exist; this server serves '{served}' "
                             "(or use 'default')", param="model")


def _parse_stream_options(body: dict, stream: bool) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not stream:
        raise InvalidValueError("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if not isinstance(opts, dict) or set(opts) - {"include_usage", "include_obfuscation"}:
        raise InvalidValueError("'stream_options' accepts only 'include_usage'", param="stream_options")
    return _bool(opts, "include_usage", False, param="stream_options.include_usage")


# ---- messages ------------------------------------------------------------------------------------------
def _parse_messages(raw: object, limits: RequestLimits, num_frames: int | None) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidValueError("'messages' must be a non-empty list of messages", param="messages")
    return tuple(_parse_message(i, m, limits, num_frames) for i, m in enumerate(raw))


def _parse_message(i: int, raw: object, limits: RequestLimits, num_frames: int | None) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise InvalidValueError(f"{where} must be an object with 'role' and 'content'", param=where)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidValueError(f"{where}.role {role!r} is not supported; use one of "
                                "'system', 'developer', 'user', 'assistant'", param=f"{where}.role")
    if raw.get("tool_calls") or raw.get("function_call"):
        raise UnsupportedParameterError("tool calls are not supported by edgevid", param=f"{where}.tool_calls")
    content = raw.get("content")
    if isinstance(content, str):
        parts = (TextPart(content),)
    elif isinstance(content, list) and content:
        parts = tuple(_parse_part(f"{where}.content[{j}]", p, limits, num_frames) for j, p in enumerate(content))
    else:
        raise InvalidValueError(f"{where}.content must be a string or a non-empty list of parts",
                                param=f"{where}.content")
    role = ROLES[role]
    if role != "user" and any(isinstance(p, MediaPart) for p in parts):
        raise InvalidValueError(f"{where}: images and videos are accepted in 'user' messages only",
                                param=f"{where}.content")
    return Message(role=role, parts=parts)


def _parse_part(where: str, raw: object, limits: RequestLimits, num_frames: int | None) -> TextPart | MediaPart:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "text":
        if not isinstance(raw.get("text"), str):
            raise InvalidValueError(f"{where}.text must be a string", param=f"{where}.text")
        return TextPart(raw["text"])
    if kind not in MEDIA_PARTS:
        raise InvalidValueError(f"{where}.type {kind!r} is not supported; use 'text', 'image_url' or "
                                "'video_url'", param=f"{where}.type")
    spec = raw.get(kind)
    spec = {"url": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or not spec["url"]:
        raise InvalidValueError(f"{where}.{kind}.url must be a non-empty string", param=f"{where}.{kind}.url")
    url = spec["url"]
    _check_data_url_size(url, limits.max_media_bytes, f"{where}.{kind}.url")
    frames = None
    if MEDIA_PARTS[kind] == "video":
        frames = _frames(spec, "num_frames", limits, param=f"{where}.{kind}.num_frames") \
            if spec.get("num_frames") is not None else num_frames
        frames = frames if frames is not None else limits.default_frames
    return MediaPart(kind=MEDIA_PARTS[kind], url=url, num_frames=frames, param=f"{where}.{kind}.url")


def _check_data_url_size(url: str, max_bytes: int, param: str) -> None:
    if not url[:5].lower() == "data:":
        return
    header, _, payload = url.partition(",")
    size = len(payload) * 3 // 4 if header.lower().endswith(";base64") else len(payload)
    if size > max_bytes and header.lower().endswith(";base64"):     # exact: padding and whitespace are no data
        size = (len(payload) - _BASE64_IGNORED.subn("", payload)[1]) * 3 // 4
    if size > max_bytes:
        raise MediaTooLargeError(f"data URL holds about {size} bytes, over this server's limit of "
                                 f"{max_bytes} bytes (--max-media-bytes)", param=param, source=url)


# ---- scalars -------------------------------------------------------------------------------------------
def _frames(obj: dict, key: str, limits: RequestLimits, param: str | None = None) -> int:
    n = _int(obj, key, None, low=1, param=param)
    if n > limits.max_frames:
        raise InvalidValueError(f"{param or key}={n} is over this server's limit of {limits.max_frames} frames "
                                "per video (--max-frames)", param=param or key)
    return n


def _max_tokens(body: dict, default: int) -> int:
    a = _int(body, "max_completion_tokens", None, low=1)
    b = _int(body, "max_tokens", None, low=1)
    if a is not None and b is not None and a != b:
        raise InvalidValueError("'max_tokens' and 'max_completion_tokens' disagree; send one",
                                param="max_completion_tokens")
    return a if a is not None else b if b is not None else default


def _bool(obj: dict, key: str, default: bool, param: str | None = None) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise InvalidValueError(f"'{param or key}' must be true or false, got {value!r}", param=param or key)
    return value


def _int(obj: dict, key: str, default, *, low: int | None = None, param: str | None = None):
    value = obj.get(key, default)
    if value is default:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise InvalidValueError(f"'{param or key}' must be an integer{bound}, got {value!r}", param=param or key)
    return value


def _number(obj: dict, key: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
    value = obj.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value < low or value > high or (low_open and value == low)):
        ok = False
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InvalidValueError(f"'{key}' must be a number in {interval}, got {value!r}", param=key)
    return float(value)


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and s for s in stops)):
        raise InvalidValueError(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} "
                                "non-empty strings", param="stop")
    return tuple(stops)
