"""What a prediction is asked and answers: plain tuples, cheap to send between processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from app.inference.distribution import CacheSettings


class Query(NamedTuple):
    """One request: the text so far and what to return."""

    text: str
    top_k: int = 5
    include_special: bool = False  # also offer <unk> and <eos> (never as a completion)
    phrase_words: int = 1  # above 1: also the top_k phrases of that many words
    exclude: tuple[str, ...] = ()  # words not to offer (say, those the user passed over)
    continuous_cache: bool = True  # mix in the cache over the text's states, if the model has one


class Phrase(NamedTuple):
    words: tuple[str, ...]  # as written into the text
    probability: float  # the product of its words' probabilities


class Prediction(NamedTuple):
    """The answer to a Query (tuples: cheap to send between processes)."""

    words: tuple[str, ...]  # most likely first, as the user would write them
    # The model's, over its vocabulary less the blocked words; for a completion, over the
    # words that complete the fragment.
    probabilities: tuple[float, ...]
    tokens: tuple[str, ...]  # the words read: <eos> first, unknown words as <unk>
    unknown_words: tuple[str, ...]  # the user's words (standardised) the model does not know
    completing: str | None = None  # the word being typed, as typed
    phrases: tuple[Phrase, ...] = ()


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
    # How the model's continuous cache is used (continuous_cache.json); None: it has none.
    continuous_cache: CacheSettings | None = None
