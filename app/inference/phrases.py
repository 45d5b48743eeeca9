"""Phrases: the most likely continuations of several words, found by beam search.

    step 1   the `width` most likely first words (those the request may be offered)
    step t   each phrase kept, stepped with its last word, times every word offered:
             the `width` most likely of them all go on

A phrase's probability is the product of its words' probabilities, each as the service would
show it at that point (blocked words removed and the rest renormalised; the continuous cache,
over the text and the phrase's own words, mixed in). The cost is bounded:
`words` recurrent steps and output layers of `width` rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from app.inference import distribution, engine
from app.inference.distribution import CacheSettings
from app.inference.reading import Memory
from app.inference.words import WordChoices


class Beam(NamedTuple):
    """The phrases found, most likely first."""

    ids: np.ndarray  # (width, words)
    log_probabilities: np.ndarray  # (width,) float64
    states: np.ndarray  # (width, hidden): the state after each whole phrase


def search(
    weights: engine.RnnWeights,
    state: np.ndarray,
    first_ids: np.ndarray,
    first_probabilities: np.ndarray,
    choices: WordChoices,
    words: int,
    width: int,
    cache: CacheSettings | None = None,
    memory: Memory | None = None,
) -> Beam:
    """Phrases of `words` words after `state` (hidden,).

    The first word is one of `first_ids`, with `first_probabilities` (the answer's own: a
    completion's, say); later words are those `choices` offers, with the probabilities /predict
    would give them after the text and the phrase so far: blocked words removed and, with
    `cache`, the continuous cache over `memory` and the phrase's own words mixed in.
    """
    if not len(first_ids):  # nothing may come first: no phrase
        empty = np.empty((0, words), dtype=np.intp)
        return Beam(empty, np.empty(0), np.empty((0, weights.hidden_units), engine.FLOAT))
    order = np.lexsort((first_ids, -first_probabilities))[:width]
    ids = first_ids[order][:, None]
    with np.errstate(divide="ignore"):  # log(0) = -inf: a word that cannot be reached
        totals = np.log(first_probabilities[order].astype(np.float64))
    states = np.repeat(state[None, :], len(order), axis=0)
    memories = [memory] * len(order)
    vocab = weights.vocab_size
    for _ in range(1, words):
        before = states
        states = engine.rnn_step(weights, weights.input_table[ids[:, -1]], states)
        if cache is not None:  # each phrase's memory: the text's, then its own words
            memories = [
                (held or Memory.empty(weights.hidden_units)).after(
                    start, ids[row, -1:].tolist(), states[row : row + 1], cache.size
                )
                for row, (held, start) in enumerate(zip(memories, before, strict=True))
            ]
        probabilities, _ = distribution.next_words(
            weights, states, choices, [None] * len(states), memories, cache
        )  # (beams, vocab)
        with np.errstate(divide="ignore"):
            scores = np.log(probabilities.astype(np.float64))
        scores[:, ~choices.offered] = -np.inf
        candidates = (totals[:, None] + scores).ravel()  # (beams * vocab,), float64
        keep = min(width, candidates.size)
        best = np.argpartition(-candidates, keep - 1)[:keep]
        # Most likely first; equal ones by beam, then word id: the same answer every time.
        best = best[np.lexsort((best, -candidates[best]))]
        beams, words_ = np.divmod(best, vocab)
        ids = np.concatenate([ids[beams], words_[:, None]], axis=1)
        totals = candidates[best]
        states = states[beams]
        memories = [memories[beam] for beam in beams.tolist()]
    states = engine.rnn_step(weights, weights.input_table[ids[:, -1]], states)
    return Beam(ids, totals, states)
