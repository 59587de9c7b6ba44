"""``Pipeline``: the Python API over one model folder (used by the CLI, the server and the tests).

    from edgevid import Pipeline, GenerationOptions

    p = Pipeline.load("models/gemma-4-e2b")                  # or Pipeline.demo(): the bundled demo model
    print(p.ask("What happens in this video?", videos=["clip.mp4"]))

    messages = [user_message("What happens?", videos=["clip.mp4"])]     # OpenAI-style messages
    print(p.chat(messages, GenerationOptions(max_tokens=64)).text)
    stream = p.stream(messages)          # prompt built and media decoded here
    print(stream.prompt_tokens)
    for piece in stream:                 # vision encoding + prefill on the first step
        print(piece.text, end="")

Media parts (``video_url``/``image_url``, or ``video``/``image`` holding a path, a ``SampledVideo`` or an
RGB array) are resolved through ``edgevid.media`` under the pipeline's ``SourcePolicy`` (or the
``policy=`` given to ``chat``/``stream``), with ``options.num_frames`` or the folder's default frames.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np

from edgevid.admission import AdmissionLimits, check_messages
from edgevid.bundled_demo import demo_dir
from edgevid.errors import InvalidRequestError
from edgevid.model.cache import CacheUse, MediaCache, encoder_identity, features_key
from edgevid.model.generate import (
    GenerationOptions, PromptInputs, TextPiece, check_context, decode_steps, prefill, prompt_bounds, prompt_embeddings,
    stream_generate,
)
from edgevid.model.manifest import ModelFolder
from edgevid.model.media_parts import resolve_media_parts
from edgevid.model.prefix_cache import (
    DEFAULT_MAX_BYTES as PREFIX_CACHE_BYTES, MediaSpan, PrefixCache, PromptSignature, decoder_identity, media_digest,
)
from edgevid.model.prompt import Prompt, render_prompt
from edgevid.model.providers import installed_providers, select_providers
from edgevid.model.sessions import (
    DecoderSession, EmbedSession, SessionConfig, VisionEncoderSession, merge_vision_features,
)
from edgevid.model.tokenizer import IncrementalDetokenizer, Tokenizer
from edgevid.messages import MediaValue, user_message

log = logging.getLogger(__name__)

TURN_STARTS = ("<|turn>", "<start_of_turn>")     # Gemma 4's and Gemma 3's; prefill chunks end before them


@dataclass(frozen=True)
class ChatResult:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None            # "stop" | "length" (None only if stopped by close())
    timings: dict = field(default_factory=dict)
    media: tuple[dict, ...] = ()


class Answer(str):
    """What :meth:`Pipeline.ask` returns: the answer text (a ``str``) that also carries its
    :class:`ChatResult` (``.result``: token ids, prompt tokens, finish reason, timings)."""

    result: ChatResult

    def __new__(cls, result: ChatResult):
        answer = super().__new__(cls, result.text)
        answer.result = result
        return answer

    @property
    def text(self) -> str:
        return str(self)

    def __getattr__(self, name: str):
        if name == "result":
            raise AttributeError(name)
        return getattr(self.result, name)


class Pipeline:
    def __init__(self, folder: ModelFolder, tokenizer: Tokenizer, vision: VisionEncoderSession,
                 embed: EmbedSession, decoder: DecoderSession, *, precision: str = "fp32", policy=None,
                 cache: MediaCache | None = None, prefix_cache: PrefixCache | None = None):
        self.folder = folder
        self.tokenizer = tokenizer
        self.vision = vision
        self.embed = embed
        self.decoder = decoder
        self.precision = precision
        self.policy = policy
        self.cache = cache          # media reuse: frames + vision features by content (None = off)
        self.admission = AdmissionLimits()    # caps checked before any media is fetched or decoded
        self.encoder_id = None if cache is None else encoder_identity(vision.path, precision)
        self.prefix_cache = prefix_cache    # prompt-prefix reuse: prefilled KV by exact prefix (None = off)
        self.turn_start_ids = [i for i in (tokenizer.token_to_id(t) for t in TURN_STARTS) if i is not None]

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: str = "auto", precision: str = "fp32", policy=None,
             *, threads: int | None = None, session_config: SessionConfig | None = None,
             cache_bytes: int = 256 * 2**20, prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
             spinning: bool = False) -> "Pipeline":
        """``cache_bytes``: media cache (frames + vision features by content); ``prefix_cache_bytes``: KV
        prefix cache (chat turns and repeated questions about the same media prefill only their new
        tokens). 0 turns either off. ``spinning``: onnxruntime's intra-op threads busy-wait between ops —
        faster when this process owns the cores (CLI ``run``, batch workers), slower where it shares them
        with other work (a server beside its HTTP threads and media decoding); see docs/performance.md."""
        folder = ModelFolder.load(model_dir)
        config = session_config or SessionConfig(threads=threads, spinning=spinning)
        choice = select_providers(device, installed_providers(), threads=config.threads)
        special = folder.special
        graphs = folder.select_graphs(precision)        # one precision per graph ("q4", "decoder=q4f16,...")
        precision = graphs.label
        # the decoder first: packing its weights is the load's memory peak, best met before the others are resident
        decoder = DecoderSession(graphs.path("decoder"), choice, config)
        vision = VisionEncoderSession(graphs.path("vision_encoder"), choice, config,
                                      pooling_kernel_size=folder.vision.pooling, patch_size=folder.vision.patch_size)
        embed = EmbedSession(graphs.path("embed_tokens"), choice, config,
                             placeholder_ids=_placeholder_ids(folder), pad_id=special.pad)
        if policy is None:
            from edgevid.media import SourcePolicy

            policy = SourcePolicy.permissive()
        log.info("loaded %s (%s) on %s, intra-op spinning %s, prefix cache %s", folder.name, precision,
                 decoder.provider, "on" if config.spinning else "off",
                 f"{prefix_cache_bytes // 2**20} MiB" if prefix_cache_bytes else "off")
        prefix = None
        if prefix_cache_bytes:
            prefix = PrefixCache(prefix_cache_bytes, decoder_identity(decoder.path, precision))
        return cls(folder, Tokenizer.from_folder(folder), vision, embed, decoder, precision=precision, policy=policy,
                   cache=MediaCache(cache_bytes) if cache_bytes else None, prefix_cache=prefix)

    @classmethod
    def demo(cls, device: str = "auto", precision: str = "fp32", policy=None, **kwargs) -> "Pipeline":
        """The demo model bundled with edgevid (``edgevid/demo``; its clip is ``edgevid.DEMO_CLIP``)."""
        return cls.load(demo_dir(), device=device, precision=precision, policy=policy, **kwargs)

    # ---- facts ---------------------------------------------------------------------------------------
    @property
    def provider(self) -> str:
        return self.decoder.provider

    @property
    def model_name(self) -> str:
        return self.folder.name

    @property
    def default_num_frames(self) -> int:
        return self.folder.vision.num_frames

    @property
    def context_length(self) -> int:
        return self.folder.context_length

    # ---- requests ------------------------------------------------------------------------------------
    def ask(self, question: str, *, videos: Sequence[MediaValue] = (), images: Sequence[MediaValue] = (),
            options: GenerationOptions | None = None, policy=None, **generation) -> Answer:
        """Answer one question about ``videos`` / ``images`` (paths, URLs, ``SampledVideo`` s or RGB arrays).

        ``generation`` are :class:`GenerationOptions` fields (``max_tokens=64``, ``temperature=0.7``, ...),
        applied over ``options``. Returns the answer text, with the :class:`ChatResult` as ``.result``."""
        if isinstance(videos, (str, os.PathLike)) or isinstance(images, (str, os.PathLike)):
            raise InvalidRequestError("videos= and images= take a list of sources", param="videos")
        if generation:
            base = options or GenerationOptions()
            try:
                options = dataclasses.replace(base, **generation)
            except TypeError as exc:
                raise InvalidRequestError(f"unknown generation option: {exc}", param="options") from None
        result = self.chat([user_message(question, videos=videos, images=images)], options, policy=policy)
        return Answer(result)

    def stream(self, messages: Sequence[Mapping], options: GenerationOptions | None = None, *,
               policy=None) -> "ChatStream":
        return ChatStream(self, messages, options or GenerationOptions(), policy or self.policy)

    def chat(self, messages: Sequence[Mapping], options: GenerationOptions | None = None, *,
             policy=None) -> ChatResult:
        stream = self.stream(messages, options, policy=policy)
        try:
            for _ in stream:
                pass
        finally:
            stream.close()
        return stream.result()

    def resolve_media(self, messages: Sequence[Mapping], options: GenerationOptions | None = None, policy=None,
                      use: CacheUse | None = None, *, gate=None) -> list:
        """The messages with every media part fetched, sampled and preprocessed (through the media cache
        when on): the one media path of every surface. The server calls it in the request's own thread, so
        a slow download never holds the model worker; ``stream`` calls it for anything not yet resolved."""
        frames = (options.num_frames if options else None) or self.default_num_frames
        check_messages(messages, self.admission, frames)      # caps first: nothing fetched or decoded yet
        return resolve_media_parts(messages, self.folder, num_frames=frames, policy=policy or self.policy,
                                   cache=self.cache, use=use, gate=gate)

    def build_prompt(self, messages: Sequence[Mapping], options: GenerationOptions, policy=None,
                     use: CacheUse | None = None) -> Prompt:
        """Resolve media (see :meth:`resolve_media`), render the chat template, tokenize."""
        return render_prompt(self.resolve_media(messages, options, policy, use), self.folder, self.tokenizer)

    def prompt_inputs(self, prompt: Prompt, use: CacheUse | None = None, offset: int = 0) -> PromptInputs:
        """Vision-encode the prompt's media, embed its ids and merge the features in; from ``offset`` on
        only (a prefix-cache hit holds the rest: media wholly before it are not encoded at all)."""
        ids = prompt.input_ids
        embeddings = prompt_embeddings(self.embed, self.decoder, ids[offset:])
        where, features = [], []
        for item, positions in zip(prompt.media, prompt.media_positions()):
            if positions.size and positions[-1] >= offset:
                features.append(self._encode(item.vision, use)[positions >= offset])
                where.append(positions[positions >= offset] - offset)
        if features:
            merge_vision_features(embeddings.inputs_embeds, where, features)
        # bidirectional vision: blocks keep each frame's tokens in one chunk
        return PromptInputs(ids, embeddings, self._blocks(ids), self.prefill_anchors(prompt), offset)

    def prefill_anchors(self, prompt: Prompt) -> tuple[int, ...]:
        """Where a prefill chunk must end: before every turn start and after every media item (its last
        placeholder and closing ``<eoi>``), the places a later prompt (the chat's next turn, another
        question about the same video) may start to differ."""
        ids = prompt.input_ids
        anchors = set(np.flatnonzero(np.isin(ids, self.turn_start_ids)).tolist()) if self.turn_start_ids else set()
        eoi = self.folder.special.eoi
        for positions in prompt.media_positions():
            if positions.size:
                end = int(positions[-1]) + 1
                while end < len(ids) and ids[end] == eoi:
                    end += 1
                anchors.add(end)
        return tuple(sorted(anchors))

    def prompt_signature(self, prompt: Prompt) -> PromptSignature:
        """The prefix-cache key of a prompt: its ids and each media item's content digest."""
        spans = tuple(MediaSpan(int(p[0]), int(p[-1]) + 1, media_digest(m.vision))
                      for m, p in zip(prompt.media, prompt.media_positions()) if p.size)
        return PromptSignature(prompt.input_ids, spans)

    def prefill_prompt(self, prompt: Prompt, use: CacheUse | None = None, timings: dict | None = None,
                       room: int = 0):
        """Prefill ``prompt`` through the prefix cache when it is on: (last logits, KVCache). The logits
        are the same, bit for bit, with the cache and without it. ``timings`` gets ``vision_s`` (vision
        encoding + embedding) and ``prefix_cached_tokens`` (prompt tokens not prefilled again). ``room``:
        the tokens the answer may add, reserved in the KV buffers with the prompt's."""
        timings = {} if timings is None else timings
        timings["prefix_cached_tokens"] = 0
        if self.prefix_cache is None:
            t0 = time.perf_counter()
            inputs = self.prompt_inputs(prompt, use)
            timings["vision_s"] = time.perf_counter() - t0
            return prefill(self.decoder, inputs, room=room)
        signature = self.prompt_signature(prompt)
        probe = PromptInputs(prompt.input_ids, None, self._blocks(prompt.input_ids), self.prefill_anchors(prompt))
        bounds = prompt_bounds(self.decoder, probe)
        hit = self.prefix_cache.lookup(signature, bounds)
        timings["prefix_cached_tokens"] = hit.length if hit is not None else 0
        timings["vision_s"] = 0.0
        if hit is not None and hit.logits is not None:
            return hit.logits, hit.cache(self.decoder.device)
        start = hit.cache(self.decoder.device) if hit is not None else None
        t0 = time.perf_counter()
        inputs = self.prompt_inputs(prompt, use, offset=hit.length if hit is not None else 0)
        timings["vision_s"] = time.perf_counter() - t0
        anchors = set(probe.anchors)

        def keep_anchor(end, logits, cache):
            # a ring cache cannot be cut back to an earlier boundary later: keep each anchor's own entry
            if end in anchors:
                self.prefix_cache.store(signature.prefix(end), [b for b in bounds if b[1] <= end], cache, logits)

        logits, cache = prefill(self.decoder, inputs, start=start, room=room,
                                after_chunk=keep_anchor if self.decoder.ring_capacity else None)
        self.prefix_cache.store(signature, bounds, cache, logits)
        return logits, cache

    def _blocks(self, ids: np.ndarray) -> np.ndarray | None:
        return np.isin(ids, _placeholder_ids(self.folder)) if self.decoder.vision_blocks else None

    def _encode(self, vision, use: CacheUse | None = None) -> np.ndarray:
        """Vision features of one media item, from the media cache when its encoder input was seen."""
        if self.cache is None:
            return self.vision.encode(vision.pixel_values, vision.position_ids)
        key = features_key(media_digest(vision), encoder=self.encoder_id)
        features, hit = self.cache.features(key, lambda: self.vision.encode(vision.pixel_values, vision.position_ids))
        if hit and use is not None:
            use.features_cached += 1
            use.cached_tokens += vision.total_soft_tokens
        return features


class ChatStream:
    """One request. ``prompt_tokens`` (and ``media``) are known on construction; iterating runs the
    vision encoder and the prefill, then yields one :class:`TextPiece` per generated token, the last
    with ``finish_reason``. ``close()`` stops generation early."""

    def __init__(self, pipeline: Pipeline, messages, options: GenerationOptions, policy):
        if not isinstance(options, GenerationOptions):
            raise InvalidRequestError("options must be a GenerationOptions", param="options")
        self.pipeline = pipeline
        self.options = options
        self._start = time.perf_counter()
        self.cache_use = CacheUse()
        self.prompt = pipeline.build_prompt(messages, options, policy, self.cache_use)
        self.prompt_tokens = self.prompt.num_tokens
        check_context(self.prompt_tokens, options.max_tokens, pipeline.context_length)
        self.media = tuple(
            {"kind": m.kind, "source": m.source, "frames": m.vision.num_frames, "soft_tokens": m.vision.total_soft_tokens}
            for m in self.prompt.media
        )
        self.timings: dict[str, float | None] = {"media_s": time.perf_counter() - self._start}
        self.token_ids: list[int] = []
        self._text: list[str] = []
        self.finish_reason: str | None = None
        self._pieces: Iterator[TextPiece] | None = None
        self._closed = False

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    def __iter__(self) -> Iterator[TextPiece]:
        return self

    def __next__(self) -> TextPiece:
        if self._closed:
            raise StopIteration
        if self._pieces is None:
            self._pieces = self._generate()
        try:
            piece = next(self._pieces)
        except StopIteration:
            self._finish()
            raise
        self.token_ids.append(piece.token_id)
        self._text.append(piece.text)
        if piece.finish_reason is not None:
            self.finish_reason = piece.finish_reason
        return piece

    def _generate(self) -> Iterator[TextPiece]:
        p = self.pipeline
        t1 = time.perf_counter()
        logits, cache = p.prefill_prompt(self.prompt, self.cache_use, self.timings, room=self.options.max_tokens)
        steps = decode_steps(p.decoder, p.embed, None, self.options.sampler(), prefilled=(logits, cache))
        detokenizer = IncrementalDetokenizer(p.tokenizer)
        first = None
        for piece in stream_generate(steps, detokenizer, self.options, p.folder.eos_token_ids):
            if first is None:
                first = time.perf_counter()
                self.timings["prefill_s"] = first - t1     # vision encoding + prefill + first token
                self.timings["ttft_s"] = first - self._start
            yield piece

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pieces is not None:
            self._pieces.close()
        end = time.perf_counter()
        first_at = self._start + (self.timings.get("ttft_s") or 0.0)
        decode = end - first_at if self.timings.get("ttft_s") is not None else 0.0
        self.timings["decode_s"] = decode
        self.timings["tokens_per_s"] = (len(self.token_ids) - 1) / decode if decode > 0 and len(self.token_ids) > 1 else None
        self.timings["total_s"] = end - self._start
        self.timings.update(self.cache_use.as_timings())

    def close(self) -> None:
        """Stop generation (a client went away); safe to call twice or before iterating."""
        self._finish()

    @property
    def text(self) -> str:
        return "".join(self._text)

    def result(self) -> ChatResult:
        return ChatResult(self.text, tuple(self.token_ids), self.prompt_tokens, self.completion_tokens,
                          self.finish_reason, {k: v for k, v in self.timings.items()}, self.media)


# ---- media --------------------------------------------------------------------------------------------
def _placeholder_ids(folder: ModelFolder) -> list[int]:
    ids = [folder.special.image, folder.special.video]
    audio = folder.config.get("audio_token_id")
    if isinstance(audio, int):
        ids.append(audio)
    return ids
