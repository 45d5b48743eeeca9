"""Next-word prediction from text: the tokenizer, the NumPy engine and the model's metadata.

The prefix the model reads is built as in training, where every corpus line is a sentence closed
by <eos> and the stream of lines is read from a zero state:

    ""              ->  <eos>                      the first word of a sentence
    "the cat"       ->  <eos> the cat
    "the cat\\nit"   ->  <eos> the cat <eos> it     a line break ends a sentence
    "the cat\\n"     ->  <eos> the cat <eos>

Blank lines add nothing (training drops them), so <eos> never follows <eos> because of them.
The work is split so that a later cache or batcher can slot in between: `prefix` (text -> ids),
`state_for` (ids -> hidden state), `distribution` (state -> probabilities over the vocabulary).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import store
from app.inference import engine
from app.store import ModelStoreError
from app.tokenizer import Tokenizer, TokenizerError, standardise

# The line breaks str.splitlines() knows, which is how the training corpus was cut into lines.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
# Ids below this are the special tokens (the Tokenizer guarantees <unk> = 0 and <eos> = 1).
FIRST_WORD_ID = max(Tokenizer.unknown_id, Tokenizer.end_id) + 1


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
    """Text as the model reads it."""

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


class Predictor:
    """A loaded model that answers "which word comes next?". Thread-safe: it holds no state."""

    def __init__(self, weights: engine.RnnWeights, tokenizer: Tokenizer, info: ModelInfo) -> None:
        if weights.vocab_size != tokenizer.size:
            raise ModelStoreError(
                f"{info.path / store.TOKENIZER} has {tokenizer.size} words but the weights have "
                f"{weights.vocab_size}: the files come from different models; copy the version "
                "folder again or retrain"
            )
        self.weights = weights
        self.tokenizer = tokenizer
        self.info = info

    @classmethod
    def load(cls, model_store: Path, name: str, version: int | str = "latest") -> Predictor:
        """Load and check one version; any problem raises ModelStoreError naming the file."""
        path = store.version_dir(model_store, name, version)
        if not path.is_dir():
            raise ModelStoreError(
                f"model folder {path} does not exist: train it with `nextword train --name "
                f"{name}` or choose another (NEXTWORD_MODEL_STORE / _NAME / _VERSION)"
            )
        try:
            return cls._read(path)
        except OSError as error:  # e.g. a file the server's user may not read
            raise ModelStoreError(
                f"cannot read the model in {path} ({error}): check the files and permissions"
            ) from None

    @classmethod
    def _read(cls, path: Path) -> Predictor:
        manifest = store.read_manifest(path)  # format and sha256 of every file
        try:
            architecture = engine.Architecture.from_manifest(manifest.get("architecture"))
        except ValueError as error:
            raise ModelStoreError(
                f"{path / store.MANIFEST}: {error}: retrain the model or upgrade nextword"
            ) from None
        try:
            tokenizer = Tokenizer.load(path / store.TOKENIZER)
        except (TokenizerError, UnicodeDecodeError) as error:
            raise ModelStoreError(
                f"{path / store.TOKENIZER} cannot be used ({error}): copy the version folder "
                "again or retrain"
            ) from None
        arrays = store.load_weights(path)  # a file safetensors cannot read: ModelStoreError
        try:
            weights = engine.weights_from_arrays(arrays, architecture)
        except ValueError as error:
            raise ModelStoreError(
                f"{path / store.WEIGHTS} does not fit the architecture in its manifest ({error}): "
                "copy the version folder again or retrain"
            ) from None
        info = ModelInfo(
            name=path.parent.name,
            version=int(path.name),
            path=path,
            vocabulary_size=tokenizer.size,
            architecture=dict(manifest["architecture"]),
            metrics=_mapping(manifest.get("metrics")),
            created=str(manifest.get("created") or "") or None,
        )
        return cls(weights, tokenizer, info)

    def prefix(self, text: str) -> Prefix:
        """The ids the model reads for `text`: <eos>, then the words, a line break as <eos>."""
        tokenizer = self.tokenizer
        ids = [tokenizer.end_id]
        unknown_words: list[str] = []
        for number, line in enumerate(_LINE_BREAK.split(text)):
            if number > 0 and ids[-1] != tokenizer.end_id:
                ids.append(tokenizer.end_id)
            line_ids = tokenizer.encode(line)
            if tokenizer.unknown_id in line_ids:
                # Standardise again only when there is something to report (encode maps the
                # standardised words one to one, so the two lists line up).
                words = standardise(line, tokenizer.config)
                unknown_words += [
                    word
                    for word, id_ in zip(words, line_ids, strict=True)
                    if id_ == tokenizer.unknown_id and word != tokenizer.config.unknown_token
                ]
            ids += line_ids
        return Prefix(ids, tokenizer.decode(ids), unknown_words)

    def state_for(self, ids: Sequence[int]) -> np.ndarray:
        """The hidden state after reading `ids` from a zero state: (hidden,), float32."""
        return engine.run(self.weights, ids)

    def distribution(self, state: np.ndarray) -> np.ndarray:
        """Probabilities of every vocabulary id coming next: (vocab,) float32, summing to 1.

        Also takes a batch of states (batch, hidden) -> (batch, vocab).
        """
        return engine.softmax(engine.logits(self.weights, state), in_place=True)

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        """The `top_k` most likely next words after `text`, most likely first.

        The unknown and sentence-end tokens are left out unless `include_special`; the
        probabilities are the model's own over the whole vocabulary (they are not renormalised).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, not {top_k}")
        prefix = self.prefix(text)
        probabilities = self.distribution(self.state_for(prefix.ids))
        first = 0 if include_special else FIRST_WORD_ID
        best = engine.top_k(probabilities[first:], top_k) + first
        vocabulary = self.tokenizer.vocabulary
        words = [WordProbability(vocabulary[i], _plain_float(probabilities[i])) for i in best]
        return Prediction(words, prefix)


def _mapping(value: Any) -> dict[str, Any]:
    # Metrics are for people to read; a manifest without them still serves.
    return dict(value) if isinstance(value, dict) else {}


def _plain_float(value: np.floating[Any]) -> float:
    # The shortest decimal that reads back as the same float32: 0.1, not 0.10000000149011612.
    return float(str(value))
