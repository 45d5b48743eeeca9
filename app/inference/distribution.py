"""From a batch's states to next-word probabilities: the output layer and its softmax, blocked
words removed, the continuous cache mixed in, and each completion's candidates renormalised.

    state ── output layer ── blocked words at -inf ── softmax ──> p_model     (batch, vocab)
    with a memory:  (1 - λ) p_model + λ p_cache, p_cache without the blocked words
    completing a stem:  the words that begin with it, their probabilities over them alone
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from app.inference import engine
from app.inference.choices import WordChoices
from app.inference.continuous_cache import CacheSettings, cache_probabilities
from app.inference.reading import Memory


class Completion(NamedTuple):
    ids: np.ndarray  # the words that begin with the stem, in id order
    probabilities: np.ndarray  # theirs, renormalised over them (float32)


class Choice(NamedTuple):
    """What a row's answer shows, and what a phrase of it may begin with."""

    shown: tuple[np.ndarray, np.ndarray]  # ids, most likely first, and their probabilities
    # The ids a phrase may begin with, and their probabilities: the row's, when the first is
    # longer than the ids (a whole row: gathered only if a phrase is asked for).
    first: tuple[np.ndarray, np.ndarray]


def next_words(
    weights: engine.RnnWeights,
    states: np.ndarray,
    choices: WordChoices,
    stems: Sequence[str | None],
    memories: Sequence[Memory | None],
    cache: CacheSettings | None,
) -> tuple[np.ndarray, list[Completion | None]]:
    """(probabilities (batch, vocab), each row's completion or None where `stems` has None).

    A row's memory is mixed in when `cache` is given and the memory holds a pair.
    """
    scores = engine.logits(weights, states)  # (batch, vocab)
    scores[:, choices.blocked_ids] = -np.inf  # removed; the softmax renormalises
    # A completion's probabilities come from its candidates' own scores, taken before the
    # softmax overwrites them: exact even where a whole row's softmax underflows to 0.
    completions = [
        None if stem is None else _completion(choices, scores[row], stem)
        for row, stem in enumerate(stems)
    ]
    probabilities = engine.softmax(scores, in_place=True)
    if cache is not None:
        for row, memory in enumerate(memories):
            if memory is not None and len(memory):
                completions[row] = _mix(
                    probabilities, row, states[row], memory, cache, choices, completions[row]
                )
    return probabilities, completions


def _completion(choices: WordChoices, scores: np.ndarray, stem: str) -> Completion:
    ids = choices.completions(stem)
    return Completion(ids, engine.softmax(scores[ids]) if ids.size else scores[ids])


def _mix(
    probabilities: np.ndarray,
    row: int,
    state: np.ndarray,
    memory: Memory,
    cache: CacheSettings,
    choices: WordChoices,
    completion: Completion | None,
) -> Completion | None:
    """Mix the cache into probabilities[row] (in place); the completion, mixed the same way."""
    p_cache = cache_probabilities(
        state[None, :], memory.states, memory.next_ids, cache.theta, len(probabilities[row])
    )[0]
    p_cache[choices.blocked_ids] = 0
    total = float(p_cache.sum(dtype=np.float64))
    if total <= 0:  # the memory holds blocked words only
        return completion
    p_cache /= total
    weight = cache.weight
    if completion is not None:
        # p(w | C) = ((1 - λ) p_model(w) + λ p_cache(w)) / ((1 - λ) p_model(C) + λ p_cache(C)),
        # with p_model(w) = p_model(C) * the completion's own (exact) probability of w.
        model_mass = float(probabilities[row, completion.ids].sum(dtype=np.float64))
        cached = p_cache[completion.ids]
        cache_mass = float(cached.sum(dtype=np.float64))
        whole = (1 - weight) * model_mass + weight * cache_mass
        if whole > 0:
            mixed = ((1 - weight) * model_mass * completion.probabilities + weight * cached) / whole
            completion = Completion(completion.ids, mixed.astype(engine.FLOAT))
    probabilities[row] *= 1 - weight
    probabilities[row] += weight * p_cache
    return completion


def choose(
    probabilities: np.ndarray,
    best: np.ndarray,
    completion: Completion | None,
    passed: np.ndarray,
    top_k: int,
    choices: WordChoices,
) -> Choice:
    """A row's answer: the top_k of its `best` next words (ids, most likely first, blocked ones
    already at 0 but perhaps tied there), or of its completion; the ids `passed` over left out
    (they keep their share of the probabilities)."""
    if completion is None:
        ids = best[~choices.blocked[best]]
        first = choices.offered_ids
        if passed.size:
            ids, first = ids[~np.isin(ids, passed)], first[~np.isin(first, passed)]
        ids = ids[:top_k]
        return Choice((ids, probabilities[ids]), (first, probabilities))
    ids, chances = completion
    if passed.size:
        kept = ~np.isin(ids, passed)
        ids, chances = ids[kept], chances[kept]
    order = engine.top_k(chances, top_k)
    return Choice((ids[order], chances[order]), (ids, chances))
