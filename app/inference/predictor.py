"""Next-word prediction for a batch of texts: plain synchronous code over the NumPy engine.

    text ── read (tokenizer) ──> ids        "the cat\\nit" -> <eos> the cat <eos> it
    ids ── recurrent steps ──> state        all the batch's texts stepped together
    state ── output layer, softmax ──> the top_k words and their probabilities

Texts are read as in training, where every corpus line is a sentence closed by <eos> and the
stream of lines is read from a zero state:

    ""              ->  <eos>                      the first word of a sentence
    "the cat"       ->  <eos> the cat
    "the cat\\nit"   ->  <eos> the cat <eos> it     a line break ends a sentence

Blank lines add nothing (training drops them), so <eos> never follows <eos> because of them.

Type-ahead sends the same text again with a word more. Words never span a space or a line break,
and neither changes under Unicode normalisation (NFC) or joins with the characters either side
of it, so the text before the last one reads the same on its own. Each text read is kept with
the state it leads to (`ReadingCache`); a text whose head (all but its last word) is kept costs
the tokenising and the recurrent steps of its last word only.

Where batches are computed, and how concurrent requests become batches, is the backend's
business (app.inference.backend); nothing here knows of the event loop or of processes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from app.inference import engine
from app.tokenizer import Tokenizer, standardise

# Ids below this are the special tokens (the Tokenizer guarantees <unk> = 0 and <eos> = 1).
FIRST_WORD_ID = max(Tokenizer.unknown_id, Tokenizer.end_id) + 1
# The line breaks str.splitlines() knows, which is how the training corpus was cut into lines.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class Query(NamedTuple):
    """One request: the text so far and what to return."""

    text: str
    top_k: int = 5
    include_special: bool = False  # also offer <unk> and <eos>


class Prediction(NamedTuple):
    """The answer to a Query (tuples: cheap to send between processes)."""

    words: tuple[str, ...]  # most likely first
    probabilities: tuple[float, ...]  # the model's own, over the whole vocabulary
    tokens: tuple[str, ...]  # the words read: <eos> first, unknown words as <unk>
    unknown_words: tuple[str, ...]  # the user's words (standardised) the model does not know


@dataclass(frozen=True)
class ModelInfo:
    """What is being served, from the folder and its manifest."""

    name: str
    version: int
    path: Path
    vocabulary_size: int
    architecture: dict[str, Any]
    metrics: dict[str, Any]
    created: str | None = None


@dataclass(frozen=True)
class Reading:
    """A text as the model reads it, and the state after it (None until computed)."""

    ids: tuple[int, ...]  # always starts with <eos>
    tokens: tuple[str, ...]
    unknown_words: tuple[str, ...]
    state: np.ndarray | None = None  # (hidden,), read-only


class ReadingCache:
    """Readings by text, least recently used dropped first: at most `max_entries`, and at most
    CHARS_PER_ENTRY characters a entry on average (so memory is bounded however long the texts)."""

    CHARS_PER_ENTRY = 256

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.max_chars = max_entries * self.CHARS_PER_ENTRY
        self.chars = 0
        self._entries: OrderedDict[str, Reading] = OrderedDict()
        self.hits = self.misses = 0  # a hit: the text or its head was kept

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: str) -> bool:
        return text in self._entries  # (a look, not a use: the order is kept)

    def get(self, text: str) -> Reading | None:
        reading = self._entries.get(text)
        if reading is not None:
            self._entries.move_to_end(text)
        return reading

    def put(self, text: str, reading: Reading) -> None:
        if len(text) > self.max_chars or self.max_entries < 1:
            return  # could never fit: keep what is there
        if self._entries.pop(text, None) is not None:
            self.chars -= len(text)
        self._entries[text] = reading
        self.chars += len(text)
        while len(self._entries) > self.max_entries or self.chars > self.max_chars:
            dropped, _ = self._entries.popitem(last=False)
            self.chars -= len(dropped)


class Predictor:
    """A loaded model that answers "which words come next?" for a batch of texts.

    Not thread-safe (its cache is not locked): one Predictor per thread or process. The weights
    are read-only and may be shared.
    """

    def __init__(
        self,
        weights: engine.RnnWeights,
        tokenizer: Tokenizer,
        info: ModelInfo,
        cache_size: int = 4096,
    ) -> None:
        if weights.vocab_size != tokenizer.size:
            raise ValueError(
                f"the tokenizer has {tokenizer.size} words but the weights {weights.vocab_size}"
            )
        self.weights = weights
        self.tokenizer = tokenizer
        self.info = info
        self.cache = ReadingCache(cache_size)
        self._zero = np.zeros(weights.hidden_units, dtype=engine.FLOAT)

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        """The `top_k` most likely next words after `text`, most likely first.

        <unk> and <eos> are left out unless `include_special`; the probabilities are the
        model's own over the whole vocabulary (not renormalised over those returned).
        """
        return self.predict_batch([Query(text, top_k, include_special)])[0]

    def predict_batch(self, queries: Sequence[Query]) -> list[Prediction]:
        """`predict` for each query, their recurrent steps and output layer taken together."""
        if not queries:
            return []
        for query in queries:
            if query.top_k < 1:
                raise ValueError(f"top_k must be 1 or more, not {query.top_k}")
        pending = [self._pending(query.text) for query in queries]
        best = engine.next_words(
            self.weights,
            self._states(pending),
            [query.top_k for query in queries],
            [0 if query.include_special else FIRST_WORD_ID for query in queries],
        )
        vocabulary = self.tokenizer.vocabulary
        return [
            Prediction(
                tuple(vocabulary[i] for i in ids.tolist()),
                tuple(_shortest(p) for p in probabilities.tolist()),
                item.reading.tokens,
                item.reading.unknown_words,
            )
            for item, (ids, probabilities) in zip(pending, best, strict=True)
        ]

    def kept(self, text: str) -> Reading | None:
        """The reading kept for `text` (with its state), if any."""
        return self.cache.get(text)

    def keep(self, text: str, reading: Reading) -> None:
        """Keep a reading (with its state) made elsewhere, e.g. by the model process."""
        if reading.state is not None:
            self.cache.put(text, reading)

    def keeps(self, text: str) -> bool:
        """Whether `text` or its head is kept: predicting it costs the steps of a word at most."""
        cut = max(text.rfind(" "), text.rfind("\n"))
        return text in self.cache or (cut > 0 and text[:cut] in self.cache)

    # --- text -> ids ------------------------------------------------------------------------

    def read(self, text: str) -> Reading:
        """`text` as the model reads it (the state is left out)."""
        return self._pending(text).reading

    def _pending(self, text: str) -> _Pending:
        # The text itself kept: nothing to do. Its head kept: read and step the last word.
        kept = self.cache.get(text)
        if kept is not None:
            self.cache.hits += 1
            return _Pending(text, kept, len(kept.ids), kept.state)
        cut = max(text.rfind(" "), text.rfind("\n"))
        head = self.cache.get(text[:cut]) if cut > 0 else None
        if head is None:
            self.cache.misses += 1
            return _Pending(text, self._read(text), 0, None)
        self.cache.hits += 1
        return _Pending(text, self._read(text[cut:], after=head), len(head.ids), head.state)

    def _read(self, text: str, after: Reading | None = None) -> Reading:
        """Read `text` alone, or as what follows the text read as `after`."""
        tokenizer = self.tokenizer
        ids = list(after.ids) if after else [tokenizer.end_id]
        unknown_words = list(after.unknown_words) if after else []
        for number, line in enumerate(_LINE_BREAK.split(text)):
            if number > 0 and ids[-1] != tokenizer.end_id:
                ids.append(tokenizer.end_id)
            line_ids = tokenizer.encode(line)
            if tokenizer.unknown_id in line_ids:
                # Standardised again only when there is something to report (encode maps the
                # standardised words one to one, so the two lists line up).
                words = standardise(line, tokenizer.config)
                unknown_words += [
                    word
                    for word, id_ in zip(words, line_ids, strict=True)
                    if id_ == tokenizer.unknown_id and word != tokenizer.config.unknown_token
                ]
            ids += line_ids
        known = after.tokens if after else ()
        tokens = known + tuple(tokenizer.decode(ids[len(known) :]))
        return Reading(tuple(ids), tokens, tuple(unknown_words))

    # --- ids -> states ----------------------------------------------------------------------

    def _states(self, pending: Sequence[_Pending]) -> np.ndarray:
        """The state after each text: (batch, hidden), stepped from the furthest state kept
        for it. Every text read is kept, with its state."""
        states = engine.run_batch(
            self.weights,
            [item.reading.ids[item.done :] for item in pending],
            np.stack([self._zero if item.start is None else item.start for item in pending]),
        )
        for item, state in zip(pending, states, strict=True):
            if item.reading.state is None:
                kept = state.copy()  # a row of its own, not a view of the batch
                kept.flags.writeable = False  # handed to later requests: nothing may change it
                reading = item.reading
                self.cache.put(
                    item.text, Reading(reading.ids, reading.tokens, reading.unknown_words, kept)
                )
        return states


class _Pending(NamedTuple):
    """A text read, and how far its recurrent steps are done already."""

    text: str
    reading: Reading
    done: int  # ids of the reading already stepped
    start: np.ndarray | None  # the state after them (None: the zero state)


def _shortest(value: float) -> float:
    # The shortest decimal that reads back as the same float32: 0.1, not 0.10000000149011612.
    return float(str(np.float32(value)))
