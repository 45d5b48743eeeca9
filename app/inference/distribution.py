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
    mixing = [
        row
        for row, memory in enumerate(memories)
        if cache is not None and memory is not None and len(memory)
    ]
    # The rows that mix need the model's share of the words not blocked (blocked words are
    # removed from the mixture, not from each of its parts): the blocked words' scores, and
    # the best score's place, whose probability after the softmax is 1 / (its sum of exps).
    blocked = scores[mixing][:, choices.blocked_ids]  # (mixing, blocked)
    scores[:, choices.blocked_ids] = -np.inf  # removed; the softmax renormalises
    best = scores[mixing].argmax(axis=1)
    top = scores[mixing, best]
    # A completion's probabilities come from its candidates' own scores, taken before the
    # softmax overwrites them: exact even where a whole row's softmax underflows to 0.
    completions = [
        None if stem is None else _completion(choices, scores[row], stem)
        for row, stem in enumerate(stems)
    ]
    probabilities = engine.softmax(scores, in_place=True)
    # sum exp(blocked - top) / sum exp(others - top): the blocked words' odds, in float64.
    odds = (
        np.exp(blocked.astype(np.float64) - top[:, None]).sum(axis=1) * probabilities[mixing, best]
    )
    kept = dict(zip(mixing, (1 / (1 + odds)).tolist(), strict=True))
    for row in mixing:
        memory = memories[row]
        assert cache is not None and memory is not None
        completions[row] = _mix(
            probabilities, row, states[row], memory, cache, choices, completions[row], kept[row]
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
    model_kept: float,
) -> Completion | None:
    """Mix the cache into probabilities[row] (in place), and into the row's completion.

    p = (1 - λ) p_model + λ p_cache over the whole vocabulary, then the blocked words removed
    and the rest renormalised. probabilities[row] holds p_model without the blocked words
    (renormalised), `model_kept` the share p_model gave the others.
    """
    p_cache = cache_probabilities(
        state[None, :], memory.states, memory.next_ids, cache.theta, len(probabilities[row])
    )[0]
    cache_kept = 1 - float(p_cache[choices.blocked_ids].sum(dtype=np.float64))
    p_cache[choices.blocked_ids] = 0
    weight = cache.weight_at(len(memory))
    model_part, cache_part = (1 - weight) * model_kept, weight
    whole = model_part + cache_part * cache_kept
    if whole <= 0:  # nothing but blocked words, in the model and the memory
        return completion
    if completion is not None:
        # p(w | C) = p(w) / p(C) for the words C that begin with the stem; p_model(w) is
        # p_model(C) times the completion's own (exact) probability of w.
        model_mass = model_part * float(probabilities[row, completion.ids].sum(dtype=np.float64))
        cached = cache_part * p_cache[completion.ids]
        mass = model_mass + float(cached.sum(dtype=np.float64))
        if mass > 0:
            mixed = (model_mass * completion.probabilities + cached) / mass
            completion = Completion(completion.ids, mixed.astype(engine.FLOAT))
    probabilities[row] *= model_part / whole
    probabilities[row] += (cache_part / whole) * p_cache
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
