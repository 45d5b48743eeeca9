"""Stand-ins for the API tier (the fixtures that hand them out are in conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.inference.predictor import ModelInfo, Prediction, Query
from app.inference.scoring import NoWordToScore, Score
from app.serving.registry import UnknownModel


class FakeBackend:
    """Stands in for `app.inference.backend.Backend` where only the web layer is under test:
    always the same answer, and a record of every query it was handed."""

    info = ModelInfo("fake", 7, Path("fake/7"), 3, {"type": "simple_rnn"}, {})
    answer = Prediction(
        words=("b", "c"),
        probabilities=(0.75, 0.25),
        tokens=("<eos>", "<unk>"),
        unknown_words=("zebra",),
    )
    score_answer = Score(tokens=("b", "<unk>"), probabilities=(0.5, 0.125), perplexity=4.0)

    def __init__(self) -> None:
        self.queries: list[Query] = []
        self.scored: list[str] = []  # the texts handed to score
        self.cancelled: list[Query] = []
        self.fails: Exception | None = None  # raised by predict and score, as a bug would be
        self.stalls = False  # predict and score never answer (until cancelled)

    async def predict(self, query: Query) -> Prediction:
        self.queries.append(query)
        if self.fails is not None:
            raise self.fails
        if self.stalls:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(query)
                raise
        return self.answer

    async def score(self, text: str, continuous_cache: bool = True) -> Score:
        """`score_answer` for any text with a non-space character (the real backend asks the
        tokenizer); fails and stalls as predict does."""
        self.scored.append(text)
        if self.fails is not None:
            raise self.fails
        if self.stalls:
            await asyncio.Event().wait()
        if not text.strip():
            raise NoWordToScore("the text has no word to score")
        return self.score_answer


class FakeModels:
    """Stands in for `app.serving.registry.ModelRegistry` (the routes' `get_models`): one model,
    served by `backend` (a FakeBackend, or any stand-in with `info` and `predict`)."""

    def __init__(self, backend: Any) -> None:
        self.default = backend.info.name
        self._backend = backend

    def backend(self, name: str | None = None) -> Any:
        if name not in (None, self.default):
            raise UnknownModel(str(name), [self.default])
        return self._backend

    def backends(self) -> dict[str, Any]:
        return {self.default: self._backend}

    def refusals(self) -> list[Any]:
        return []
