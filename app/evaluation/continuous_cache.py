"""Perplexity with the continuous cache (app.inference.distribution) over a whole text, and the
grid search that tunes its settings on a validation text.

The text is one stream, read as app.training.evaluate reads it: ids = tokenizer.encode_lines(lines),
the state starts at zeros and is carried across lines, ids[0] is context only and every later id
is a target, <eos> and <unk> included. With T = len(ids) - 1 targets:

    h_t     (T, hidden)   the state after reading ids[t], t = 0 .. T-1
    target  (T,)          ids[t + 1], what h_t predicts, and the next word w_{t+1} of pair t

The memory at position t holds the pairs (h_i, target[i]) for the last N positions i < t, across
line boundaries, as the paper carries it; position 0 has none and is scored by the model alone.

`evaluate` is exact: each row's full distribution is mixed by `cache_probabilities` and `mix`,
the paper's sums over the whole vocabulary (the server computes the same sums kept sparse, over
the words a memory holds: app.inference.distribution; tests/unit/test_cache_in_predictions.py
holds its answers to the formula computed from scratch).
`tune` only needs each target's cache probability: a block of rows is scored against every
memory position any of them may read in one product, shared by all the sizes, θ and λ tried.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from app.inference import engine
from app.inference.distribution import CacheSettings
from app.inference.engine import RnnWeights

# The grid the shipped model's settings were chosen from (README, "Continuous cache"): finer
# where PTB's validation split put its best.
DEFAULT_SIZES = (200, 300, 400, 500, 600, 700, 800, 1000, 1500, 2000, 3000, 5000)
DEFAULT_THETAS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.4, 0.5)
DEFAULT_WEIGHTS = (0.05, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.35)
# Rows scored together: a block's products stay a few MB whatever the memory size.
BLOCK = 256


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
        return np.zeros((batch, vocab_size), dtype=engine.FLOAT)
    float32 = engine.FLOAT
    scores = queries.astype(float32, copy=False) @ memory_states.astype(float32, copy=False).T
    scores *= engine.FLOAT(theta)  # (batch, n)
    # The largest score subtracted first: exp never overflows, the largest term is exp(0) = 1.
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    # One bincount for the whole batch (np.add.at is many times slower): row r's pair i goes
    # to the flat cell r * vocab + w_{i+1}.
    ids = np.asarray(memory_next_ids, dtype=np.intp)
    cells = (np.arange(batch, dtype=np.intp)[:, None] * vocab_size + ids).ravel()  # (batch * n,)
    summed = np.bincount(cells, weights=scores.ravel(), minlength=batch * vocab_size)
    return summed.reshape(batch, vocab_size).astype(engine.FLOAT)


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
    return mixed.astype(engine.FLOAT, copy=False)


@dataclass(frozen=True)
class Stream:
    """A text read once by the model: everything the cache's evaluations share."""

    states: np.ndarray  # (T, hidden) float32: h_t, the state after reading ids[t]
    targets: np.ndarray  # (T,) intp: ids[t + 1]
    model_probabilities: np.ndarray  # (T,) float64: p_model(targets[t] | h_t)

    @property
    def tokens(self) -> int:
        return len(self.targets)


class Evaluation(NamedTuple):
    tokens: int
    perplexity: float  # with the cache
    perplexity_without: float  # the model alone


class GridPoint(NamedTuple):
    size: int
    theta: float
    weight: float
    perplexity: float


class Tuning(NamedTuple):
    best: CacheSettings
    best_perplexity: float
    perplexity_without: float
    table: tuple[GridPoint, ...]  # every setting tried, best first


def read_stream(weights: RnnWeights, ids: np.ndarray) -> Stream:
    """The states and the model's target probabilities of a whole text, in batch-1 steps."""
    if len(ids) < 2:
        raise ValueError("evaluation text must hold at least two tokens")
    count = len(ids) - 1
    inputs = weights.input_table[np.asarray(ids[:-1], dtype=np.intp)]  # (T, hidden)
    states = np.empty((count, weights.hidden_units), dtype=engine.FLOAT)
    previous = np.zeros((1, weights.hidden_units), dtype=engine.FLOAT)
    for t in range(count):
        engine.rnn_step(weights, inputs[t : t + 1], previous, out=states[t : t + 1])
        previous = states[t : t + 1]
    targets = np.asarray(ids[1:], dtype=np.intp)
    model = np.empty(count, dtype=np.float64)
    for start in range(0, count, BLOCK):
        stop = min(start + BLOCK, count)
        probabilities = _model_probabilities(weights, states[start:stop])  # (block, vocab)
        model[start:stop] = probabilities[np.arange(stop - start), targets[start:stop]]
    return Stream(states, targets, model)


def _model_probabilities(weights: RnnWeights, states: np.ndarray) -> np.ndarray:
    return engine.softmax(engine.logits(weights, states), in_place=True)


def perplexity(probabilities: np.ndarray) -> float:
    """exp of the mean cross-entropy of the targets' probabilities (T,)."""
    return math.exp(-float(np.mean(np.log(probabilities, dtype=np.float64))))


def evaluate(weights: RnnWeights, stream: Stream, settings: CacheSettings) -> Evaluation:
    """Exact perplexity with the cache: every row's whole distribution is mixed by
    `cache_probabilities` and `mix`, one call per row against that row's memory, as served."""
    states, targets, vocab = stream.states, stream.targets, weights.vocab_size
    mixed = np.empty(stream.tokens, dtype=np.float64)
    for start in range(0, stream.tokens, BLOCK):
        stop = min(start + BLOCK, stream.tokens)
        model = _model_probabilities(weights, states[start:stop])  # (block, vocab)
        cache = np.empty_like(model)
        for t in range(start, stop):
            first = max(0, t - settings.size)  # the memory: pairs first .. t-1
            memory_states, memory_next_ids = states[first:t], targets[first:t]
            cache[t - start] = cache_probabilities(
                states[t : t + 1], memory_states, memory_next_ids, settings.theta, vocab
            )[0]
        positions = np.arange(start, stop)
        has_memory = positions > 0
        pairs = np.minimum(positions, settings.size).astype(np.float64)[:, None]
        rows = mix(model, cache, settings.weight_at(pairs), has_memory)
        mixed[start:stop] = rows[np.arange(stop - start), targets[start:stop]]
    return Evaluation(stream.tokens, perplexity(mixed), perplexity(stream.model_probabilities))


def cache_target_probabilities(
    stream: Stream, sizes: Sequence[int], thetas: Sequence[float]
) -> np.ndarray:
    """p_cache(targets[t] | h_t) for each memory size and θ: (sizes, thetas, T) float64.

    Position 0 has no memory: 0 there. The products h_t·h_i are made once per block of rows for
    the largest size; each size masks them to its own memory.
    """
    states, targets = stream.states, stream.targets
    out = np.zeros((len(sizes), len(thetas), stream.tokens), dtype=np.float64)
    largest = max(sizes)
    for start in range(1, stream.tokens, BLOCK):
        stop = min(start + BLOCK, stream.tokens)
        first = max(0, start - largest)  # the oldest pair any row of the block remembers
        # (block, window): rows t = start .. stop-1 against pairs i = first .. stop-2.
        scores = states[start:stop] @ states[first : stop - 1].T
        lags = np.arange(start, stop)[:, None] - np.arange(first, stop - 1)[None, :]  # t - i
        hits = targets[first : stop - 1][None, :] == targets[start:stop, None]
        for a, size in enumerate(sizes):
            skip = max(0, start - size - first)  # columns too old for every row at this size
            lag = lags[:, skip:]
            inside = (lag >= 1) & (lag <= size)  # row t's memory: t - size <= i < t
            shifted = np.where(inside, scores[:, skip:], engine.FLOAT(-np.inf))
            # Each row's largest score subtracted: exp never overflows; outside: exp(-inf) = 0.
            shifted -= shifted.max(axis=1, keepdims=True)
            # The pairs whose next word is the row's target: few, so gathered, not masked.
            rows, columns = np.nonzero(inside & hits[:, skip:])
            exponentials = np.empty_like(shifted)
            for b, theta in enumerate(thetas):
                np.multiply(shifted, engine.FLOAT(theta), out=exponentials)
                np.exp(exponentials, out=exponentials)
                total = exponentials.sum(axis=1, dtype=np.float64)
                found = np.bincount(
                    rows, weights=exponentials[rows, columns], minlength=stop - start
                )
                out[a, b, start:stop] = found / total
    return out


def tune(
    stream: Stream,
    sizes: Sequence[int] = DEFAULT_SIZES,
    thetas: Sequence[float] = DEFAULT_THETAS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> Tuning:
    """The settings of lowest perplexity on `stream`: every combination of the sizes, θ and λ
    given is tried (the table, best first)."""
    grid = [
        CacheSettings(n, theta, weight) for n in sizes for theta in thetas for weight in weights
    ]
    if not grid:
        raise ValueError("the grid is empty: give at least one size, theta and weight")
    cache = cache_target_probabilities(stream, sizes, thetas)  # (sizes, thetas, T)
    model = stream.model_probabilities
    has_memory = np.arange(stream.tokens) > 0
    table = []
    for a, size in enumerate(sizes):
        for b, theta in enumerate(thetas):
            for weight in weights:
                mixed = np.where(has_memory, (1 - weight) * model + weight * cache[a, b], model)
                table.append(GridPoint(size, float(theta), float(weight), perplexity(mixed)))
    table.sort(key=lambda point: point.perplexity)
    best = table[0]
    return Tuning(
        CacheSettings(best.size, best.theta, best.weight),
        best.perplexity,
        perplexity(model),
        tuple(table),
    )
