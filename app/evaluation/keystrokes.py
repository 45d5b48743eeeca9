"""Keystroke savings: how much typing the suggestions spare a user.

A simulated user types a text word by word, letter by letter. Before each keystroke the service
shows `suggestions` words: the next words after a space, completions of the word once it is
begun (as /predict answers: app.inference.words and the model's probabilities). As soon as
the intended word is shown the user takes it: one keystroke, and the space after it comes with
it. A word never shown is typed in full, then a space. A line break (the end of a sentence) is
one keystroke, never spared. Words the model does not know are typed in full.

    keystroke savings = 1 - keystrokes pressed / keystrokes of typing everything

Words shown for a word and passed over are not shown again for it (what a client does with
/predict's `exclude`): the user would have taken them.

Where the model has a continuous cache, it is mixed in as /predict does by default, over all
the text typed so far (the file is one text box).

With `phrase_words`, the last slot shows the best phrase of that many words instead of a word
when it is worth more (its probability times the keystrokes it spares, against the word's);
the user takes it when it is exactly what comes next (one keystroke for all its words).

The baseline in the same run is a dictionary keyboard with no language model: the most
frequent words that begin with what is typed (the vocabulary is ranked by training frequency,
so the lowest ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from app.inference import distribution, engine, phrases
from app.inference.distribution import CacheSettings
from app.inference.predictor import FIRST_WORD_ID, PHRASE_BEAM, Predictor
from app.inference.reading import Memory
from app.tokenizer import standardise


@dataclass
class Tally:
    """Keystrokes of typing everything, and of what the user pressed."""

    full: int = 0
    pressed: int = 0
    words: int = 0
    phrases_taken: int = 0

    @property
    def savings(self) -> float:
        return 1.0 - self.pressed / self.full if self.full else 0.0


@dataclass(frozen=True)
class Savings:
    model: Tally
    baseline: Tally


def simulate(
    predictor: Predictor,
    lines: Iterable[str],
    suggestions: int = 3,
    max_words: int | None = None,
    phrase_words: int = 0,
    continuous_cache: bool = True,
) -> Savings:
    """Type `lines` (one sentence a line, read as one stream, the state carried across them)
    with the model's suggestions and with the baseline's. `phrase_words` 0: no phrases. With
    `continuous_cache` and a model that has one, it is mixed in as /predict does, over all the
    text typed so far."""
    if suggestions < 1 or (phrase_words and (phrase_words < 2 or suggestions < 2)):
        raise ValueError("suggestions must be 1 or more; phrases need 2 or more of each")
    tokenizer, weights, choices = predictor.tokenizer, predictor.weights, predictor.choices
    cache = predictor.info.continuous_cache if continuous_cache else None
    memory = _Memory(weights.hidden_units, cache.size if cache else 0)
    model, baseline = Tally(), Tally()
    state = engine.run(weights, [tokenizer.end_id])
    for line in lines:
        if max_words is not None and model.words >= max_words:
            break
        words = standardise(line, tokenizer.config)  # as typed (unknown ones too), standardised
        if max_words is not None:
            words = words[: max_words - model.words]
        if not words:
            continue  # a blank line: nothing typed, nothing read (as in training)
        ids = tokenizer.encode(line)[: len(words)]
        position = 0
        while position < len(words):
            probabilities = distribution.next_words(
                weights, state[None, :], choices, [None], [memory.now()], cache
            )[0][0]
            typed, taken = _type_word(
                predictor, state, probabilities, words, ids, position, suggestions, phrase_words,
                (cache, memory.now()),
            )  # fmt: skip
            for word in words[position : position + taken]:
                model.full += len(word) + 1
                baseline.full += len(word) + 1
            model.pressed += typed
            model.words += taken
            model.phrases_taken += taken > 1
            for offset in range(taken):
                word_id = ids[position + offset]
                baseline.pressed += _baseline_keys(
                    predictor, words[position + offset], word_id, suggestions
                )
                baseline.words += 1
                memory.add(state, word_id)
                state = engine.run(weights, [word_id], state)
            position += taken
        # The end of the line: one keystroke (Enter, or a full stop), and the model reads <eos>.
        for tally in (model, baseline):
            tally.full += 1
            tally.pressed += 1
        memory.add(state, tokenizer.end_id)
        state = engine.run(weights, [tokenizer.end_id], state)
    return Savings(model, baseline)


class _Memory:
    """The continuous cache's memory of the text typed so far: its last `size` pairs (state,
    id read next), in a buffer that grows by doubling, seen through a view (no copy a word)."""

    def __init__(self, hidden: int, size: int) -> None:
        self.size = size
        self.states = np.empty((1024, hidden), dtype=np.float32)
        self.ids = np.empty(1024, dtype=np.intp)
        self.count = 0

    def add(self, state: np.ndarray, next_id: int) -> None:
        if not self.size:
            return
        if self.count == len(self.ids):
            self.states = np.concatenate([self.states, np.empty_like(self.states)])
            self.ids = np.concatenate([self.ids, np.empty_like(self.ids)])
        self.states[self.count], self.ids[self.count] = state, next_id
        self.count += 1

    def now(self) -> Memory | None:
        start = max(0, self.count - self.size)
        return Memory(self.states[start : self.count], self.ids[start : self.count])


def _type_word(
    predictor: Predictor,
    state: np.ndarray,
    probabilities: np.ndarray,
    words: Sequence[str],
    ids: Sequence[int],
    position: int,
    suggestions: int,
    phrase_words: int,
    cached: tuple[CacheSettings | None, Memory | None],
) -> tuple[int, int]:
    """(keystrokes pressed, words entered) for the word at `position`; `cached` is the
    continuous cache to use, and the text's memory."""
    word, target = words[position], ids[position]
    choices = predictor.choices
    if target < FIRST_WORD_ID or choices.blocked[target]:
        return len(word) + 1, 1  # never offered: typed in full
    wanted = tuple(ids[position : position + phrase_words]) if phrase_words else ()
    passed = np.zeros(len(probabilities), dtype=bool)  # shown for this word, not taken
    for typed in range(len(word) + 1):
        # As /predict: next words are every word but the blocked (the number token too),
        # completions and phrases only words a user can write; `exclude` drops those passed.
        completions = choices.completions(word[:typed])
        candidates = choices.next_ids if typed == 0 else completions
        candidates = candidates[~passed[candidates]]
        shown = _best(probabilities, candidates, suggestions)
        completions = completions[~passed[completions]]
        if len(wanted) == phrase_words > 1 and completions.size:
            phrase, value = _best_phrase(
                predictor, state, probabilities, completions, phrase_words, cached
            )
            last = shown[-1]
            if value > probabilities[last] * (len(predictor.tokenizer.vocabulary[last]) - typed):
                if phrase == wanted:
                    return typed + 1, phrase_words
                shown = shown[:-1]  # the phrase takes the last slot
        if target in shown:
            return typed + 1, 1
        passed[shown] = True
    return len(word) + 1, 1


def _best_phrase(
    predictor: Predictor,
    state: np.ndarray,
    probabilities: np.ndarray,
    candidates: np.ndarray,
    words: int,
    cached: tuple[CacheSettings | None, Memory | None],
) -> tuple[tuple[int, ...], float]:
    """The best phrase beginning with one of `candidates`, and what showing it is worth: its
    probability times the keystrokes of its later words (its first is offered anyway)."""
    beam = phrases.search(
        predictor.weights,
        state,
        candidates,
        probabilities[candidates],
        predictor.choices,
        words,
        PHRASE_BEAM,
        *cached,
    )
    ids = tuple(beam.ids[0].tolist())
    vocabulary = predictor.tokenizer.vocabulary
    keys = sum(len(vocabulary[id_]) + 1 for id_ in ids[1:])
    return ids, float(np.exp(beam.log_probabilities[0])) * keys


def _best(probabilities: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """The `count` most likely of `candidates` (ids in id order): ties go to the lower id."""
    if candidates.size <= count:
        return candidates
    chosen = engine.top_k_rows(probabilities[candidates][None, :], [count], [0])[0]
    return candidates[chosen]


def _baseline_keys(predictor: Predictor, word: str, target: int, suggestions: int) -> int:
    """Keystrokes for `word` with the most frequent words of the typed prefix shown."""
    if target < FIRST_WORD_ID or predictor.choices.blocked[target]:
        return len(word) + 1
    for typed in range(len(word) + 1):
        choices = predictor.choices
        candidates = choices.next_ids if typed == 0 else choices.completions(word[:typed])
        if target in candidates[:suggestions]:
            return typed + 1
    return len(word) + 1
