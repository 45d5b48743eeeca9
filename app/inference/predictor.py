"""Next-word prediction from text: the tokenizer, the NumPy engine and the model's metadata.

A request goes through three stages, each with what makes it cheap when it comes again:

    text ── tokenise ──> ids        TextCache (reading.py): when the text before the last
                                    space was seen, only the words after it are tokenised
    ids ── recurrent steps ──> state    StateCache: from the longest prefix whose state is kept
    state ── output layer ──> words     MicroBatcher: concurrent requests' steps and output
                                        layers in one batch, on a worker thread (async only)

`predict` (blocking) and `predict_async` (on the event loop) give the same answer, bit for bit,
with the caches on or off, alone or in a batch, as the engine gave before any of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import store
from app.inference import engine
from app.inference.batcher import MicroBatcher
from app.inference.cache import CHAIN_START, CachedState, StateCache, chain_of
from app.inference.options import InferenceOptions
from app.inference.reading import Reading, TextReader
from app.store import ModelStoreError
from app.tokenizer import Tokenizer, TokenizerError

# Ids below this are the special tokens (the Tokenizer guarantees <unk> = 0 and <eos> = 1).
FIRST_WORD_ID = max(Tokenizer.unknown_id, Tokenizer.end_id) + 1
# A long prefix read from scratch yields the event loop after this many steps (~0.3 ms), so
# other requests are not held up behind it.
STEPS_PER_TURN = 64

__all__ = ["InferenceOptions", "ModelInfo", "Prediction", "Predictor", "Prefix"]


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


# What a request hands the batcher: its state (hidden,), top_k, and the lowest id that may be
# offered (FIRST_WORD_ID: no special tokens); and what it gets back: the ids most likely
# first, and their probabilities.
_Job = tuple[np.ndarray, int, int]
_Best = tuple[np.ndarray, np.ndarray]
_Products = tuple[np.ndarray, np.ndarray]  # engine.output_products


@dataclass(frozen=True)
class WordProbability:
    word: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    words: list[WordProbability]  # most likely first
    prefix: Prefix


class Predictor:
    """A loaded model that answers "which word comes next?".

    Thread-safe (the caches take locks); `predict_async` and `aclose` belong to one event loop.
    Each Predictor owns its caches and batcher, so an old and a new one can serve side by side.
    """

    def __init__(
        self,
        weights: engine.RnnWeights,
        tokenizer: Tokenizer,
        info: ModelInfo,
        options: InferenceOptions | None = None,
    ) -> None:
        if weights.vocab_size != tokenizer.size:
            raise ModelStoreError(
                f"{info.path / store.TOKENIZER} has {tokenizer.size} words but the weights have "
                f"{weights.vocab_size}: the files come from different models; copy the version "
                "folder again or retrain"
            )
        self.weights = weights
        self.tokenizer = tokenizer
        self.info = info
        self.options = options = options or InferenceOptions()
        size = options.cache_size
        self.reader = TextReader(tokenizer, cache_size=size)
        self._states = StateCache(size) if size else None
        self._batcher: MicroBatcher[_Job, _Products, _Best] = MicroBatcher(
            self._output_layer,
            self._best,
            options.batch_max_size,
            options.batch_max_wait_ms / 1000,
        )

    @classmethod
    def load(
        cls,
        model_store: Path,
        name: str,
        version: int | str = "latest",
        options: InferenceOptions | None = None,
    ) -> Predictor:
        """Load and check one version; any problem raises ModelStoreError naming the file."""
        path = store.version_dir(model_store, name, version)
        if not path.is_dir():
            raise ModelStoreError(
                f"model folder {path} does not exist: train it with `nextword train --name "
                f"{name}` or choose another (NEXTWORD_MODEL_STORE / _NAME / _VERSION)"
            )
        options = options or InferenceOptions()
        options.apply_blas_threads()
        try:
            return cls._read(path, options)
        except OSError as error:  # e.g. a file the server's user may not read
            raise ModelStoreError(
                f"cannot read the model in {path} ({error}): check the files and permissions"
            ) from None

    @classmethod
    def _read(cls, path: Path, options: InferenceOptions) -> Predictor:
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
        return cls(weights, tokenizer, info, options)

    # --- text -> ids ---------------------------------------------------------------------------

    def prefix(self, text: str) -> Prefix:
        """The ids the model reads for `text`: <eos>, then the words, a line break as <eos>."""
        reading = self.reader.read(text)
        return Prefix(list(reading.ids), list(reading.tokens), list(reading.unknown_words))

    # --- ids -> state ---------------------------------------------------------------------------

    def state_for(self, ids: Sequence[int]) -> np.ndarray:
        """The hidden state after reading `ids` from a zero state: (hidden,), float32."""
        key = tuple(ids)
        start = self._start(key)
        rest = key[start.length :]
        return self._keep(key, engine.run(self.weights, rest, start.state), start)

    async def _state_async(self, key: tuple[int, ...]) -> np.ndarray:
        """`state_for` on the event loop, yielding it every STEPS_PER_TURN steps."""
        start = self._start(key)
        state, done = start.state, start.length
        while done < len(key):
            if done > start.length:
                await asyncio.sleep(0)  # a long text read from scratch: let others through
            state = engine.run(self.weights, key[done : done + STEPS_PER_TURN], state)
            done += STEPS_PER_TURN
        return self._keep(key, state, start)

    def _start(self, key: tuple[int, ...]) -> CachedState:
        # The longest prefix of `key` with a stored state: reading starts there.
        if self._states is None:
            return CachedState(0, None, CHAIN_START)
        return self._states.lookup(key)

    def _keep(
        self, key: tuple[int, ...], state: np.ndarray | None, start: CachedState
    ) -> np.ndarray:
        if state is None:  # no ids at all: the zero state
            return engine.run(self.weights, ())
        rest = key[start.length :]
        if self._states is not None and rest:
            self._states.store(key, state, chain_of(rest, start.chain))
        return state

    # --- state -> next words ----------------------------------------------------------------------

    def distribution(self, state: np.ndarray) -> np.ndarray:
        """Probabilities of every vocabulary id coming next: (vocab,) float32, summing to 1.

        Also takes a batch of states (batch, hidden) -> (batch, vocab).
        """
        return engine.softmax(engine.logits(self.weights, state), in_place=True)

    def _output_layer(self, jobs: Sequence[_Job]) -> _Products:
        # The batcher's heavy part (the worker thread, or the loop for a lone request).
        return engine.output_products(self.weights, np.stack([job[0] for job in jobs]))

    def _best(self, jobs: Sequence[_Job], products: _Products) -> list[_Best]:
        # The light rest, on the loop: the products -> scores (batch, vocab) -> each job's top k.
        scores = engine.scores_from(self.weights, *products)
        return engine.best_of(scores, [job[1] for job in jobs], [job[2] for job in jobs])

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        """The `top_k` most likely next words after `text`, most likely first.

        The unknown and sentence-end tokens are left out unless `include_special`; the
        probabilities are the model's own over the whole vocabulary (they are not renormalised).
        """
        reading = self._check_and_read(text, top_k)
        job = (self.state_for(reading.ids), top_k, 0 if include_special else FIRST_WORD_ID)
        return self._prediction(reading, self._batcher.run([job])[0])

    async def predict_async(
        self, text: str, top_k: int = 5, include_special: bool = False
    ) -> Prediction:
        """`predict` for the event loop: the output layer is batched with concurrent requests
        and computed on a worker thread when there are any. The same answer as `predict`."""
        reading = self._check_and_read(text, top_k)
        state = await self._state_async(reading.ids)
        job = (state, top_k, 0 if include_special else FIRST_WORD_ID)
        return self._prediction(reading, await self._batcher.submit(job))

    def _check_and_read(self, text: str, top_k: int) -> Reading:
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, not {top_k}")
        return self.reader.read(text)

    def _prediction(self, reading: Reading, best: _Best) -> Prediction:
        ids, probabilities = best
        vocabulary = self.tokenizer.vocabulary
        words = [
            WordProbability(vocabulary[i], _plain_float(p))
            for i, p in zip(ids.tolist(), probabilities, strict=True)
        ]
        prefix = Prefix(list(reading.ids), list(reading.tokens), list(reading.unknown_words))
        return Prediction(words, prefix)

    # --- life cycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Answer the requests waiting for a batch and stop the worker thread. Idempotent."""
        await self._batcher.aclose()

    def stats(self) -> dict[str, Any]:
        """Cache hits and misses, batches run and their mean size (for /models)."""
        off = {"hits": 0, "partial_hits": 0, "misses": 0, "size": 0, "capacity": 0}
        states = self._states.stats() if self._states else off
        return {"cache": states, "batching": self._batcher.stats()}


def _mapping(value: Any) -> dict[str, Any]:
    # Metrics are for people to read; a manifest without them still serves.
    return dict(value) if isinstance(value, dict) else {}


def _plain_float(value: np.floating[Any]) -> float:
    # The shortest decimal that reads back as the same float32: 0.1, not 0.10000000149011612.
    return float(str(value))
