"""The parity gate: the exported graphs, run with onnxruntime, against the PyTorch model.

``OnnxGemma`` is a deliberately small onnxruntime driver over the three graphs of a folder (the export
side's own; the runtime package has the real one). ``check_parity`` runs the same synthetic video
prompt (``ParityPrompt``: real vision features through the vision graph, longer than the sliding window)
through both, compares the prefill logits and then greedy-decodes ``steps`` tokens on each side (KV-cache
decode through the ONNX decoder vs transformers' forward with its own cache).

The logits limit is the larger of ``tolerance`` (1e-4) and ``NOISE_FACTOR`` times PyTorch's disagreement
with itself: :func:`torch_noise` runs the reference prefill a second time with
the other attention implementation (sdpa <-> eager), which changes only the order of fp32 operations. On a
tiny model that spread is 1e-6 to 1.5e-5 (by CPU) and the limit stays at or near 1e-4; on the 258M random E2B-shaped bench model it is
1.0e-3 (fp32 rounding grows with width and depth) and the exported graphs differ by 4.2e-3 with every token
identical, which a fixed 1e-4 refused.
Greedy decoding is compared step by step: the reference decodes freely, the ONNX side is fed the
reference's tokens (teacher forcing, so one difference cannot derail every later step) and its logits at
every step must also be within the limit. Its token must equal the reference's at every step the reference
*decides*: where the reference's own top-1/top-2 margin exceeds the limit. A step whose margin is inside the
limit is a tie PyTorch itself does not settle (its sdpa and eager forwards differ there too, measured at E2B
size in docs/real-size.md); it is reported, not failed. On the tests' models the limit is 1e-4 and every
step is decided, so the tokens must be identical throughout.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .decoder import DecoderLayout
from .parity_prompt import ParityPrompt

FP32_TOLERANCE = 1e-4
NOISE_FACTOR = 10.0     # measured ONNX diff / PyTorch's own spread: 2.1 (hidden 512), 4.2 (258M bench model)


@dataclass(frozen=True)
class ParityReport:
    prefill_max_abs_diff: float
    vision_max_abs_diff: float
    greedy_steps: int
    greedy_match: bool
    first_mismatch: int | None
    prompt_tokens: int
    tolerance: float
    torch_noise: float = 0.0        # PyTorch's own prefill spread across attention implementations
    decode_max_abs_diff: float = 0.0    # largest step-logits difference while decoding (teacher-forced)
    ties: tuple = ()                # steps whose reference margin is within the limit (not decided)

    @property
    def limit(self) -> float:
        return max(self.tolerance, NOISE_FACTOR * self.torch_noise)

    @property
    def decided_match(self) -> bool:
        """Every step the reference decides (margin beyond the limit) has the same token."""
        return self.first_mismatch is None or all(step in self.ties for step in self.mismatches)

    mismatches: tuple = ()          # steps whose tokens differ (teacher-forced)

    @property
    def passed(self) -> bool:
        return (self.decided_match and self.prefill_max_abs_diff <= self.limit
                and self.decode_max_abs_diff <= self.limit)

    def as_dict(self) -> dict:
        return asdict(self) | {"limit": self.limit, "passed": self.passed, "ties": list(self.ties),
                               "mismatches": list(self.mismatches)}


@dataclass(frozen=True)
class Decoded:
    prefill_logits: np.ndarray      # [seq, vocab] float32
    tokens: list                    # greedy continuation
    features: np.ndarray            # vision features [soft_tokens, hidden]
    noise: float = 0.0              # reference only: see torch_noise
    step_logits: np.ndarray | None = None   # [steps, vocab]: the logits each token was chosen from


def _session(path: Path, mapped: bool = False):
    """``mapped``: no weight pre-packing, so onnxruntime computes from the mapped external data in place
    (the gate's memory then stays bounded with ``mapped_pages.TrimMappedPages``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if mapped:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxGemma:
    """Runs a folder's vision / embed / decoder graphs with onnxruntime (float32 or float16 I/O)."""

    def __init__(self, folder: Path, files: dict, layout: DecoderLayout, video_token_id: int, mapped: bool = False):
        folder = Path(folder)
        self.vision = _session(folder / files["vision_encoder"], mapped)
        self.embed = _session(folder / files["embed_tokens"], mapped)
        self.decoder = _session(folder / files["decoder"], mapped)
        self.layout = layout
        self.video_token_id = video_token_id
        self.inputs = {i.name: i for i in self.decoder.get_inputs()}

    @staticmethod
    def _run(session, feeds: dict) -> list:
        cast = {}
        for meta in session.get_inputs():
            if meta.name not in feeds:
                continue
            value = feeds[meta.name]
            if meta.type == "tensor(float16)":
                value = value.astype(np.float16)
            elif meta.type == "tensor(float)":
                value = value.astype(np.float32)
            cast[meta.name] = value
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in session.run(None, cast)]

    def encode_vision(self, prompt: ParityPrompt) -> np.ndarray:
        """[soft_tokens, hidden]: the graph's rows, each frame's real ones. Graphs give [frames x n, hidden]
        (n = the most soft tokens of any frame), [frames, slots, hidden] (older exports) or only real rows."""
        positions = prompt.pixel_position_ids
        features = self._run(self.vision, {"pixel_values": prompt.pixel_values, "pixel_position_ids": positions})[0]
        real = (positions != -1).all(axis=-1).sum(axis=-1)
        frames = len(real)
        if features.ndim == 2:
            if features.shape[0] % frames or features.shape[0] == 0:
                return features
            features = features.reshape(frames, -1, features.shape[-1])
            pool_area = int(real.max()) // features.shape[1]          # rows per frame = the most real tokens
        else:
            pool_area = positions.shape[1] // features.shape[1]       # rows per frame = every pooled slot
        counts = real // pool_area
        return np.concatenate([frame[:n] for frame, n in zip(features, counts)], axis=0)

    def _embed(self, input_ids: np.ndarray):
        out = self._run(self.embed, {"input_ids": input_ids})
        return out[0], (out[1] if len(out) > 1 else None)

    def _decode(self, embeds, per_layer, input_ids, past_len, cache, keep: int = 0):
        batch, seq = input_ids.shape
        feeds = {"inputs_embeds": embeds,
                 "attention_mask": np.ones((batch, past_len + seq), dtype=np.int64),
                 "position_ids": np.arange(past_len, past_len + seq, dtype=np.int64)[None].repeat(batch, 0)}
        if per_layer is not None:
            feeds["per_layer_inputs"] = per_layer
        if self.layout.bidirectional_vision:
            feeds["input_ids"] = input_ids
        if "num_logits_to_keep" in self.inputs:
            feeds["num_logits_to_keep"] = np.asarray(keep, dtype=np.int64)
        feeds.update(cache)
        outputs = self._run(self.decoder, feeds)
        names = [o.name for o in self.decoder.get_outputs()]
        present = dict(zip(names[1:], outputs[1:]))
        next_cache = {name.replace("present.", "past_key_values."): value for name, value in present.items()}
        return outputs[0], next_cache

    def _empty_cache(self, batch: int) -> dict:
        cache = {}
        for name, meta in self.inputs.items():
            if name.startswith("past_key_values."):
                _, kv_heads, _, head_dim = meta.shape
                dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
                cache[name] = np.zeros((batch, kv_heads, 0, head_dim), dtype=dtype)
        return cache

    def greedy(self, prompt: ParityPrompt, steps: int, forced: list | None = None) -> Decoded:
        """Greedy decoding over the graphs; with ``forced`` (the reference's tokens) each step is fed the
        forced token instead of its own choice."""
        features = self.encode_vision(prompt)
        ids = prompt.input_ids
        embeds, per_layer = self._embed(ids)
        embeds = embeds.copy()
        embeds[ids == self.video_token_id] = features
        logits, cache = self._decode(embeds, per_layer, ids, 0, self._empty_cache(ids.shape[0]))
        prefill = logits[0]
        rows = [prefill[-1]]
        tokens = [int(prefill[-1].argmax())]
        length = ids.shape[1]
        for k in range(steps - 1):
            fed = forced[k] if forced is not None else tokens[-1]      # teacher forcing: the reference's token
            step_ids = np.asarray([[fed]], dtype=np.int64)
            embeds, per_layer = self._embed(step_ids)
            logits, cache = self._decode(embeds, per_layer, step_ids, length, cache, keep=1)
            length += 1
            rows.append(logits[0, -1])
            tokens.append(int(logits[0, -1].argmax()))
        return Decoded(prefill, tokens, features, step_logits=np.stack(rows).astype(np.float32))


def with_cache(model, cache) -> dict:
    """The keyword that hands a KV cache back to ``model.forward``: ``cache`` from transformers 5.24 on
    (``past_key_values`` warns there and goes in 5.40), ``past_key_values`` before."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def cache_of(output):
    """The KV cache a forward returned (``output.cache`` from 5.24 on, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def torch_greedy(model, prompt: ParityPrompt, steps: int, vision: bool = True) -> Decoded:
    """transformers' own forward: prefill with the video, then one token at a time on its cache."""
    import torch

    with torch.no_grad():
        ids = torch.from_numpy(prompt.input_ids)
        pixel_values = torch.from_numpy(prompt.pixel_values)
        positions = torch.from_numpy(prompt.pixel_position_ids)
        out = model(input_ids=ids, pixel_values_videos=pixel_values, video_position_ids=positions,
                    num_frames_per_video=torch.tensor([prompt.num_frames]),
                    mm_token_type_ids=torch.from_numpy(prompt.mm_token_type_ids),
                    attention_mask=torch.ones_like(ids), use_cache=True)
        prefill = out.logits[0].float().numpy()
        cache = cache_of(out)
        rows = [prefill[-1]]
        tokens = [int(prefill[-1].argmax())]
        length = ids.shape[1]
        for _ in range(steps - 1):
            step = torch.tensor([[tokens[-1]]])
            out = model(input_ids=step, **with_cache(model, cache), use_cache=True,
                        attention_mask=torch.ones(1, length + 1, dtype=torch.long),
                        position_ids=torch.tensor([[length]]))
            cache = cache_of(out)
            length += 1
            rows.append(out.logits[0, -1].float().numpy())
            tokens.append(int(out.logits[0, -1].argmax()))
        features = np.zeros((0,), np.float32)
        if vision:
            features = model.model.get_video_features(
                pixel_values, positions, num_frames_per_video=torch.tensor([prompt.num_frames])).pooler_output
            features = torch.cat(features, dim=0).float().numpy()
    return Decoded(prefill, tokens, features, step_logits=np.stack(rows).astype(np.float32))


def torch_noise(model, prompt: ParityPrompt, reference: Decoded) -> float:
    """Max |diff| between ``reference``'s prefill logits and the same prefill with the other attention
    implementation (sdpa <-> eager): how far PyTorch's fp32 result moves when only the order of operations
    changes. 0.0 when the model cannot switch."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    other = "eager" if current != "eager" else "sdpa"
    try:
        model.set_attn_implementation(other)
    except (ValueError, ImportError, AttributeError):
        return 0.0
    try:
        again = torch_greedy(model, prompt, 1, vision=False)
    finally:
        model.set_attn_implementation(current)
    return float(np.abs(reference.prefill_logits - again.prefill_logits).max())


def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row: how firmly a greedy step was decided."""
    top = np.partition(logits, -2, axis=-1)
    return top[..., -1] - top[..., -2]


def compare(reference: Decoded, candidate: Decoded, tolerance: float = FP32_TOLERANCE) -> ParityReport:
    """``candidate`` decoded teacher-forced on ``reference.tokens`` (``OnnxGemma.greedy(forced=...)``)."""
    mismatches = tuple(i for i, (a, b) in enumerate(zip(reference.tokens, candidate.tokens)) if a != b)
    vision = (float(np.abs(reference.features - candidate.features).max())
              if reference.features.shape == candidate.features.shape else float("inf"))
    limit = max(tolerance, NOISE_FACTOR * reference.noise)
    ties, decode = (), 0.0
    if reference.step_logits is not None and candidate.step_logits is not None:
        ties = tuple(int(i) for i in np.flatnonzero(margins(reference.step_logits) <= limit))
        if reference.step_logits.shape == candidate.step_logits.shape:
            decode = float(np.abs(reference.step_logits - candidate.step_logits).max())
        else:
            decode = float("inf")
    return ParityReport(
        prefill_max_abs_diff=float(np.abs(reference.prefill_logits - candidate.prefill_logits).max()),
        vision_max_abs_diff=vision,
        greedy_steps=len(reference.tokens),
        greedy_match=not mismatches and len(reference.tokens) == len(candidate.tokens),
        first_mismatch=mismatches[0] if mismatches else None,
        prompt_tokens=int(reference.prefill_logits.shape[0]),
        tolerance=tolerance,
        torch_noise=reference.noise,
        decode_max_abs_diff=decode,
        ties=ties,
        mismatches=mismatches,
    )


def top1_agreement(reference: Decoded, candidate: Decoded) -> float:
    """Share of the parity prompt's positions whose next-token argmax agrees (teacher-forced, so one
    early difference does not decide the rest)."""
    return float((reference.prefill_logits.argmax(-1) == candidate.prefill_logits.argmax(-1)).mean())
