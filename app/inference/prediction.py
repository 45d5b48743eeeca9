"""What a prediction is: the model served, the text as read, the words and probabilities.

`Answer` is a prediction in plain values (tuples, lists, ints, floats, strings), as the model
process pickles it back to the server; `prediction_of` makes it a `Prediction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.reading import Reading
from app.tokenizer import Tokenizer

# The text's ids, tokens and unknown words, then the ids most likely first and their
# probabilities.
Answer = tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...], list[int], list[float]]


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
class Prefix:
    """Text as the model reads it (see app.inference.reading)."""

    ids: list[int]  # always starts with <eos>
    tokens: list[str]  # the words of `ids`, unknown words as the unknown token
    unknown_words: list[str]  # the user's words (after standardisation) the model does not know


@dataclass(frozen=True)
class WordProbability:
    word: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    words: list[WordProbability]  # most likely first
    prefix: Prefix


def answer_of(reading: Reading, ids: np.ndarray, probabilities: np.ndarray) -> Answer:
    return (
        reading.ids,
        reading.tokens,
        reading.unknown_words,
        ids.tolist(),
        [plain_float(p) for p in probabilities],
    )


def prediction_of(tokenizer: Tokenizer, answer: Answer) -> Prediction:
    ids, tokens, unknown_words, best, probabilities = answer
    vocabulary = tokenizer.vocabulary
    words = [WordProbability(vocabulary[i], p) for i, p in zip(best, probabilities, strict=True)]
    return Prediction(words, Prefix(list(ids), list(tokens), list(unknown_words)))


def plain_float(value: np.floating[Any]) -> float:
    # The shortest decimal that reads back as the same float32: 0.1, not 0.10000000149011612.
    return float(str(value))
