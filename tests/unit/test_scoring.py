"""Scoring a whole text (app.inference.scoring), and Backend.score that serves it."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from support.backends import forks, queries, run, until
from support.models import random_arrays, random_predictor

from app.inference import engine, scoring
from app.inference.backend import Backend
from app.inference.distribution import CacheSettings
from app.inference.predictor import Prediction, Predictor
from app.inference.reading import Reading
from app.inference.scoring import NoWordToScore, Score, score_ids, score_reading
from app.inference.weights import Architecture, weights_from_arrays


def reference_probabilities(weights: engine.RnnWeights, ids: Sequence[int]) -> np.ndarray:
    """The slow way: one step at a time, the softmax of the whole output layer after each."""
    state = np.zeros((1, weights.hidden_units), dtype=engine.FLOAT)
    found = []
    for before, target in itertools.pairwise(ids):
        state = engine.rnn_step(weights, weights.input_table[[before]], state)
        found.append(engine.softmax(engine.logits(weights, state))[0, target])
    return np.array(found)


SHAPES = pytest.mark.parametrize(
    ("embed", "hidden", "tied"), [(16, 16, True), (12, 20, True), (12, 20, False)],
    ids=["tied", "projected", "untied"],
)  # fmt: skip


@SHAPES
@pytest.mark.parametrize("length", [2, 3, scoring.SCORE_CHUNK + 1, 2 * scoring.SCORE_CHUNK + 37])
def test_score_ids_agrees_with_a_step_by_step_softmax(
    embed: int, hidden: int, tied: bool, length: int
) -> None:
    # Lengths around the chunk size: the state carries from one chunk to the next.
    predictor = random_predictor(embed=embed, hidden=hidden, tied=tied, seed=3)
    rng = np.random.default_rng(length)
    ids = [1, *rng.integers(0, predictor.weights.vocab_size, length - 1).tolist()]
    got = score_ids(predictor.weights, ids)
    assert got.shape == (length - 1,) and got.dtype == np.float64
    np.testing.assert_allclose(got, reference_probabilities(predictor.weights, ids), rtol=1e-4)


def test_score_reading_scores_what_was_read_after_the_first_eos() -> None:
    predictor = random_predictor()
    reading = predictor.read("w5 w9 zebra\nw7")
    assert reading.tokens == ("<eos>", "w5", "w9", "<unk>", "<eos>", "w7")
    score = score_reading(predictor.weights, reading)
    assert score.tokens == ("w5", "w9", "<unk>", "<eos>", "w7")  # nothing added at the end
    expected = reference_probabilities(predictor.weights, reading.ids)
    np.testing.assert_allclose(score.probabilities, expected, rtol=1e-4)
    mean_loss = -np.mean(np.log(expected))
    assert score.perplexity == pytest.approx(math.exp(mean_loss), rel=1e-4)


def offered(prediction: Prediction, word: str) -> float:
    """The probability /predict gives `word` (it may capitalise a sentence's first word)."""
    shown = [shown.lower() for shown in prediction.words]
    return prediction.probabilities[shown.index(word)]


def test_each_token_is_scored_as_predict_offers_it_after_the_same_text() -> None:
    predictor = random_predictor()
    score = score_reading(predictor.weights, predictor.read("w5 w9\nw7"))
    # A trailing space: the text before each token, with no word being typed.
    for prefix, token, probability in zip(
        [" ", "w5 ", "w5 w9 ", "w5 w9\n"], score.tokens, score.probabilities, strict=True
    ):
        prediction = predictor.predict(prefix, top_k=300, include_special=True)
        assert probability == pytest.approx(offered(prediction, token), rel=1e-4), prefix


def test_a_probability_too_small_for_float32_still_counts() -> None:
    # The last word's bias pushes its logit ~200 below the others: exp(-200) is 0 in float32,
    # where a softmax then log would give log(0) and an infinite perplexity.
    arrays = random_arrays(300, 16, 16)
    arrays["output.bias"][299] = -200.0
    weights = weights_from_arrays(arrays, Architecture(300, 16, 16, True))
    probabilities = score_ids(weights, [1, 5, 299])
    assert reference_probabilities(weights, [1, 5, 299])[1] == 0.0  # float32 gives up
    assert 0 < probabilities[1] < 1e-80
    score = score_reading(weights, Reading((1, 5, 299), ("<eos>", "w5", "w299"), ()))
    assert math.isfinite(score.perplexity)
    expected = math.exp(-(math.log(probabilities[0]) + math.log(probabilities[1])) / 2)
    assert score.perplexity == pytest.approx(expected, rel=1e-9)


def test_nothing_to_score() -> None:
    predictor = random_predictor()
    with pytest.raises(ValueError, match="at least two ids"):
        score_ids(predictor.weights, [1])
    for text in ("", "   ", "\n \n"):
        with pytest.raises(NoWordToScore):
            score_reading(predictor.weights, predictor.read(text))


# --- Backend.score ------------------------------------------------------------------------------


def test_backend_scores_as_the_pure_function(predictor: Predictor, reference: Predictor) -> None:
    async def main(backend: Backend) -> tuple[Score, int]:
        score = await backend.score("w5 w9 zebra w7")
        with pytest.raises(NoWordToScore):
            await backend.score(" \n ")
        return score, backend.in_flight

    score, in_flight = run(main, Backend(predictor))
    expected = score_reading(reference.weights, reference.read("w5 w9 zebra w7"))
    assert score.tokens == expected.tokens
    np.testing.assert_allclose(score.probabilities, expected.probabilities, rtol=1e-4)
    assert in_flight == 0


class Gate:
    """Stands in for score_reading in a worker thread: holds there until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(
        self, weights: engine.RnnWeights, reading: Reading, cache: CacheSettings | None = None
    ) -> Score:
        self.entered.set()
        assert self.opened.wait(20), "never opened"
        return score_reading(weights, reading, cache)


def test_a_score_its_caller_gave_up_on_is_in_flight_until_its_thread_ends(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()
    monkeypatch.setattr("app.inference.backend.score_reading", gate)

    async def main(backend: Backend) -> list[object]:
        seen: list[object] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await backend.score("w5 w9")
        seen += [gate.entered.is_set(), backend.in_flight, await backend.wait_idle(0.05)]
        # The loop is free meanwhile: a prediction is answered while the score computes.
        seen.append((await backend.predict(queries(1)[0])).words != ())
        gate.opened.set()
        seen.append(await backend.wait_idle(20))
        seen.append(backend.in_flight)
        return seen

    assert run(main, Backend(predictor)) == [True, 1, False, True, True, 0]


@forks
def test_no_model_process_is_forked_while_a_score_computes(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fork copies only the forking thread: locks the scoring thread holds would stay held.
    gate = Gate()
    monkeypatch.setattr("app.inference.backend.score_reading", gate)

    async def main(backend: Backend) -> tuple[float, float]:
        scoring_task = asyncio.ensure_future(backend.score("w5 w9"))
        await until(gate.entered.is_set)
        await asyncio.gather(*(backend.predict(query) for query in queries(4)))
        forks_while_scoring = backend.stats()["process_forks"]
        gate.opened.set()
        await scoring_task
        await asyncio.gather(*(backend.predict(query) for query in queries(4)))
        return forks_while_scoring, backend.stats()["process_forks"]

    assert run(main, Backend(predictor, model_process=True)) == (0, 1)
