"""Next-word prediction from text: the tokenizer, the NumPy engine and the model's metadata.

A request goes through three stages, each with what makes it cheap when it comes again:

    text ── tokenise ──> ids        TextCache (reading.py): when the text before the last
                                    space was seen, only the words after it are tokenised
    ids ── recurrent steps ──> state    StateCache: from the longest prefix whose state is kept
    state ── output layer ──> words     one product for a batch of states

and `predict_async` hands concurrent requests' whole model work to a MicroBatcher, which
computes them as one batch in the model process (model_process.py), on the other core, while
the event loop goes on with HTTP; a request alone is computed on the loop, with no hop.
`predict_shaped_async` also makes what the caller wants of each prediction there (the service:
its response body), so that the loop only passes it on.
The model process has caches of its own (the same size): each process reads from its own.

`predict` (blocking) and `predict_async` (on the event loop) give the same answer, bit for bit,
with the caches on or off, alone or in a batch, as the engine gave before any of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app import store
from app.inference import engine
from app.inference.batcher import MicroBatcher
from app.inference.cache import CHAIN_START, CachedState, Ids, StateCache, chain_of
from app.inference.model_process import ModelProcess
from app.inference.options import InferenceOptions
from app.inference.prediction import (
    Answer,
    ModelInfo,
    Prediction,
    Prefix,
    WordProbability,
    answer_of,
    prediction_of,
)
from app.inference.reading import TextReader
from app.store import ModelStoreError
from app.tokenizer import Tokenizer, TokenizerError

# Ids below this are the special tokens (the Tokenizer guarantees <unk> = 0 and <eos> = 1).
FIRST_WORD_ID = max(Tokenizer.unknown_id, Tokenizer.end_id) + 1
# A long prefix read from scratch yields the event loop after this many steps (~0.3 ms), so
# other requests are not held up behind it.
STEPS_PER_TURN = 64

__all__ = [
    "InferenceOptions",
    "ModelInfo",
    "Prediction",
    "Predictor",
    "Prefix",
    "WordProbability",
]

T = TypeVar("T")
# What a caller may have made of a prediction where it is computed: see predict_shaped_async.
Shape = Callable[[Prediction, ModelInfo], T]
# What a request hands the batcher: its text, top_k, the lowest id that may be offered
# (FIRST_WORD_ID: no special tokens) and its shape; it gets back an Answer (prediction.py), or
# what its shape made of it.
_Job = tuple[str, int, int, Shape[Any] | None]


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
        self._process: ModelProcess[_Job, tuple[list[Any], dict[str, int]]] | None = (
            ModelProcess(self._in_model_process) if options.model_process else None
        )
        self._process_cache: dict[str, int] = {}  # the model process's cache figures
        self._process_held = False  # see hold_model_process
        self._batcher: MicroBatcher[_Job, Any] = MicroBatcher(
            self._answers,
            options.batch_max_size,
            options.batch_max_wait_ms / 1000,
            alone=self._answer_alone,
            offload=self._offload if self._process else None,
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
        state: np.ndarray = self._states_for([ids if isinstance(ids, Ids) else Ids(ids)])[0]
        return state

    def _states_for(self, keys: Sequence[tuple[int, ...]]) -> np.ndarray:
        """`state_for` of each key, the recurrent steps of all of them taken together."""
        starts = [self._start(key) for key in keys]
        zeros = np.zeros(self.weights.hidden_units, dtype=engine.FLOAT)
        states = engine.run_many(
            self.weights,
            [key[start.length :] for key, start in zip(keys, starts, strict=True)],
            np.stack([zeros if start.state is None else start.state for start in starts]),
        )
        for key, state, start in zip(keys, states, starts, strict=True):
            self._keep(key, state.copy(), start)  # a row of its own, not a view of the batch
        return states

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

    def _answers(self, jobs: Sequence[_Job]) -> list[Any]:
        """A batch's whole model work, blocking (on the loop, or in the model process)."""
        readings = [self.reader.read(job[0]) for job in jobs]
        states = self._states_for([reading.ids for reading in readings])
        best = engine.next_words(
            self.weights, states, [job[1] for job in jobs], [job[2] for job in jobs]
        )
        return [
            self._shaped(answer_of(reading, *ids), job[3])
            for reading, ids, job in zip(readings, best, jobs, strict=True)
        ]

    async def _answer_alone(self, job: _Job) -> Any:
        """One job on the event loop, yielding it on a long text (`_state_async`)."""
        text, top_k, first, shape = job
        reading = self.reader.read(text)
        state = await self._state_async(reading.ids)
        ((ids, probabilities),) = engine.next_words(self.weights, state[None], [top_k], [first])
        return self._shaped(answer_of(reading, ids, probabilities), shape)

    def _shaped(self, answer: Answer, shape: Shape[Any] | None) -> Any:
        return answer if shape is None else shape(prediction_of(self.tokenizer, answer), self.info)

    async def _offload(self, jobs: Sequence[_Job]) -> list[Any]:
        assert self._process is not None
        if self._process_held and self._process.pid is None:
            return self._answers(jobs)  # no fork now: computed here, on the loop
        answers, self._process_cache = await self._process.run(jobs)
        return answers

    def hold_model_process(self, held: bool) -> None:
        """While held, no model process is forked (batches are computed on the event loop
        until one is; one forked already goes on). The model manager holds it while another
        model is in memory: a process forked then would keep a copy of that one for life."""
        self._process_held = held

    def _in_model_process(self) -> Callable[[Sequence[_Job]], tuple[list[Any], dict[str, int]]]:
        # Run in the model process once forked: a Predictor of its own (its own caches, locks
        # and counters) on the weights and tokenizer it inherited, shared copy-on-write.
        own = Predictor(self.weights, self.tokenizer, self.info, self.options.in_model_process())

        def compute(jobs: Sequence[_Job]) -> tuple[list[Any], dict[str, int]]:
            return own._answers(jobs), own._cache_stats()

        return compute

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        """The `top_k` most likely next words after `text`, most likely first.

        The unknown and sentence-end tokens are left out unless `include_special`; the
        probabilities are the model's own over the whole vocabulary (they are not renormalised).
        """
        job = self._job(text, top_k, include_special)
        return prediction_of(self.tokenizer, self._batcher.run([job])[0])

    async def predict_async(
        self, text: str, top_k: int = 5, include_special: bool = False
    ) -> Prediction:
        """`predict` for the event loop: concurrent requests are computed together, in the
        model process when there is one. The same answer as `predict`, bit for bit."""
        job = self._job(text, top_k, include_special)
        return prediction_of(self.tokenizer, await self._batcher.submit(job))

    async def predict_shaped_async(
        self, text: str, top_k: int, include_special: bool, shape: Shape[T]
    ) -> T:
        """`shape(prediction, info)` of `predict_async`'s prediction, made where the prediction
        is computed: in the model process under load, so that the event loop only passes the
        result on (the service's response body: building it is ~20 us a request).

        `shape` is pickled to the model process with each batch: a module-level function.
        """
        result: T = await self._batcher.submit(self._job(text, top_k, include_special, shape))
        return result

    @staticmethod
    def _job(text: str, top_k: int, include_special: bool, shape: Shape[Any] | None = None) -> _Job:
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, not {top_k}")
        return (text, top_k, 0 if include_special else FIRST_WORD_ID, shape)

    # --- life cycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Answer the requests waiting for a batch and stop the model process. Idempotent."""
        await self._batcher.aclose()
        if self._process is not None:
            await self._process.aclose()

    def stats(self) -> dict[str, Any]:
        """Cache hits and misses (this process's and the model process's together), batches
        run and their mean size."""
        cache = self._cache_stats()
        for key, value in self._process_cache.items():
            cache[key] = cache.get(key, 0) + value
        forks = self._process.forks if self._process else 0
        return {"cache": cache, "batching": {**self._batcher.stats(), "model_process_forks": forks}}

    def _cache_stats(self) -> dict[str, int]:
        if self._states is None:
            return {"hits": 0, "partial_hits": 0, "misses": 0, "size": 0, "capacity": 0}
        return self._states.stats()


def _mapping(value: Any) -> dict[str, Any]:
    # Metrics are for people to read; a manifest without them still serves.
    return dict(value) if isinstance(value, dict) else {}
