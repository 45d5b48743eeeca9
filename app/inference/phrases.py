"""Phrases: the most likely continuations of several words, found by beam search.

    step 1   the `width` most likely first words (those the request may be offered)
    step t   each phrase kept, stepped with its last word, times every word offered:
             the `width` most likely of them all go on

A phrase's probability is the product of its words' probabilities, each as the service would
show it at that point (blocked words removed and the rest renormalised). The cost is bounded:
`words` recurrent steps and output layers of `width` rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from app.inference import engine


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
    offered: np.ndarray,
    blocked_ids: np.ndarray,
    words: int,
    width: int,
) -> Beam:
    """Phrases of `words` words after `state` (hidden,).

    The first word is one of `first_ids`, with `first_probabilities` (the answer's own: a
    completion's, say); later words are those `offered` (a (vocab,) mask), scored by the model
    with `blocked_ids` removed.
    """
    if not len(first_ids):  # nothing may come first: no phrase
        empty = np.empty((0, words), dtype=np.intp)
        return Beam(empty, np.empty(0), np.empty((0, weights.hidden_units), engine.FLOAT))
    order = np.lexsort((first_ids, -first_probabilities))[:width]
    ids = first_ids[order][:, None]
    with np.errstate(divide="ignore"):  # log(0) = -inf: a word that cannot be reached
        totals = np.log(first_probabilities[order].astype(np.float64))
    states = np.repeat(state[None, :], len(order), axis=0)
    vocab = weights.vocab_size
    for _ in range(1, words):
        states = engine.rnn_step(weights, weights.input_table[ids[:, -1]], states)
        scores = engine.logits(weights, states)  # (beams, vocab)
        scores[:, blocked_ids] = -np.inf
        scores = _log_softmax(scores)
        scores[:, ~offered] = -np.inf
        candidates = (totals[:, None] + scores).ravel()  # (beams * vocab,), float64
        keep = min(width, candidates.size)
        best = np.argpartition(-candidates, keep - 1)[:keep]
        # Most likely first; equal ones by beam, then word id: the same answer every time.
        best = best[np.lexsort((best, -candidates[best]))]
        beams, words_ = np.divmod(best, vocab)
        ids = np.concatenate([ids[beams], words_[:, None]], axis=1)
        totals = candidates[best]
        states = states[beams]
    states = engine.rnn_step(weights, weights.input_table[ids[:, -1]], states)
    return Beam(ids, totals, states)


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    scores -= scores.max(axis=-1, keepdims=True)
    return scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
