"""The NumPy engine: its pure functions, how the Predictor reads text, and parity with Keras."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from support.models import TinyModel, train_tiny

from app import store
from app.inference import engine, top_k
from app.inference.predictor import ModelInfo, Predictor
from app.store import ModelStoreError
from app.tokenizer import PRESETS, Tokenizer

# --- pure functions ----------------------------------------------------------------------------


def test_softmax_sums_to_one_and_survives_huge_scores() -> None:
    scores = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]], dtype=np.float32)
    probabilities = engine.softmax(scores)
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-6)
    assert scores[0, 0] == 1000.0  # not in place unless asked
    engine.softmax(scores, in_place=True)
    np.testing.assert_allclose(scores, probabilities)


def test_top_k_is_ordered_and_deterministic() -> None:
    values = np.array([0.1, 0.4, 0.2, 0.4, 0.05], dtype=np.float32)
    assert top_k.top_k(values, 3).tolist() == [1, 3, 2]  # equal values in index order
    assert top_k.top_k(values, 10).tolist() == [1, 3, 2, 0, 4]  # k above the size: all
    assert top_k.top_k(values, 0).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_top_k_rows_is_a_full_sort_cut_short(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for width in [1, 5, 63, 64, 65, 200, 10_000]:
        batch = int(rng.integers(1, 5))
        # Few distinct values in one case (many ties), peaked probabilities in the other.
        if seed % 2:
            values = rng.integers(0, 20, (batch, width)).astype(np.float32)
        else:
            values = engine.softmax(rng.normal(0, 4, (batch, width)).astype(np.float32))
        ks = [int(k) for k in rng.integers(0, 120, batch)]
        firsts = [int(f) for f in rng.integers(0, min(3, width), batch)]
        for row, (got, k, first) in enumerate(
            zip(top_k.top_k_rows(values, ks, firsts), ks, firsts, strict=True)
        ):
            columns = np.arange(first, width)
            expected = columns[np.lexsort((columns, -values[row, first:]))][:k]
            assert got.tolist() == expected.tolist()


def test_next_words_are_the_softmax_and_its_top_k() -> None:
    arrays = _random_arrays(300, 4, 4, tied=True)
    weights = engine.weights_from_arrays(arrays, engine.Architecture(300, 4, 4, True))
    states = np.stack([engine.run(weights, ids) for ids in ([1], [1, 5, 9], [1, 2])])
    answers = engine.next_words(weights, states, [3, 1, 300], [2, 0, 2])
    for state, (ids, probabilities), k, first in zip(
        states, answers, [3, 1, 300], [2, 0, 2], strict=True
    ):
        full = engine.softmax(engine.logits(weights, state))
        assert ids.tolist() == (top_k.top_k(full[first:], k) + first).tolist()
        assert probabilities.tobytes() == full[ids].tobytes()


def _random_arrays(
    vocab: int, embed: int, hidden: int, tied: bool, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.5, shape).astype(np.float32)

    arrays = {
        "embedding": normal(vocab, embed),
        "rnn.input_kernel": normal(embed, hidden),
        "rnn.recurrent_kernel": normal(hidden, hidden),
        "rnn.bias": normal(hidden),
        "output.bias": normal(vocab),
    }
    if tied and embed != hidden:
        arrays["projection.kernel"] = normal(hidden, embed)
    if not tied:
        arrays["output.kernel"] = normal(hidden, vocab)
    return arrays


@pytest.mark.parametrize(
    ("embed", "hidden", "tied"), [(4, 4, True), (3, 5, True), (3, 5, False)],
    ids=["tied", "projected", "untied"],
)  # fmt: skip
def test_forward_pass_is_the_simple_rnn_written_out(embed: int, hidden: int, tied: bool) -> None:
    arrays = _random_arrays(7, embed, hidden, tied)
    weights = engine.weights_from_arrays(arrays, engine.Architecture(7, embed, hidden, tied))
    ids = [1, 4, 2, 6, 0]
    # The same model in float64, step by step, straight from the exported arrays.
    a = {k: v.astype(np.float64) for k, v in arrays.items()}
    h = np.zeros(hidden)
    for token in ids:
        x = a["embedding"][token]
        h = np.tanh(x @ a["rnn.input_kernel"] + h @ a["rnn.recurrent_kernel"] + a["rnn.bias"])
    y = h @ a["projection.kernel"] if "projection.kernel" in a else h
    out = a["embedding"].T if tied else a["output.kernel"]
    expected = y @ out + a["output.bias"]

    state = engine.run(weights, ids)
    assert state.dtype == np.float32 and state.shape == (hidden,)
    np.testing.assert_allclose(engine.logits(weights, state), expected, rtol=1e-5, atol=1e-5)
    # A batch of states gives the very rows one state at a time gives, bit for bit: an answer
    # never depends on the requests it was batched with.
    batch = np.stack([state, engine.run(weights, ids[:2]), state])
    for row, single in zip(engine.logits(weights, batch), [state, batch[1], state], strict=True):
        assert row.tobytes() == engine.logits(weights, single).tobytes()


def test_weights_are_checked_against_the_architecture() -> None:
    architecture = engine.Architecture(7, 3, 5, tied=True)
    arrays = _random_arrays(7, 3, 5, tied=True)
    weights = engine.weights_from_arrays(arrays, architecture)
    assert not weights.input_table.flags.writeable  # shared by every request
    with pytest.raises(ValueError, match=r"'rnn\.bias' has shape"):
        engine.weights_from_arrays({**arrays, "rnn.bias": np.zeros(4, np.float32)}, architecture)
    with pytest.raises(ValueError, match=r"'projection\.kernel' is missing"):
        engine.weights_from_arrays(
            {k: v for k, v in arrays.items() if k != "projection.kernel"}, architecture
        )
    with pytest.raises(ValueError, match="unexpected arrays"):
        engine.weights_from_arrays({**arrays, "output.kernel": np.zeros((5, 7))}, architecture)
    broken = arrays["embedding"].copy()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        engine.weights_from_arrays({**arrays, "embedding": broken}, architecture)
    with pytest.raises(ValueError, match="not one this server runs"):
        engine.Architecture.from_manifest({"type": "lstm"})


# --- the Predictor on a hand-made model ---------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> Predictor:
    vocabulary = ["<unk>", "<eos>", "the", "cat", "sees", "a", "n"]
    tokenizer = Tokenizer(PRESETS["raw"], vocabulary)
    architecture = engine.Architecture(len(vocabulary), 3, 5, tied=True)
    weights = engine.weights_from_arrays(_random_arrays(len(vocabulary), 3, 5, True), architecture)
    info = ModelInfo("small", 1, Path("."), len(vocabulary), {}, {})
    return Predictor(weights, tokenizer, info)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ["<eos>"]),
        ("The cat", ["<eos>", "the", "cat"]),
        ("the cat\nsees", ["<eos>", "the", "cat", "<eos>", "sees"]),
        ("the cat\r\n", ["<eos>", "the", "cat", "<eos>"]),
        ("the\n\n\n cat", ["<eos>", "the", "<eos>", "cat"]),  # blank lines are no sentences
        ("\nthe", ["<eos>", "the"]),  # a break at the start: already a sentence start
        ("the\x00cat\u0007 😀", ["<eos>", "the", "cat", "<unk>"]),
    ],
)
def test_prefix_is_read_as_in_training(small: Predictor, text: str, tokens: list[str]) -> None:
    prefix = small.prefix(text)
    assert prefix.tokens == tokens
    assert prefix.ids == [small.tokenizer.vocabulary.index(t) for t in tokens]


def test_control_characters_are_exactly_unicode_category_cc() -> None:
    # The tokenizer finds them with a regular expression (a per-character category test cost
    # ~60 µs per 1,000 characters of every request); it must be the same set.
    import unicodedata

    from app.tokenizer import _CONTROL

    for code in range(0x110000):
        is_control = unicodedata.category(chr(code)) == "Cc"
        assert is_control == bool(_CONTROL.fullmatch(chr(code))), hex(code)


def test_unknown_words_are_reported_as_the_user_wrote_them(small: Predictor) -> None:
    prefix = small.prefix("The Dragon sees\nthe unicorn <unk>")
    assert prefix.tokens == ["<eos>", "the", "<unk>", "sees", "<eos>", "the", "<unk>", "<unk>"]
    assert prefix.unknown_words == ["dragon", "unicorn"]  # a typed <unk> is not a user word


def test_predictions_are_the_full_softmax_without_special_tokens(small: Predictor) -> None:
    prediction = small.predict("the cat", top_k=3)
    full = small.distribution(small.state_for(prediction.prefix.ids))
    assert full.sum() == pytest.approx(1.0, abs=1e-6)
    words = [w.word for w in prediction.words]
    assert "<unk>" not in words and "<eos>" not in words
    best_words = [i for i in np.argsort(-full) if i >= 2][:3]
    assert words == [small.tokenizer.vocabulary[i] for i in best_words]
    for item in prediction.words:
        assert item.probability == pytest.approx(full[small.tokenizer.vocabulary.index(item.word)])
    everything = small.predict("the cat", top_k=100, include_special=True)
    assert len(everything.words) == 7
    assert {w.word for w in everything.words} >= {"<unk>", "<eos>"}
    assert small.predict("the cat", top_k=3) == prediction  # deterministic
    with pytest.raises(ValueError, match="top_k"):
        small.predict("the cat", top_k=0)


# --- the trained tiny models --------------------------------------------------------------------


@pytest.mark.slow
def test_trained_model_learned_the_pattern(tiny_model: TinyModel) -> None:
    predictor = Predictor.load(tiny_model.store, tiny_model.name, tiny_model.version)
    # Every object in the corpus starts with "the" or "a"; every sentence with a subject.
    assert predictor.predict("my friend likes").words[0].word in {"the", "a"}
    assert predictor.predict("").words[0].word in {"the", "a", "my", "our"}


@pytest.fixture(scope="module")
def variants(tiny_model: TinyModel, corpus_file: Path) -> dict[str, TinyModel]:
    """The three output layers: tied (E = H), tied with a projection (E != H), untied."""
    return {
        "tied": tiny_model,
        "projected": train_tiny(
            corpus_file, tiny_model.store, "projected", hidden_units=24, epochs=1
        ),
        "untied": train_tiny(corpus_file, tiny_model.store, "untied", tied=False, epochs=1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tied", "projected", "untied"])
def test_numpy_engine_matches_keras(variants: dict[str, TinyModel], variant: str) -> None:
    import keras

    import app.training.model  # noqa: F401  (registers the custom layer for loading)

    model_files = variants[variant]
    predictor = Predictor.load(model_files.store, model_files.name, model_files.version)
    architecture = predictor.info.architecture
    assert architecture["tied"] == (variant != "untied")
    assert ("projection.kernel" in store.load_weights(model_files.path)) == (variant == "projected")
    keras_model = keras.saving.load_model(model_files.path / store.KERAS_MODEL)
    hidden = architecture["hidden_units"]
    texts = ["", "the cat", "my friend likes a dragon", "the dog sees a tree\nour neighbour helps"]
    for text in texts:
        ids = predictor.prefix(text).ids
        scores, _ = keras_model(
            [np.array([ids], dtype=np.int32), np.zeros((1, hidden), np.float32)], training=False
        )
        expected = _softmax64(keras.ops.convert_to_numpy(scores)[0, -1])
        actual = predictor.distribution(predictor.state_for(ids))
        np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=f"text {text!r}")


def _softmax64(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores.astype(np.float64) - scores.max())
    return exp / exp.sum()


# --- loading refuses models that do not fit together ---------------------------------------------


def _rewrite(path: Path, name: str, content: bytes) -> None:
    """Replace one file of a version and fix its sha256, as a careless copy might."""
    (path / name).write_bytes(content)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"][name] = store.sha256_file(path / name)
    (path / store.MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def copied(tiny_model: TinyModel, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "store" / "tiny" / "1"
    shutil.copytree(tiny_model.path, target)
    return target


@pytest.mark.slow
def test_weights_of_another_shape_are_refused(copied: Path) -> None:
    from safetensors.numpy import save_file

    arrays = store.load_weights(copied)
    arrays["rnn.bias"] = np.zeros(3, np.float32)
    save_file(arrays, copied / store.WEIGHTS)
    _rewrite(copied, store.WEIGHTS, (copied / store.WEIGHTS).read_bytes())
    with pytest.raises(ModelStoreError, match=r"weights\.safetensors does not fit .*'rnn\.bias'"):
        Predictor.load(copied.parents[1], "tiny", 1)


@pytest.mark.slow
def test_a_tokenizer_of_another_model_is_refused(copied: Path) -> None:
    tokenizer = Tokenizer.load(copied / store.TOKENIZER)
    smaller = Tokenizer(tokenizer.config, tokenizer.vocabulary[:-1])
    _rewrite(copied, store.TOKENIZER, smaller.to_json().encode())
    with pytest.raises(ModelStoreError, match=r"tokenizer\.json has \d+ words"):
        Predictor.load(copied.parents[1], "tiny", 1)


@pytest.mark.slow
def test_an_unknown_architecture_is_refused(copied: Path) -> None:
    manifest = json.loads((copied / store.MANIFEST).read_text())
    manifest["architecture"]["type"] = "transformer"
    (copied / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match=r"manifest\.json: architecture type 'transformer'"):
        Predictor.load(copied.parents[1], "tiny", 1)


@pytest.mark.parametrize(("tied", "embed"), [(True, 48), (True, 32), (False, 48)])
def test_a_batch_gives_the_rows_of_one_state_at_a_time_for_a_large_vocabulary(
    tied: bool, embed: int
) -> None:
    # Large enough for BLAS to block the product (it may do so differently for a batch).
    arrays = _random_arrays(6000, embed, 48, tied)
    weights = engine.weights_from_arrays(arrays, engine.Architecture(6000, embed, 48, tied))
    per_row = _per_row(weights, arrays, tied)
    for each in (weights, per_row):
        states = np.stack([engine.run(each, [1, i, 2 * i]) for i in range(1, 20)])
        batch = engine.logits(each, states)
        for state, row in zip(states, batch, strict=True):
            assert row.tobytes() == engine.logits(each, state).tobytes()
        # And the recurrent steps: a batch's rows are the states read one at a time.
        texts = [[1, *range(2, 2 + i)] for i in range(12)]
        zeros = np.zeros((len(texts), 48), np.float32)
        for text, row in zip(texts, engine.run_many(each, texts, zeros), strict=True):
            assert row.tobytes() == engine.run(each, text).tobytes()


def test_batched_products_are_chosen_here_and_agree_with_products_per_row() -> None:
    arrays = _random_arrays(3000, 32, 48, tied=True)
    weights = engine.weights_from_arrays(arrays, engine.Architecture(3000, 32, 48, True))
    # NumPy's OpenBLAS sums each entry of a matrix product in one order whatever the batch:
    # the probe finds so, and the output kernel is kept in blocks.
    assert weights.batched
    assert weights.output_kernel.shape == (-(-3000 // engine.OUTPUT_BLOCK), 32, engine.OUTPUT_BLOCK)
    per_row = _per_row(weights, arrays, True)
    states = np.stack([engine.run(weights, [1, i]) for i in range(2, 9)])
    np.testing.assert_allclose(
        engine.logits(weights, states), engine.logits(per_row, states), rtol=1e-5, atol=1e-5
    )


def test_a_blas_that_sums_a_batch_in_another_order_gets_products_per_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for such a BLAS: a matrix product whose rows move with the batch's size.
    product = np.matmul

    def batch_dependent(a: np.ndarray, b: np.ndarray, **kwargs: object) -> np.ndarray:
        out = product(a, b, **kwargs)
        if a.ndim == 2 and len(a) > 2:
            out = out * np.float32(1 + 1e-6)
        return out

    monkeypatch.setattr(engine.np, "matmul", batch_dependent)
    arrays = _random_arrays(300, 8, 8, tied=True)
    weights = engine.weights_from_arrays(arrays, engine.Architecture(300, 8, 8, True))
    assert not weights.batched
    assert weights.output_kernel.shape == (8, 300) and weights.output_kernel.flags.c_contiguous


def _per_row(
    weights: engine.RnnWeights, arrays: dict[str, np.ndarray], tied: bool
) -> engine.RnnWeights:
    """The same weights with products taken per row (what a BLAS that fails the probe gets)."""
    kernel = arrays["embedding"].T if tied else arrays["output.kernel"]
    return replace(weights, output_kernel=np.ascontiguousarray(kernel), batched=False)
