"""Token samplers: small composable functions over one step's logits ``[vocab]``.

``make_sampler(temperature, top_k, top_p, seed)`` returns ``logits -> token id``. Temperature 0 is
greedy (``argmax``, first index on ties, as torch does). Otherwise logits are scaled by 1/temperature,
cut to the top-k, then to the smallest nucleus whose probability reaches top-p, and one token is drawn
from a ``numpy.random.Generator`` seeded with ``seed`` — the same seed gives the same tokens.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Sampler = Callable[[np.ndarray], int]


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def scale_by_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return logits.astype(np.float64) / temperature


def keep_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def keep_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the most probable tokens whose cumulative probability first reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    before = np.cumsum(probs) - probs          # mass of the tokens ranked above each one
    cut = order[before >= p]
    out = logits.copy()
    out[cut] = -np.inf
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    finite = logits - np.max(logits)
    e = np.exp(finite)
    return e / e.sum()


def draw(logits: np.ndarray, rng: np.random.Generator) -> int:
    cumulative = np.cumsum(softmax(logits))
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(index, logits.size - 1)


def make_sampler(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Sampler:
    if temperature <= 0.0:
        return greedy
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray) -> int:
        scaled = keep_top_p(keep_top_k(scale_by_temperature(logits, temperature), top_k), top_p)
        return draw(scaled, rng)

    return sample
