"""The continuous cache: its distribution, the mixture, the exact evaluation and the grid that tunes
it, the settings stored with a model, and the commands (random models: no corpus needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.models import random_arrays

from app import store, store_edits
from app.cli import main
from app.evaluation import continuous_cache as evaluation
from app.evaluation.continuous_cache import cache_probabilities, mix
from app.inference import engine
from app.inference.distribution import CacheSettings
from app.inference.engine import RnnWeights
from app.inference.loading import load_predictor
from app.inference.weights import Architecture, weights_from_arrays
from app.store import ModelStoreError
from app.tokenizer import PRESETS, Tokenizer

VOCABULARY = ["<unk>", "<eos>", *(f"w{i}" for i in range(2, 30))]
HIDDEN = 8


def random_weights(seed: int = 0) -> RnnWeights:
    arrays = random_arrays(len(VOCABULARY), HIDDEN, HIDDEN, seed=seed)
    return weights_from_arrays(arrays, Architecture(len(VOCABULARY), HIDDEN, HIDDEN, True))


def slow_cache(query: np.ndarray, states: np.ndarray, next_ids: np.ndarray, theta: float) -> list:
    """p_cache by the paper's formula, one pair at a time in float64."""
    weights = [math.exp(theta * float(np.dot(query, state))) for state in states]
    out = [0.0] * len(VOCABULARY)
    for weight, next_id in zip(weights, next_ids, strict=True):
        out[int(next_id)] += weight / sum(weights)
    return out


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [(0, 0.1, 0.1), (-5, 0.1, 0.1), (2.5, 0.1, 0.1), (True, 0.1, 0.1), (10, 0, 0.1),
     (10, -1, 0.1), (10, math.nan, 0.1), (10, "0.1", 0.1), (10, 0.1, 1), (10, 0.1, -0.01),
     (10, 0.1, math.inf), (10, 0.1, None)],
)  # fmt: skip
def test_unusable_settings_are_refused(values: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ValueError, match="continuous cache"):
        CacheSettings(*values)


def test_settings_round_trip_through_a_dict() -> None:
    settings = CacheSettings(700, 0.175, 0.15)
    assert CacheSettings.from_dict(settings.to_dict()) == settings
    described = {**settings.to_dict(), "tuned_on": "valid.txt", "valid_perplexity": 107.1}
    assert CacheSettings.from_dict(described) == settings
    assert CacheSettings.from_dict({"size": 5, "theta": 1, "weight": 0}).theta == 1.0
    payloads: list[Any] = [[], "size", {"size": 5, "theta": 0.1}]
    for payload in payloads:
        with pytest.raises(ValueError, match="continuous cache settings"):
            CacheSettings.from_dict(payload)


# --- the distribution and the mixture -----------------------------------------------------------


def test_the_cache_distribution_is_the_papers_formula() -> None:
    rng = np.random.default_rng(1)
    queries = rng.uniform(-1, 1, (3, HIDDEN)).astype(np.float32)
    states = rng.uniform(-1, 1, (25, HIDDEN)).astype(np.float32)
    next_ids = rng.integers(0, 6, 25)  # few ids: most are shared by several pairs
    found = cache_probabilities(queries, states, next_ids, 0.7, len(VOCABULARY))
    assert found.shape == (3, len(VOCABULARY)) and found.dtype == np.float32
    for row, query in enumerate(queries):
        np.testing.assert_allclose(found[row], slow_cache(query, states, next_ids, 0.7), atol=1e-6)
    # States of float16 (as a served memory may keep them) are read as float32.
    half = cache_probabilities(queries, states.astype(np.float16), next_ids, 0.7, len(VOCABULARY))
    np.testing.assert_allclose(half, found, atol=2e-3)


def test_a_sharp_cache_neither_overflows_nor_loses_its_best_pair() -> None:
    rng = np.random.default_rng(2)
    states = rng.uniform(-1, 1, (40, HIDDEN)).astype(np.float32) * 30  # scores in the thousands
    next_ids = np.arange(40) % 30
    found = cache_probabilities(states[:2], states, next_ids, 1000.0, len(VOCABULARY))
    assert np.isfinite(found).all()
    np.testing.assert_allclose(found.sum(axis=1), 1, rtol=1e-6)
    closest = next_ids[np.argmax(states[:2] @ states.T, axis=1)]  # all there is at this θ
    np.testing.assert_allclose(found[[0, 1], closest], 1)


def test_an_empty_memory_leaves_the_model_alone() -> None:
    nothing = np.empty((0, HIDDEN))
    empty = cache_probabilities(np.ones((2, HIDDEN)), nothing, np.empty(0, int), 1, 30)
    assert empty.shape == (2, 30) and not empty.any()
    model = engine.softmax(np.random.default_rng(3).normal(size=(2, 30)).astype(np.float32))
    np.testing.assert_array_equal(mix(model, empty, 0.3, has_memory=False), model)


def test_the_mixture_is_a_distribution_and_favours_words_in_the_memory() -> None:
    rng = np.random.default_rng(4)
    model = engine.softmax(rng.normal(size=(3, 30)).astype(np.float32))
    states = rng.uniform(-1, 1, (6, HIDDEN)).astype(np.float32)
    next_ids = np.array([7, 7, 9, 7, 12, 9])
    cache = cache_probabilities(rng.uniform(-1, 1, (3, HIDDEN)), states, next_ids, 0.5, 30)
    mixed = mix(model, cache, 0.25, has_memory=np.array([True, False, True]))
    np.testing.assert_allclose(mixed.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(mixed[1], model[1])  # a row without memory
    seen, unseen = [7, 9, 12], [i for i in range(30) if i not in (7, 9, 12)]
    assert (mixed[[0, 2]][:, seen] > model[[0, 2]][:, seen]).all()
    np.testing.assert_allclose(mixed[[0, 2]][:, unseen], 0.75 * model[[0, 2]][:, unseen])


# --- evaluation over a stream -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_ids() -> np.ndarray:
    """A text that repeats itself with variations, as articles repeat their names."""
    rng = np.random.default_rng(5)
    phrase = rng.integers(2, 30, 12)
    ids = np.concatenate([np.where(rng.random(12) < 0.2, rng.integers(0, 30, 12), phrase)
                          for _ in range(15)])  # fmt: skip
    return ids.astype(np.int32)


def test_the_stream_is_the_model_read_from_the_start(stream_ids: np.ndarray) -> None:
    weights = random_weights()
    stream = evaluation.read_stream(weights, stream_ids[:60])
    for t in (0, 1, 30, 58):  # every prefix read again from zeros, as the server would
        state = engine.run(weights, stream_ids[: t + 1].tolist())
        np.testing.assert_allclose(stream.states[t], state, atol=1e-5)
        probabilities = engine.softmax(engine.logits(weights, state[None]))[0]
        assert stream.model_probabilities[t] == pytest.approx(probabilities[stream_ids[t + 1]])
    with pytest.raises(ValueError, match="two tokens"):
        evaluation.read_stream(weights, stream_ids[:1])


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_the_evaluation_mixes_the_last_pairs_before_each_position(
    stream_ids: np.ndarray, size: int
) -> None:
    weights = random_weights()
    stream = evaluation.read_stream(weights, stream_ids)
    settings = CacheSettings(size, 0.8, 0.3)
    expected = [stream.model_probabilities[0]]  # position 0: nothing before it
    for t in range(1, stream.tokens):
        first = max(0, t - size)
        p_cache = slow_cache(
            stream.states[t], stream.states[first:t], stream.targets[first:t], 0.8
        )[stream.targets[t]]
        expected.append(0.7 * stream.model_probabilities[t] + 0.3 * p_cache)
    result = evaluation.evaluate(weights, stream, settings)
    assert result.tokens == len(stream_ids) - 1
    assert result.perplexity == pytest.approx(evaluation.perplexity(np.array(expected)), rel=1e-5)
    assert result.perplexity_without == pytest.approx(
        evaluation.perplexity(stream.model_probabilities)
    )


def test_with_weight_zero_the_cache_changes_nothing(stream_ids: np.ndarray) -> None:
    weights = random_weights()
    stream = evaluation.read_stream(weights, stream_ids)
    result = evaluation.evaluate(weights, stream, CacheSettings(50, 0.5, 0.0))
    assert result.perplexity == pytest.approx(result.perplexity_without, rel=1e-6)


def test_the_grid_agrees_with_the_exact_evaluation_and_finds_the_repeats(
    stream_ids: np.ndarray,
) -> None:
    weights = random_weights()
    stream = evaluation.read_stream(weights, stream_ids)
    tuning = evaluation.tune(stream, sizes=(5, 40, 500), thetas=(0.1, 1.0), weights=(0.0, 0.5))
    assert len(tuning.table) == 12 and tuning.table[0].perplexity == tuning.best_perplexity
    assert [p.perplexity for p in tuning.table] == sorted(p.perplexity for p in tuning.table)
    for point in tuning.table:
        settings = CacheSettings(point.size, point.theta, point.weight)
        exact = evaluation.evaluate(weights, stream, settings).perplexity
        assert point.perplexity == pytest.approx(exact, rel=1e-5)
    # The text repeats itself: a cache that remembers a repeat beats the model alone.
    assert tuning.best.weight == 0.5 and tuning.best.size >= 40
    assert tuning.best_perplexity < 0.8 * tuning.perplexity_without


# --- stored with the model ----------------------------------------------------------------------


def publish_random(model_store: Path) -> Path:
    def write(folder: Path) -> dict[str, Any]:
        save_file(random_arrays(len(VOCABULARY), HIDDEN, HIDDEN), folder / store.WEIGHTS)
        Tokenizer(PRESETS["raw"], VOCABULARY).save(folder / store.TOKENIZER)
        architecture = dict(type="simple_rnn", vocab_size=len(VOCABULARY),
                            embedding_dim=HIDDEN, hidden_units=HIDDEN, tied=True)  # fmt: skip
        return {"architecture": architecture, "metrics": {"test": {"perplexity": 30.0}}}

    return store.publish(model_store, "small", write).path


def attach_settings(path: Path, content: bytes, metrics: dict[str, Any] | None = None) -> None:
    store_edits.attach(path, store.CONTINUOUS_CACHE, content, metrics or {}, retired=("cache",))


def test_stored_settings_reach_the_model_info_and_survive_promotion(tmp_path: Path) -> None:
    path = publish_random(tmp_path)
    weights_sha = store.sha256_file(path / store.WEIGHTS)
    assert load_predictor(tmp_path, "small").info.continuous_cache is None
    attach_settings(path, b'{"size": 9, "theta": 0.5, "weight": 0.2, "tuned_on": "x"}',
                    {"cache": {"perplexity": 1.0}, "other": 2})  # fmt: skip
    attach_settings(path, b'{"size": 7, "theta": 0.5, "weight": 0.2}', {"other": 3})
    info = load_predictor(tmp_path, "small").info
    assert info.continuous_cache == CacheSettings(7, 0.5, 0.2)
    # The old figure went with the old settings; the training metrics stayed.
    assert info.metrics == {"test": {"perplexity": 30.0}, "other": 3}
    manifest = store.read_manifest(path)
    assert list(manifest["files"]) == sorted(manifest["files"])
    assert manifest["files"][store.WEIGHTS] == weights_sha
    assert store.sha256_file(path / store.WEIGHTS) == weights_sha
    assert sorted(p.name for p in path.iterdir()) == sorted([*manifest["files"], store.MANIFEST])
    copy = store_edits.promote(path, tmp_path, "copied")
    assert load_predictor(tmp_path, "copied").info.continuous_cache == CacheSettings(7, 0.5, 0.2)
    assert copy.version == 1


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", b"\xff\xfe", b'{"size": 0, "theta": 0.5, "weight": 0.2}',
     b'{"size": 9, "theta": 0.5}', b'{"size": 9, "theta": 0.5, "weight": 1.0}'],
)  # fmt: skip
def test_a_malformed_settings_file_refuses_the_version(tmp_path: Path, content: bytes) -> None:
    attach_settings(publish_random(tmp_path), content)
    with pytest.raises(ModelStoreError, match=store.CONTINUOUS_CACHE) as refused:
        load_predictor(tmp_path, "small")
    assert "\n" not in str(refused.value)


def test_a_settings_file_its_manifest_does_not_match_refuses_the_version(tmp_path: Path) -> None:
    path = publish_random(tmp_path)
    attach_settings(path, b'{"size": 9, "theta": 0.5, "weight": 0.2}')
    (path / store.CONTINUOUS_CACHE).write_text('{"size": 90, "theta": 0.5, "weight": 0.2}')
    with pytest.raises(ModelStoreError, match=r"continuous_cache\.json does not match the sha256"):
        load_predictor(tmp_path, "small")


def test_a_settings_file_the_manifest_does_not_list_is_not_part_of_the_version(
    tmp_path: Path,
) -> None:
    path = publish_random(tmp_path)
    (path / store.CONTINUOUS_CACHE).write_text('{"size": 9, "theta": 0.5, "weight": 0.2}')
    assert load_predictor(tmp_path, "small").info.continuous_cache is None


@pytest.mark.parametrize("name", [store.WEIGHTS, store.MANIFEST, "../x.json", ""])
def test_only_extra_files_can_be_attached(tmp_path: Path, name: str) -> None:
    path = publish_random(tmp_path)
    with pytest.raises(ModelStoreError, match="cannot be added"):
        store_edits.attach(path, name, b"{}", {})


# --- the commands -------------------------------------------------------------------------------


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exited:  # argparse's own errors exit rather than return
        return int(exited.code or 0)


@pytest.fixture
def text_file(tmp_path: Path, stream_ids: np.ndarray) -> Path:
    words = Tokenizer(PRESETS["raw"], VOCABULARY).decode(stream_ids.tolist())
    lines = " ".join(words).replace("<eos>", "\n").splitlines()
    path = tmp_path / "text.txt"
    path.write_text("\n".join(line for line in lines if line.strip()) + "\n")
    return path


def test_tune_cache_stores_the_best_settings_and_evaluate_uses_them(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = publish_random(tmp_path / "store")
    weights_sha = store.sha256_file(path / store.WEIGHTS)
    model = ["--store", str(tmp_path / "store"), "--name", "small", "--version", "1"]
    argv = ["tune-cache", "--valid", str(text_file), "--test", str(text_file), *model,
            "--sizes", "5,50", "--thetas", "0.5,1", "--weights", "0.1,0.4"]  # fmt: skip
    assert exit_status(argv) == 0
    stored = json.loads((path / store.CONTINUOUS_CACHE).read_text())
    info = load_predictor(tmp_path / "store", "small").info
    assert info.continuous_cache == CacheSettings.from_dict(stored)
    assert stored["tuned_on"] == str(text_file)
    assert info.metrics["test_continuous_cache"]["perplexity"] == stored["test_perplexity"]
    assert store.sha256_file(path / store.WEIGHTS) == weights_sha
    capsys.readouterr()
    assert exit_status(["evaluate", str(text_file), "--continuous-cache", *model]) == 0
    printed = capsys.readouterr().out
    assert f"perplexity {stored['test_perplexity']:.2f} with the continuous cache" in printed
    assert f"{stored['test_perplexity_without']:.2f} without" in printed


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--thetas", "0"], "theta"), (["--weights", "1"], "weight"), (["--sizes", "a"], "--sizes"),
     (["--sizes", "0"], "size"), (["--valid", "missing.txt"], "missing.txt"),
     (["--test", "missing.txt"], "missing.txt"), (["--name", "absent"], "absent")],
)  # fmt: skip
def test_tune_cache_refuses_bad_input_in_one_line_and_stores_nothing(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str],
    flags: list[str], named: str,
) -> None:  # fmt: skip
    path = publish_random(tmp_path / "store")
    manifest = (path / store.MANIFEST).read_bytes()
    argv = ["tune-cache", "--valid", str(text_file), "--store", str(tmp_path / "store"),
            "--name", "small", *flags]  # fmt: skip
    assert exit_status(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("nextword: error:") and named in error and error.count("\n") == 1
    assert (path / store.MANIFEST).read_bytes() == manifest
    assert not (path / store.CONTINUOUS_CACHE).exists()


def test_evaluate_with_the_cache_needs_stored_settings(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_random(tmp_path)
    model = ["--store", str(tmp_path), "--name", "small"]
    assert exit_status(["evaluate", str(text_file), "--continuous-cache", *model]) == 2
    error = capsys.readouterr().err
    assert "tune-cache" in error and error.count("\n") == 1
    argv = ["evaluate", str(text_file), "--continuous-cache", "--keystrokes", *model]
    assert exit_status(argv) == 2
    assert "--keystrokes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_numpy_stream_scores_a_text_as_the_keras_evaluation(
    tiny_model: Any, corpus_file: Path
) -> None:
    pytest.importorskip("keras")
    import keras

    import app.training.model  # noqa: F401  (registers the custom layer for loading)
    from app.training.corpus import read_lines
    from app.training.evaluate import evaluate_ids

    predictor = load_predictor(tiny_model.store, tiny_model.name, tiny_model.version)
    ids = predictor.tokenizer.encode_lines(read_lines(corpus_file)[-200:])
    stream = evaluation.read_stream(predictor.weights, ids)
    model = keras.saving.load_model(tiny_model.path / store.KERAS_MODEL)
    metrics = evaluate_ids(model, ids, predictor.weights.hidden_units)
    assert stream.tokens == metrics.tokens
    assert evaluation.perplexity(stream.model_probabilities) == pytest.approx(
        metrics.perplexity, rel=1e-4
    )
