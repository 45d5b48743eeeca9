"""Next-word prediction for a batch of texts: plain synchronous code over the NumPy engine.

    text ── read (tokenizer) ──> ids        "the cat\\nit" -> <eos> the cat <eos> it
    ids ── recurrent steps ──> state        all the batch's texts stepped together
    state ── output layer, softmax ──> the top_k words and their probabilities

Texts are read as in training (app.inference.reading): "" is <eos>, the first word of a
sentence, and a line break ends a sentence.

Type-ahead sends the same text again with a word more. Words never span a space or a line break,
and neither changes under Unicode normalisation (NFC) or joins with the characters either side
of it, so the text before the last one reads the same on its own. Each text read is kept with
the state it leads to (`ReadingCache`); a text whose head (all but its last word, with the
space before that word) is kept costs the tokenising and recurrent steps of its last word only.

A text that does not end in whitespace ends in the word being typed (app.inference.words):
the model reads the text before it, and only words that begin with it are offered.

Where batches are computed, and how concurrent requests become batches, is the backend's
business (app.inference.backend); nothing here knows of the event loop or of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from app.inference import distribution, engine, phrases, words
from app.inference.blocklist import Blocklist
from app.inference.queries import ModelInfo, Phrase, Prediction, Query
from app.inference.reading import Memory, Reading, ReadingCache, read_text
from app.inference.words import Casing, Typed, WordChoices, casing_of, split_typed, written
from app.tokenizer import Tokenizer

__all__ = ["ModelInfo", "Phrase", "Prediction", "Predictor", "Query", "Reading", "ReadingCache"]

# Ids below this are the special tokens (the Tokenizer guarantees <unk> = 0 and <eos> = 1).
FIRST_WORD_ID = max(Tokenizer.unknown_id, Tokenizer.end_id) + 1
# The fewest phrases kept at each step of a beam search: a wider beam finds likelier phrases.
PHRASE_BEAM = 8


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
        blocklist: Blocklist | None = None,
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
        self._no_memory = Memory.empty(weights.hidden_units)
        config = tokenizer.config
        number = tokenizer.id_of(config.number_token) if config.numbers == "replace" else None
        self.choices = WordChoices(
            tokenizer.vocabulary, FIRST_WORD_ID, blocklist, () if number is None else (number,)
        )
        # A lower-casing model's words are written as the user would type them.
        self._cased = tokenizer.config.lowercase

    def predict(
        self,
        text: str,
        top_k: int = 5,
        include_special: bool = False,
        phrase_words: int = 1,
        exclude: tuple[str, ...] = (),
        continuous_cache: bool = True,
    ) -> Prediction:
        """The answer to one Query (see app.inference.queries): the `top_k` most likely next
        words after `text`, or completions of the word being typed at its end."""
        query = Query(text, top_k, include_special, phrase_words, exclude, continuous_cache)
        return self.predict_batch([query])[0]

    def predict_batch(self, queries: Sequence[Query]) -> list[Prediction]:
        """`predict` for each query, their recurrent steps and output layer taken together."""
        if not queries:
            return []
        for query in queries:
            if query.top_k < 1 or query.phrase_words < 1:
                raise ValueError(f"top_k and phrase_words must be 1 or more: {query}")
        typed = [split_typed(query.text, self.tokenizer.config) for query in queries]
        pending = [self._pending(item.context) for item in typed]
        readings = self._states(pending)
        states = np.stack([reading.state for reading in readings])  # type: ignore[misc]
        probabilities, completions = distribution.next_words(
            self.weights,
            states,
            self.choices,
            [None if item.fragment is None else item.stem for item in typed],
            [
                r.memory if q.continuous_cache else None
                for q, r in zip(queries, readings, strict=True)
            ],
            self.info.continuous_cache,
        )
        # Words passed over are not shown, but keep their share of the probabilities.
        passed = [self._ids_of(query.exclude) for query in queries]
        best = engine.top_k_rows(
            probabilities,
            [
                0 if done else query.top_k + len(ids)
                for query, done, ids in zip(queries, completions, passed, strict=True)
            ],
            [0 if query.include_special else FIRST_WORD_ID for query in queries],
        )
        answers = []
        for row, (query, item) in enumerate(zip(queries, typed, strict=True)):
            shown, first = distribution.choose(
                probabilities[row], best[row], completions[row], passed[row], query.top_k,
                self.choices,
            )  # fmt: skip
            answers.append(self._answer(query, item, readings[row], states[row], shown, first))
        return answers

    def _ids_of(self, given: Sequence[str]) -> np.ndarray:
        """The ids of the words `given` as the tokenizer reads them (unknown ones have none)."""
        ids = self.tokenizer.encode(" ".join(given)) if given else ()
        return np.array([id_ for id_ in ids if id_ != self.tokenizer.unknown_id], dtype=np.intp)

    def _answer(
        self,
        query: Query,
        typed: Typed,
        reading: Reading,
        state: np.ndarray,
        shown: tuple[np.ndarray, np.ndarray],
        first: tuple[np.ndarray, np.ndarray],
    ) -> Prediction:
        """The words `shown` as the user would write them, and with phrase_words, phrases whose
        first word is one of `first` (ids and their probabilities, or a whole row of them)."""
        ids, chosen = shown
        casing = (
            casing_of(typed.fragment, words.starts_sentence(typed.context))
            if self._cased
            else Casing.MODEL
        )
        vocabulary = self.tokenizer.vocabulary
        found: tuple[Phrase, ...] = ()
        if query.phrase_words > 1:
            first_ids, first_probabilities = first
            if len(first_probabilities) != len(first_ids):  # a whole row
                first_probabilities = first_probabilities[first_ids]
            found = self._phrases(
                query, typed, reading, state, first_ids, first_probabilities, casing
            )
        return Prediction(
            tuple(
                written(vocabulary[id_], casing) if id_ >= FIRST_WORD_ID else vocabulary[id_]
                for id_ in ids.tolist()
            ),
            tuple(_shortest(p) for p in chosen.tolist()),
            reading.tokens,
            reading.unknown_words,
            typed.fragment,
            found,
        )

    def _phrases(
        self,
        query: Query,
        typed: Typed,
        reading: Reading,
        state: np.ndarray,
        first_ids: np.ndarray,
        first_probabilities: np.ndarray,
        casing: Casing,
    ) -> tuple[Phrase, ...]:
        """The query's top_k phrases. Each is kept with the state after it, under the text
        the user has once it is taken: the next request costs the steps of one word."""
        beam = phrases.search(
            self.weights,
            state,
            first_ids,
            first_probabilities,
            self.choices,
            query.phrase_words,
            max(query.top_k, PHRASE_BEAM),
            self.info.continuous_cache if query.continuous_cache else None,
            reading.memory,
        )
        vocabulary = self.tokenizer.vocabulary
        later = casing if casing in (Casing.ALL, Casing.MODEL) else Casing.AS_IS
        found: list[Phrase] = []
        for ids, total, after in zip(
            beam.ids.tolist(), beam.log_probabilities.tolist(), beam.states, strict=True
        ):
            tokens = [vocabulary[id_] for id_ in ids]
            if len(found) == query.top_k or total == -np.inf:
                break
            if self.choices.blocks_phrase(tokens):
                continue
            phrase = tuple(
                written(token, casing if n == 0 else later) for n, token in enumerate(tokens)
            )
            found.append(Phrase(phrase, _shortest(np.exp(total))))
            taken = typed.context
            if taken and not taken[-1].isspace():
                taken += " "
            # With the space a keyboard adds after it: the context of the next request. (Not
            # with a continuous cache: the beam keeps no memory of the phrase's own states.)
            if self.info.continuous_cache is None:
                self.cache.put(
                    taken + " ".join(phrase) + " ", reading.followed_by(ids, tokens, after)
                )
        return tuple(found)

    def kept(self, text: str) -> Reading | None:
        """The reading kept for what `text`'s prediction reads (with its state), if any."""
        return self.cache.get(self._context(text))

    def keep(self, text: str, reading: Reading) -> None:
        """Keep a reading of `text` (with its state) made elsewhere, e.g. by the model process."""
        if reading.state is not None:
            self.cache.put(self._context(text), reading)

    def keeps(self, text: str) -> bool:
        """Whether what `text`'s prediction reads, or its head, is kept: predicting it costs
        the steps of a word at most."""
        return self.cache.keeps(self._context(text))

    def _context(self, text: str) -> str:
        return split_typed(text, self.tokenizer.config).context

    # --- text -> ids ------------------------------------------------------------------------

    def read(self, text: str) -> Reading:
        """`text` as the model reads it (the state is left out)."""
        return self._pending(text).reading

    def _pending(self, text: str) -> _Pending:
        # The text itself kept: nothing to do. Its head kept: read and step the last word.
        kept, cut = self.cache.furthest(text)
        if kept is None:
            return _Pending(text, read_text(self.tokenizer, text), 0, None)
        if cut == len(text):
            return _Pending(text, kept, len(kept.ids), kept.state, kept.memory)
        reading = read_text(self.tokenizer, text[cut:], after=kept)
        return _Pending(text, reading, len(kept.ids), kept.state, kept.memory)

    # --- ids -> states ----------------------------------------------------------------------

    def _states(self, pending: Sequence[_Pending]) -> list[Reading]:
        """Each text's reading with the state after it (and with a continuous cache, its
        memory), stepped from the furthest state kept for it. Every text read is kept."""
        cache = self.info.continuous_cache
        steps: list[np.ndarray] | None = None if cache is None else []
        states = engine.run_batch(
            self.weights,
            [item.reading.ids[item.done :] for item in pending],
            np.stack([self._zero if item.start is None else item.start for item in pending]),
            steps,
        )
        readings = []
        for row, (item, state) in enumerate(zip(pending, states, strict=True)):
            reading = item.reading
            if reading.state is None:  # (a copy: a row of its own, not a view of the batch)
                memory = None
                if cache is not None and steps is not None:
                    memory = (item.memory or self._no_memory).after(
                        item.start, reading.ids[item.done :], steps[row], cache.size
                    )
                reading = reading.followed_by((), (), state, memory)
                self.cache.put(item.text, reading)
            readings.append(reading)
        return readings


class _Pending(NamedTuple):
    """A text read, and how far its recurrent steps are done already."""

    text: str
    reading: Reading
    done: int  # ids of the reading already stepped
    start: np.ndarray | None  # the state after them (None: the zero state)
    memory: Memory | None = None  # the continuous cache's memory of them


def _shortest(value: float) -> float:
    # The shortest decimal that reads back as the same float32: 0.1, not 0.10000000149011612.
    return float(str(np.float32(value)))
