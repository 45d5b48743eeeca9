"""The continuous cache (Grave, Joulin & Usunier, ICLR 2017): the model's own recent states as a
memory of which word followed them.

    p(w | h_t) = (1 - λ) p_model(w | h_t) + λ p_cache(w | h_t)
    p_cache(w | h_t) ∝ Σ_i exp(θ h_t·h_i) [w_{i+1} = w]     over the memory's pairs (h_i, w_{i+1})

A word the text has used after a state like the present one gets more probability: names,
numbers and topic words that the model alone, trained on other texts, rates low. Nothing is
trained; the memory's size N, θ and λ are tuned on a validation text
(app.evaluation.continuous_cache) and stored with the model (`continuous_cache.json`).

Pure functions of their arrays, float32 out, no I/O: the server calls them once per request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT = np.float32


@dataclass(frozen=True)
class CacheSettings:
    """How a model's continuous cache is used; checked when made."""

    size: int  # N: the (state, next word) pairs the memory holds, the most recent ones
    theta: float  # θ: how sharply the cache prefers the states closest to the present one
    weight: float  # λ: the cache's share of the mixture; the model keeps 1 - λ
    # The memory's pairs at which the cache gets half its share: λ n / (n + ramp) for n pairs.
    # A short text's few pairs are a poor guide (the cache would mostly repeat its last words);
    # the paper's stream evaluation never sees one.
    ramp: float = 0.0

    def __post_init__(self) -> None:
        # bool is an int to Python; True is not a memory size.
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(
                f"continuous cache size must be a whole number >= 1, not {self.size!r}"
            )
        theta, weight = _number("theta", self.theta), _number("weight", self.weight)
        ramp = _number("ramp", self.ramp)
        if not ramp >= 0:
            raise ValueError(f"continuous cache ramp must be 0 or more, not {self.ramp!r}")
        object.__setattr__(self, "ramp", ramp)
        if not theta > 0:
            raise ValueError(f"continuous cache theta must be above 0, not {self.theta!r}")
        if not 0 <= weight < 1:
            raise ValueError(f"continuous cache weight must be in [0, 1), not {self.weight!r}")
        # An int theta or weight from JSON is stored as the float it means.
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "weight", weight)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "theta": self.theta, "weight": self.weight, "ramp": self.ramp}

    def weight_at(self, pairs: Any) -> Any:
        """λ for a memory of `pairs` pairs (a number or an array of them)."""
        return self.weight * pairs / (pairs + self.ramp) if self.ramp else self.weight + 0 * pairs

    @classmethod
    def from_dict(cls, payload: Any) -> CacheSettings:
        """The settings in a mapping with the keys `size`, `theta`, `weight` and optionally
        `ramp` (others, such as what they were tuned on, are for people and ignored);
        ValueError if they are unusable."""
        if not isinstance(payload, Mapping):
            raise ValueError(f"continuous cache settings must be an object, not {payload!r:.80}")
        missing = [key for key in ("size", "theta", "weight") if key not in payload]
        if missing:
            raise ValueError(f"continuous cache settings lack {', '.join(missing)}")
        return cls(payload["size"], payload["theta"], payload["weight"], payload.get("ramp", 0.0))


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"continuous cache {name} must be a finite number, not {value!r}")
    return float(value)


def cache_probabilities(
    queries: np.ndarray,
    memory_states: np.ndarray,
    memory_next_ids: np.ndarray,
    theta: float,
    vocab_size: int,
) -> np.ndarray:
    """p_cache for each query state over the vocabulary: (batch, hidden) -> (batch, vocab).

    `memory_states` (n, hidden) are h_i, `memory_next_ids` (n,) the ids w_{i+1} that followed
    them. Each row is a softmax over the memory's scores θ h_t·h_i, summed by next id, float32.
    An empty memory gives rows of zeros: `mix` then keeps the model's probabilities.
    """
    batch, n = len(queries), len(memory_next_ids)
    if len(memory_states) != n:
        raise ValueError(f"{len(memory_states)} memory states but {n} next ids")
    if n == 0:
        return np.zeros((batch, vocab_size), dtype=FLOAT)
    scores = queries.astype(FLOAT, copy=False) @ memory_states.astype(FLOAT, copy=False).T
    scores *= FLOAT(theta)  # (batch, n)
    # The largest score subtracted first: exp never overflows, the largest term is exp(0) = 1.
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    # One bincount for the whole batch (np.add.at is many times slower): row r's pair i goes
    # to the flat cell r * vocab + w_{i+1}.
    ids = np.asarray(memory_next_ids, dtype=np.intp)
    cells = (np.arange(batch, dtype=np.intp)[:, None] * vocab_size + ids).ravel()  # (batch * n,)
    summed = np.bincount(cells, weights=scores.ravel(), minlength=batch * vocab_size)
    return summed.reshape(batch, vocab_size).astype(FLOAT)


def mix(
    model_probabilities: np.ndarray,
    cache_probabilities: np.ndarray,
    weight: float | np.ndarray,
    has_memory: bool | np.ndarray,
) -> np.ndarray:
    """(1 - λ) p_model + λ p_cache for the rows with a memory, p_model alone for the others
    (the first word of a text has nothing before it): (batch, vocab) twice -> (batch, vocab).

    `has_memory` is one bool for the batch or one per row (batch,); `weight` one λ, or one
    per row (batch, 1).
    """
    mixed = (1 - weight) * model_probabilities + weight * cache_probabilities
    rows = np.broadcast_to(np.asarray(has_memory, dtype=bool), (len(model_probabilities),))
    if not rows.all():
        mixed[~rows] = model_probabilities[~rows]
    return mixed.astype(FLOAT, copy=False)
