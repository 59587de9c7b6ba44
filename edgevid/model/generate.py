"""Generation in three layers (as mlx-lm does it):

1. ``decode_steps(decoder, embed, prompt, sampler)`` — the KV-cache loop, yielding token ids: ``prefill``
   the whole prompt once, then feed one token per step with the presents as the next pasts. Closing
   the generator stops generation.
2. ``stream_generate(steps, detokenizer, options, eos_ids)`` — yields :class:`TextPiece` s; the last
   one carries ``finish_reason`` ("stop" on an EOS id or a stop string, "length" at ``max_tokens``).
   Text that might be the start of a stop string is held back until it is known not to be one
   (``edgevid.model.tokenizer.StopMatcher``).
3. ``generate(...)`` — joins the pieces into a :class:`GenerationResult`.

:class:`GenerationOptions` is the one set of knobs the CLI flags and the HTTP body both map into; it
validates itself on construction and raises :class:`InvalidRequestError` naming the parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from edgevid.errors import ContextLengthError, InvalidRequestError
from edgevid.model.sampling import make_sampler
from edgevid.model.sessions import DecoderSession, EmbedSession, Embeddings, KVCache, trim_memory
from edgevid.model.tokenizer import StopMatcher

MAX_STOP_STRINGS = 4
MAX_NUM_FRAMES = 1024


@dataclass
class GenerationOptions:
    max_tokens: int = 256
    temperature: float = 0.0     # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0               # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_frames: int | None = None   # frames per video; None = the model folder's default (32)

    def __post_init__(self):
        self.max_tokens = _integer("max_tokens", self.max_tokens, low=1)
        self.temperature = _number("temperature", self.temperature, low=0.0, high=2.0)
        self.top_p = _number("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        self.top_k = _integer("top_k", self.top_k, low=0)
        if self.seed is not None:
            self.seed = _integer("seed", self.seed, low=-(2**63), high=2**64 - 1) % 2**64
        self.stop = _stop_strings(self.stop)
        if self.num_frames is not None:
            self.num_frames = _integer("num_frames", self.num_frames, low=1, high=MAX_NUM_FRAMES)

    def sampler(self):
        return make_sampler(self.temperature, self.top_k, self.top_p, self.seed)


def _integer(name, value, *, low=None, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequestError(f"{name} must be an integer, got {value!r}", param=name)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidRequestError(f"{name} must be {_range(low, high)}, got {value}", param=name)
    return value


def _number(name, value, *, low, high, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}", param=name)
    value = float(value)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bound = f"> {low} and <= {high}" if low_open else f"between {low} and {high}"
        raise InvalidRequestError(f"{name} must be {bound}, got {value}", param=name)
    return value


def _range(low, high) -> str:
    if high is None:
        return f">= {low}"
    return f"between {low} and {high}"


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}", param="stop")
    if len(stop) > MAX_STOP_STRINGS or any(s == "" for s in stop):
        raise InvalidRequestError(
            f"stop takes up to {MAX_STOP_STRINGS} non-empty strings, got {list(stop)!r}", param="stop"
        )
    return tuple(stop)


def check_context(prompt_tokens: int, max_tokens: int, context_length: int) -> None:
    """The prompt plus the tokens asked for must fit the model's context."""
    if prompt_tokens + max_tokens > context_length:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}, {prompt_tokens + max_tokens} "
            f"in all, but the model's context is {context_length} tokens; use fewer frames (num_frames), "
            f"shorter messages or a lower max_tokens",
            param="messages",
        )


# ---- layer 1: the KV-cache loop ---------------------------------------------------------------------
@dataclass
class PromptInputs:
    """What the prefill needs: the prompt ids and their embeddings with vision features merged in.

    ``embeddings`` may cover only the prompt from ``offset`` on (a prefix-cache hit holds the KV of the
    first ``offset`` positions); ``anchors`` are positions where a prefill chunk must end (media ends,
    turn starts), so that a later prompt sharing the prefix up to an anchor was cut the same way."""

    input_ids: np.ndarray          # int64 [seq]
    embeddings: Embeddings
    blocks: np.ndarray | None = None   # bool [seq]: tokens of bidirectional vision blocks (never split)
    anchors: tuple[int, ...] = ()
    offset: int = 0


def prompt_embeddings(embed: EmbedSession, decoder: DecoderSession, input_ids) -> Embeddings:
    """The prompt's embeddings, before media rows are merged in. A decoder that looks its tokens up itself
    (``embeds_inside``) reads only the media rows of ``inputs_embeds``, so it gets zeros and no lookup runs."""
    if decoder.embeds_inside:
        rows = int(np.asarray(input_ids).shape[-1])
        width = decoder.inputs["inputs_embeds"].shape[-1]
        return Embeddings(np.zeros((1, rows, width), dtype=decoder.embeds_dtype), None)
    return embed.embed(input_ids)


def prefill_bounds(length: int, chunk: int, blocks: np.ndarray | None = None,
                   anchors: Sequence[int] = ()) -> list[tuple[int, int]]:
    """Cut a prompt into prefill chunks of at most ``chunk`` tokens (0 = no size limit). A run of ``blocks``
    tokens (one frame's soft tokens on a bidirectional-vision model) is never cut: its tokens attend to
    each other, which the graph can only see within one chunk. Every anchor (0 < a < length, outside a
    block) ends a chunk; between anchors chunks are cut greedily from the last anchor, so the cuts up to
    any position depend only on the tokens before it (what makes prefix reuse exact)."""
    inside = (lambda e: bool(blocks[e - 1] and blocks[e])) if blocks is not None else (lambda e: False)  # noqa: E731
    stops = sorted({int(a) for a in anchors if 0 < a < length and not inside(int(a))} | {length})
    bounds, start = [], 0
    for stop in stops:
        bounds += _chunks(start, stop, chunk, inside)
        start = stop
    return bounds


def _chunks(start: int, stop: int, chunk: int, inside) -> list[tuple[int, int]]:
    if chunk <= 0 or stop - start <= chunk:
        return [(start, stop)]
    bounds = []
    while start < stop:
        end = min(start + chunk, stop)
        if end < stop:
            cut = end
            while cut > start and inside(cut):
                cut -= 1
            if cut == start:                  # one block longer than a chunk: take it whole
                cut = end
                while cut < stop and inside(cut):
                    cut += 1
            end = cut
        bounds.append((start, end))
        start = end
    return bounds


def prompt_bounds(decoder: DecoderSession, prompt: PromptInputs, chunk: int | None = None) -> list[tuple[int, int]]:
    """The prefill chunks of ``prompt`` on ``decoder`` (its configured chunk size unless ``chunk``)."""
    chunk = decoder.prefill_chunk if chunk is None else chunk
    return prefill_bounds(int(np.asarray(prompt.input_ids).shape[-1]), chunk, prompt.blocks, prompt.anchors)


def prefill(decoder: DecoderSession, prompt: PromptInputs, chunk: int | None = None, *,
            start: KVCache | None = None, after_chunk=None, room: int = 0):
    """Run the prompt through the decoder in chunks (bounded activation memory; the KV cache makes
    the result the same as one pass): (last position's logits, filled KVCache). With ``start`` (a cache
    holding the first ``start.length`` positions, which must be a chunk boundary), only the rest runs.
    ``after_chunk(end, logits, cache)`` is called after every chunk but the last. In-place KV buffers are
    sized once for the prompt and ``room`` more tokens, instead of doubling (and copying) as chunks arrive."""
    cache = start if start is not None else decoder.empty_cache()
    done = cache.length
    if done != prompt.offset:
        raise ValueError(f"the cache holds {done} positions but the embeddings start at {prompt.offset}")
    ids = np.asarray(prompt.input_ids, dtype=np.int64).reshape(1, -1)
    if done < ids.shape[1]:
        decoder.reserve(cache, ids.shape[1] + max(0, int(room)))
    e = prompt.embeddings
    logits = None
    for a, b in prompt_bounds(decoder, prompt, chunk):
        if b <= done:
            continue
        if a != done:
            raise ValueError(f"a prefill resumed at {done}, which is not a chunk boundary")
        r = slice(a - prompt.offset, b - prompt.offset)
        feeds = {"inputs_embeds": e.inputs_embeds[:, r], "input_ids": ids[:, a:b]}
        if e.per_layer_inputs is not None:
            feeds["per_layer_inputs"] = e.per_layer_inputs[:, r]
        # the last chunk's memory goes back once the first token is out (decode_steps), not before it
        logits = decoder.forward(feeds, cache, b - a, trim=b < ids.shape[1])
        done = b
        if after_chunk is not None and b < ids.shape[1]:
            after_chunk(b, logits, cache)
    return logits, cache


def decode_steps(decoder: DecoderSession, embed: EmbedSession, prompt: PromptInputs, sampler, *,
                 prefilled: tuple[np.ndarray, KVCache] | None = None) -> Iterator[int]:
    """Prefill once (unless ``prefilled`` = (last logits, cache) is given), then one token per step.
    Endless: the consumer decides when to stop (and closes)."""
    logits, cache = prefilled if prefilled is not None else prefill(decoder, prompt)
    on_device = _embed_outputs_match(embed, decoder)
    trimmed = False
    try:
        while True:
            token = sampler(logits)
            yield token
            if not trimmed:         # the prefill's last chunk, off the time to first token
                trim_memory()
                trimmed = True
            logits = _step(decoder, embed, cache, token, on_device)
    finally:
        if not trimmed:
            trim_memory()


def _step(decoder: DecoderSession, embed: EmbedSession, cache: KVCache, token: int, on_device: bool) -> np.ndarray:
    """One decode step: ``token`` in, the next position's logits out."""
    if decoder.embeds_inside:
        return decoder.forward(decoder.step_feeds(token), cache, 1)
    step_ids = np.array([[token]], dtype=np.int64)
    if on_device:
        feeds = embed.embed_bound(step_ids, decoder.device)
    else:
        e = embed.embed(step_ids)
        feeds = {"inputs_embeds": e.inputs_embeds, "per_layer_inputs": e.per_layer_inputs}
    feeds["input_ids"] = step_ids
    return decoder.forward(feeds, cache, 1)


def _embed_outputs_match(embed: EmbedSession, decoder: DecoderSession) -> bool:
    """Embedder outputs can be bound straight into the decoder when names and element types agree."""
    out_types = {arg.name: arg.type for arg in embed.session.get_outputs()}
    return all(
        name in out_types and out_types[name] == decoder.inputs[name].type
        for name in ("inputs_embeds", "per_layer_inputs")
        if name in decoder.inputs
    ) and embed.provider == decoder.provider


# ---- layer 2: text pieces -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextPiece:
    text: str
    token_id: int
    finish_reason: str | None = None     # None | "stop" | "length"


class Detokenizer(Protocol):
    def add(self, token_id: int) -> str: ...   # text made final by this token ("" while bytes are pending)
    def flush(self) -> str: ...                # whatever is still pending at the end


def stream_generate(steps: Iterator[int], detokenizer: Detokenizer, options: GenerationOptions,
                    eos_ids: Iterable[int]) -> Iterator[TextPiece]:
    eos = set(int(i) for i in eos_ids)
    stops = StopMatcher(options.stop)

    def final(text: str) -> str:
        cut = stops.push(text)
        return cut.text if cut.stopped else cut.text + stops.flush()

    try:
        for count, token in enumerate(steps, start=1):
            if token in eos:
                yield TextPiece(final(detokenizer.flush()), token, "stop")
                return
            cut = stops.push(detokenizer.add(token))
            if cut.stopped:
                yield TextPiece(cut.text, token, "stop")
                return
            if count >= options.max_tokens:
                yield TextPiece(cut.text + final(detokenizer.flush()), token, "length")
                return
            yield TextPiece(cut.text, token)
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


# ---- layer 3: joined ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    finish_reason: str | None = None


def generate(steps: Iterator[int], detokenizer: Detokenizer, options: GenerationOptions,
             eos_ids: Iterable[int]) -> GenerationResult:
    text, ids, finish = [], [], None
    for piece in stream_generate(steps, detokenizer, options, eos_ids):
        text.append(piece.text)
        ids.append(piece.token_id)
        finish = piece.finish_reason
    return GenerationResult("".join(text), tuple(ids), finish)
