"""From a batch's states to next-word probabilities: the output layer and its softmax, blocked
words removed, the continuous cache mixed in, and each completion's candidates renormalised.

    state ── output layer ── blocked words at -inf ── softmax ──> p_model     (batch, vocab)
    with a memory:  (1 - λ) p_model + λ p_cache, p_cache without the blocked words
    completing a stem:  the words that begin with it, their probabilities over them alone

The continuous cache (Grave, Joulin & Usunier, ICLR 2017) is the model's own recent states as a
memory of which word followed them:

    p_cache(w | h_t) ∝ Σ_i exp(θ h_t·h_i) [w_{i+1} = w]     over the memory's pairs (h_i, w_{i+1})

A word the text has used after a state like the present one gets more probability: names,
numbers and topic words that the model alone, trained on other texts, rates low. Nothing is
trained; the memory's size N, θ and λ are tuned on a validation text
(app.evaluation.continuous_cache) and stored with the model (`continuous_cache.json`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from app.inference import engine
from app.inference.reading import Memory
from app.inference.words import WordChoices

FLOAT = np.float32


# --- the continuous cache -----------------------------------------------------------------------


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


# --- the next-word distribution -------------------------------------------------------------------


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
    held = {
        row: memory for row, memory in enumerate(memories) if memory is not None and len(memory)
    }
    mixing = list(held) if cache is not None else []
    # The rows that mix need the model's share of the words not blocked (blocked words are
    # removed from the mixture, not from each of its parts): the blocked words' scores, and
    # the best score's place, whose probability after the softmax is 1 / (its sum of exps).
    blocked = scores[:, choices.blocked_ids][mixing]
    scores[:, choices.blocked_ids] = -np.inf  # removed; the softmax renormalises
    best = scores.argmax(axis=1)[mixing] if mixing else np.empty(0, dtype=np.intp)
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
    if mixing:
        assert cache is not None
        memory = [held[row] for row in mixing]
        _mix(probabilities, mixing, states, memory, cache, choices, completions, 1 / (1 + odds))
    return probabilities, completions


def _completion(choices: WordChoices, scores: np.ndarray, stem: str) -> Completion:
    ids = choices.completions(stem)
    return Completion(ids, engine.softmax(scores[ids]) if ids.size else scores[ids])


def _mix(
    probabilities: np.ndarray,
    rows: list[int],
    states: np.ndarray,
    memory: list[Memory],
    cache: CacheSettings,
    choices: WordChoices,
    completions: list[Completion | None],
    model_kept: np.ndarray,
) -> None:
    """Mix the cache into probabilities[row] for each of `rows` (in place), and into the row's
    completion (replaced in `completions`); memory[i] is the memory of rows[i].

    p = (1 - λ) p_model + λ p_cache over the whole vocabulary, then the blocked words removed
    and the rest renormalised. probabilities[row] holds p_model without the blocked words
    (renormalised), model_kept[i] the share p_model gave the others for rows[i].

    p_cache is kept sparse, over the few words each memory holds (a dense row would cost passes
    over the whole vocabulary), and the rows' pairs are worked on together, not row by row.
    """
    lengths = np.array([len(item) for item in memory])
    starts = np.cumsum(lengths) - lengths
    # θ h_t·h_i for every pair of every row, and each row's softmax over its own pairs.
    scores = np.concatenate(
        [item.states @ states[row] for item, row in zip(memory, rows, strict=True)]
    )
    scores *= FLOAT(cache.theta)
    scores -= np.repeat(np.maximum.reduceat(scores, starts), lengths)
    np.exp(scores, out=scores)
    totals = np.add.reduceat(scores, starts, dtype=np.float64)
    # Summed by (row, next id): cell i * vocab + w for the pairs of rows[i], sorted and distinct.
    vocab = probabilities.shape[1]
    owner = np.repeat(np.arange(len(rows)), lengths)
    cells = owner * vocab + np.concatenate([item.next_ids for item in memory])
    cells, where = _distinct(cells)
    at, ids = np.divmod(cells, vocab)  # the position in `rows` and the word of each cell
    p_cache = np.bincount(where, weights=scores) / totals[at]  # float64
    blocked = choices.blocked[ids]
    cache_kept = 1 - np.bincount(at[blocked], weights=p_cache[blocked], minlength=len(rows))
    p_cache[blocked] = 0
    weight = cache.weight_at(lengths.astype(np.float64))
    model_part, cache_part = (1 - weight) * model_kept, weight
    whole = model_part + cache_part * cache_kept
    live = whole > 0  # else nothing but blocked words, in the model and the memory: left as is
    edges = np.searchsorted(at, np.arange(len(rows) + 1))  # row i's cells: edges[i]:edges[i+1]
    for i, row in enumerate(rows):
        completion = completions[row]
        if completion is None or not live[i]:
            continue
        # p(w | C) = p(w) / p(C) for the words C that begin with the stem; p_model(w) is
        # p_model(C) times the completion's own (exact) probability of w.
        model_mass = model_part[i] * float(probabilities[row, completion.ids].sum(dtype=np.float64))
        row_ids, row_p = ids[edges[i] : edges[i + 1]], p_cache[edges[i] : edges[i + 1]]
        # p_cache of each candidate: where it is among the memory's words (ids are sorted).
        place = np.minimum(np.searchsorted(row_ids, completion.ids), len(row_ids) - 1)
        cached = cache_part[i] * np.where(row_ids[place] == completion.ids, row_p[place], 0.0)
        mass = model_mass + float(cached.sum(dtype=np.float64))
        if mass > 0:
            mixed = (model_mass * completion.probabilities + cached) / mass
            completions[row] = Completion(completion.ids, mixed.astype(engine.FLOAT))
    whole = np.where(live, whole, 1)  # (the rows left as is scale by 1 and add nothing)
    scale = np.where(live, model_part / whole, 1).tolist()
    for row, factor in zip(rows, scale, strict=True):
        probabilities[row] *= factor
    added = np.where(live, cache_part / whole, 0)[at] * p_cache
    probabilities[np.asarray(rows)[at], ids] += added.astype(engine.FLOAT)


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_inverse=True) for a short 1-D array, without its overheads."""
    order = np.argsort(values)  # (equal values may come in any order: they get one place)
    ordered = values[order]
    first = np.empty(len(ordered), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    where = np.empty(len(ordered), dtype=np.intp)
    where[order] = np.cumsum(first) - 1
    return ordered[first], where


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
