"""How likely the model finds a whole text: each token's probability given all before it.

    ids      <eos>  the   company  said          (a Reading's ids: <eos> first, as /predict reads)
    scored          p(the | <eos>)  p(company | <eos> the)  p(said | <eos> the company)

The text is stepped once from the zero state; the output layer, the costly part (a (hidden x
vocab) product a position), is computed for SCORE_CHUNK positions at a time, so memory stays
bounded however long the text: (chunk, vocab) scores at most, never (positions, vocab).

Perplexity is defined as in app.training.evaluate: exp(mean negative log probability over every
scored token, <eos> and <unk> included). Log-probabilities come from the logits directly
(log-softmax, summed in float64): a probability too small for float32 still counts, where
log(softmax) would turn it into log(0) and the perplexity into infinity.

Pure NumPy over the engine's functions, no state: safe to run in a worker thread beside the
event loop (the weights are read-only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from app.inference import engine
from app.inference.distribution import CacheSettings
from app.inference.reading import Reading

# Positions whose output layer is computed together. Large enough for an efficient product,
# small enough that the (chunk, vocab) float32 scores stay 10 MB for a 10,000-word vocabulary.
SCORE_CHUNK = 256


class NoWordToScore(ValueError):
    """The text reads as no word at all (empty, or only spaces and line breaks)."""


class Score(NamedTuple):
    """A text's score (tuples and floats: cheap to hand between threads or processes)."""

    tokens: tuple[str, ...]  # the tokens scored: the words read, <eos> at the start left out
    probabilities: tuple[float, ...]  # of each token, given all before it
    perplexity: float  # exp(mean negative log probability of those tokens)


def log_probabilities(
    weights: engine.RnnWeights, ids: Sequence[int], cache: CacheSettings | None = None
) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, from the zero state: (len - 1,)
    float64; with `cache`, the continuous cache over the text before each token mixed in, as
    /predict mixes it. Raises ValueError when there are fewer than two ids (nothing to score)."""
    if len(ids) < 2:
        raise ValueError(f"scoring needs at least two ids (a context and a token), not {len(ids)}")
    read = np.asarray(ids, dtype=np.intp)
    targets = read[1:]  # targets[t] follows read[: t + 1]
    result = np.empty(len(targets), dtype=np.float64)
    # (positions, hidden): row t after reading read[: t + 1]; kept whole for the cache's memory
    history = np.empty((len(targets), weights.hidden_units), dtype=engine.FLOAT)
    state = np.zeros((1, weights.hidden_units), dtype=engine.FLOAT)
    for start in range(0, len(targets), SCORE_CHUNK):
        stop = min(start + SCORE_CHUNK, len(targets))
        inputs = weights.input_table[read[start:stop]]  # (chunk, hidden)
        states = history[start:stop]
        for row in range(stop - start):
            state = engine.rnn_step(
                weights, inputs[row : row + 1], state, out=states[row : row + 1]
            )
        scores = engine.logits(weights, states)  # (chunk, vocab)
        result[start:stop] = _log_softmax_at(scores, targets[start:stop])
        if cache is not None:
            result[start:stop] = _mixed(result[start:stop], history, targets, start, stop, cache)
    return result


def _mixed(
    model: np.ndarray,
    history: np.ndarray,
    targets: np.ndarray,
    start: int,
    stop: int,
    cache: CacheSettings,
) -> np.ndarray:
    """log((1 - λ) p_model + λ p_cache) of targets[start:stop]: position t's memory is the
    pairs (history[j], targets[j]) for the last `cache.size` j before t."""
    low = max(0, start - cache.size)
    memory = history[low:stop]  # (window, hidden)
    similarity = cache.theta * (history[start:stop] @ memory.T)  # (chunk, window)
    positions = np.arange(start, stop)[:, None]
    window = np.arange(low, stop)[None, :]
    similarity[(window >= positions) | (window < positions - cache.size)] = -np.inf
    has_memory = positions[:, 0] > 0
    similarity[~has_memory] = 0.0  # (no pair before the first token: the model alone)
    similarity -= similarity.max(axis=1, keepdims=True)
    weights = np.exp(similarity)
    weights /= weights.sum(axis=1, keepdims=True)
    hits = targets[low:stop][None, :] == targets[start:stop][:, None]  # w_{j+1} = the target
    p_cache = (weights * hits).sum(axis=1, dtype=np.float64)
    weight = cache.weight_at(np.minimum(positions[:, 0], cache.size).astype(np.float64))
    mixed = (1 - weight) * np.exp(model) + weight * p_cache
    return np.where(has_memory, np.log(mixed), model)


def score_ids(
    weights: engine.RnnWeights, ids: Sequence[int], cache: CacheSettings | None = None
) -> np.ndarray:
    """p(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, from the zero state: (len - 1,) float64."""
    return np.exp(log_probabilities(weights, ids, cache))


def score_reading(
    weights: engine.RnnWeights, reading: Reading, cache: CacheSettings | None = None
) -> Score:
    """The Score of a text as read by `Predictor.read` (<eos> first). Raises NoWordToScore
    when it holds no token after that <eos>."""
    if len(reading.ids) < 2:
        raise NoWordToScore("the text has no word to score")
    logs = log_probabilities(weights, reading.ids, cache)
    return Score(
        tokens=reading.tokens[1:],
        probabilities=tuple(np.exp(logs).tolist()),
        perplexity=math.exp(-float(logs.mean())),
    )


def _log_softmax_at(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(scores[r])[targets[r]] for each row: (rows, vocab) -> (rows,) float64.
    `scores` is overwritten."""
    scores -= scores.max(axis=1, keepdims=True)  # exp never overflows; the largest is exp(0)
    picked = scores[np.arange(len(targets)), targets].astype(np.float64)
    np.exp(scores, out=scores)
    return picked - np.log(scores.sum(axis=1, dtype=np.float64))
