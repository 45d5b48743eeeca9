"""The NumPy engine's pure functions, and the weights it is built from."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.models import random_arrays
from threadpoolctl import threadpool_info

from app.inference import engine
from app.inference.weights import Architecture, weights_from_arrays

# --- softmax and top-k --------------------------------------------------------------------------


def test_softmax_sums_to_one_and_survives_huge_scores() -> None:
    scores = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]], dtype=np.float32)
    probabilities = engine.softmax(scores)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-6)
    assert scores[0, 0] == 1000.0  # not in place unless asked
    returned = engine.softmax(scores, in_place=True)
    assert returned is scores
    np.testing.assert_array_equal(scores, probabilities)


def test_softmax_of_one_row() -> None:
    scores = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    expected = np.exp(scores - 3.0) / np.exp(scores - 3.0).sum()
    np.testing.assert_allclose(engine.softmax(scores), expected, rtol=1e-6)


def test_top_k_is_ordered_and_deterministic() -> None:
    values = np.array([0.1, 0.4, 0.2, 0.4, 0.05], dtype=np.float32)
    assert engine.top_k(values, 3).tolist() == [1, 3, 2]  # equal values: the lower index first
    assert engine.top_k(values, 10).tolist() == [1, 3, 2, 0, 4]  # k above the size: all
    assert engine.top_k(values, 0).tolist() == []


@pytest.mark.parametrize("seed", range(6))
def test_top_k_rows_is_a_full_stable_sort_cut_short(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for width in [1, 2, 5, 63, 64, 65, 128, 200, 10_000]:
        batch = int(rng.integers(1, 6))
        # Few distinct values (many ties), peaked probabilities, or all equal.
        if seed % 3 == 0:
            values = rng.integers(0, 20, (batch, width)).astype(np.float32)
        elif seed % 3 == 1:
            values = engine.softmax(rng.normal(0, 4, (batch, width)).astype(np.float32))
        else:
            values = np.full((batch, width), 0.25, dtype=np.float32)
        ks = [int(k) for k in rng.integers(0, 120, batch)]
        firsts = [int(f) for f in rng.integers(0, min(3, width), batch)]
        got = engine.top_k_rows(values, ks, firsts)
        assert len(got) == batch
        for row, (ids, k, first) in enumerate(zip(got, ks, firsts, strict=True)):
            columns = np.arange(first, width)
            # A stable sort by falling value: equal values stay in index order.
            expected = columns[np.argsort(-values[row, first:], kind="stable")][:k]
            assert ids.tolist() == expected.tolist(), (width, k, first)


def test_top_k_rows_gives_nothing_for_k_0_in_every_row() -> None:
    values = np.ones((2, 300), dtype=np.float32)
    assert [ids.tolist() for ids in engine.top_k_rows(values, [0, 0], [0, 2])] == [[], []]


# --- the forward pass ---------------------------------------------------------------------------

SHAPES = pytest.mark.parametrize(
    ("embed", "hidden", "tied"), [(4, 4, True), (3, 5, True), (3, 5, False)],
    ids=["tied", "projected", "untied"],
)  # fmt: skip


def by_hand(
    arrays: dict[str, np.ndarray], ids: list[int], start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The SimpleRNN written out in float64 from the exported arrays: (state, logits)."""
    a = {name: value.astype(np.float64) for name, value in arrays.items()}
    h = np.zeros(len(a["rnn.bias"])) if start is None else start.astype(np.float64)
    for token in ids:
        x = a["embedding"][token]
        h = np.tanh(x @ a["rnn.input_kernel"] + h @ a["rnn.recurrent_kernel"] + a["rnn.bias"])
    features = h @ a["projection.kernel"] if "projection.kernel" in a else h
    output = a["output.kernel"] if "output.kernel" in a else a["embedding"].T  # tied
    return h, features @ output + a["output.bias"]


@SHAPES
def test_the_forward_pass_is_the_simple_rnn_written_out(
    embed: int, hidden: int, tied: bool
) -> None:
    arrays = random_arrays(7, embed, hidden, tied)
    weights = weights_from_arrays(arrays, Architecture(7, embed, hidden, tied))
    ids = [1, 4, 2, 6, 0]
    expected_state, expected_logits = by_hand(arrays, ids)

    state = engine.run(weights, ids)
    assert state.dtype == np.float32 and state.shape == (hidden,)
    np.testing.assert_allclose(state, expected_state, rtol=1e-5, atol=1e-6)
    scores = engine.logits(weights, state[None])
    assert scores.shape == (1, 7)
    np.testing.assert_allclose(scores[0], expected_logits, rtol=1e-5, atol=1e-5)
    # Read on from a state: the same as reading the whole.
    np.testing.assert_allclose(engine.run(weights, ids[2:], engine.run(weights, ids[:2])), state,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(engine.run(weights, []), np.zeros(hidden, np.float32))


@SHAPES
def test_a_batch_of_sequences_of_any_lengths_reads_each_from_its_own_state(
    embed: int, hidden: int, tied: bool
) -> None:
    arrays = random_arrays(9, embed, hidden, tied, seed=1)
    weights = weights_from_arrays(arrays, Architecture(9, embed, hidden, tied))
    sequences = [[1, 2], [], [1, 3, 5, 7, 8, 2], [4], [1, 2, 3]]
    starts = np.random.default_rng(2).uniform(-1, 1, (len(sequences), hidden)).astype(np.float32)
    before = starts.copy()
    states = engine.run_batch(weights, sequences, starts)
    assert states.shape == (len(sequences), hidden) and states.dtype == np.float32
    np.testing.assert_array_equal(starts, before)  # the states given are not changed
    for ids, start, state in zip(sequences, starts, states, strict=True):
        np.testing.assert_allclose(state, by_hand(arrays, ids, start)[0], rtol=1e-5, atol=1e-6)


def test_rnn_step_writes_where_it_is_told() -> None:
    arrays = random_arrays(5, 4, 4)
    weights = weights_from_arrays(arrays, Architecture(5, 4, 4, tied=True))
    states = np.full((2, 4), 0.5, dtype=np.float32)
    rows = weights.input_table[[1, 3]]
    expected = np.tanh(states.astype(np.float64) @ arrays["rnn.recurrent_kernel"] + rows)
    fresh = engine.rnn_step(weights, rows, states)
    np.testing.assert_allclose(fresh, expected, rtol=1e-5)
    assert states[0, 0] == 0.5  # a new array unless told otherwise
    assert engine.rnn_step(weights, rows, states, out=states) is states
    np.testing.assert_array_equal(states, fresh)


def test_next_words_are_the_softmax_and_its_top_k() -> None:
    arrays = random_arrays(300, 4, 4, tied=True)
    weights = weights_from_arrays(arrays, Architecture(300, 4, 4, tied=True))
    states = engine.run_batch(weights, [[1], [1, 5, 9], [1, 2]], np.zeros((3, 4), np.float32))
    ks, firsts = [3, 1, 300], [2, 0, 2]
    full = engine.softmax(engine.logits(weights, states))
    answers = engine.next_words(weights, states, ks, firsts)
    assert len(answers) == 3
    for row, ((ids, probabilities), k, first) in enumerate(zip(answers, ks, firsts, strict=True)):
        assert ids.tolist() == (engine.top_k(full[row, first:], k) + first).tolist()
        assert probabilities.dtype == np.float32
        assert probabilities.tobytes() == full[row, ids].tobytes()  # not renormalised
    assert len(answers[2][0]) == 298  # k above the words left: all of them


@pytest.mark.parametrize(("tied", "embed"), [(True, 48), (True, 32), (False, 48)],
                         ids=["tied", "projected", "untied"])  # fmt: skip
def test_a_batch_gives_each_row_what_it_gets_alone(tied: bool, embed: int) -> None:
    # A vocabulary large enough for BLAS to block the products, maybe otherwise for a batch.
    arrays = random_arrays(6000, embed, 48, tied)
    # A recurrent kernel of spectral norm 0.9, as a model whose state forgets: at random_arrays'
    # scale the model is chaotic, and the rounding of the first steps grows without bound.
    kernel = arrays["rnn.recurrent_kernel"]
    arrays["rnn.recurrent_kernel"] = kernel * np.float32(0.9 / np.linalg.norm(kernel, 2))
    weights = weights_from_arrays(arrays, Architecture(6000, embed, 48, tied))
    sequences = [[1, *range(2, 2 + i)] for i in range(20)]
    states = engine.run_batch(weights, sequences, np.zeros((len(sequences), 48), np.float32))
    for ids, state in zip(sequences, states, strict=True):
        np.testing.assert_allclose(state, engine.run(weights, ids), rtol=1e-5, atol=1e-6)
    for size in (2, 3, 8, 20):
        batch = engine.logits(weights, states[:size])
        for row, state in zip(batch, states[:size], strict=True):
            alone = engine.logits(weights, state[None])[0]
            np.testing.assert_allclose(row, alone, rtol=1e-5, atol=1e-5)


# --- weights ------------------------------------------------------------------------------------


@SHAPES
def test_the_weights_are_read_only_and_sized_by_the_architecture(
    embed: int, hidden: int, tied: bool
) -> None:
    weights = weights_from_arrays(
        random_arrays(7, embed, hidden, tied), Architecture(7, embed, hidden, tied)
    )
    assert (weights.vocab_size, weights.hidden_units) == (7, hidden)
    for array in (weights.input_table, weights.recurrent_kernel, weights.output_blocks):
        assert not array.flags.writeable  # shared by every request
        with pytest.raises(ValueError):
            array.flat[0] = 0
    assert (weights.projection is not None) == (tied and embed != hidden)


def _without(arrays: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {key: value for key, value in arrays.items() if key != name}


def _with_bad_value(
    arrays: dict[str, np.ndarray], name: str, value: float
) -> dict[str, np.ndarray]:
    broken = arrays[name].copy()
    broken.flat[0] = value
    return {**arrays, name: broken}


ARCHITECTURE = Architecture(7, 3, 5, tied=True)  # projected
ARRAYS = random_arrays(7, 3, 5, tied=True)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (_without(ARRAYS, "projection.kernel"), r"'projection\.kernel' is missing"),
        (_without(ARRAYS, "embedding"), r"'embedding' is missing"),
        ({**ARRAYS, "rnn.bias": np.zeros(4, np.float32)}, r"'rnn\.bias' has shape \(4,\)"),
        ({**ARRAYS, "embedding": ARRAYS["embedding"].T}, r"'embedding' has shape \(3, 7\)"),
        (_with_bad_value(ARRAYS, "embedding", np.nan), r"'embedding' holds NaN or infinite"),
        (_with_bad_value(ARRAYS, "rnn.recurrent_kernel", np.inf), r"'rnn\.recurrent_kernel' hol"),
        (_with_bad_value(ARRAYS, "output.bias", -np.inf), r"'output\.bias' holds NaN"),
        ({**ARRAYS, "output.kernel": np.zeros((5, 7), np.float32)}, r"unexpected.*output\.kernel"),
    ],
    ids=["missing-projection", "missing-embedding", "misshapen-bias", "misshapen-embedding",
         "nan", "inf", "minus-inf", "unexpected"],
)  # fmt: skip
def test_arrays_that_do_not_fit_the_architecture_are_refused(
    arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        weights_from_arrays(arrays, ARCHITECTURE)


def test_an_untied_model_needs_its_output_kernel() -> None:
    arrays = random_arrays(7, 4, 4, tied=False)
    with pytest.raises(ValueError, match=r"'output\.kernel' is missing"):
        weights_from_arrays(_without(arrays, "output.kernel"), Architecture(7, 4, 4, tied=False))


def test_the_architecture_is_read_from_the_manifest() -> None:
    manifest = {"type": "simple_rnn", "vocab_size": 7, "embedding_dim": 3, "hidden_units": 5,
                "tied": True, "dropout": 0.1}  # fmt: skip
    architecture = Architecture.from_manifest(manifest)
    assert architecture == Architecture(7, 3, 5, tied=True) and architecture.projected


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (None, "missing"),
        ({"type": "lstm"}, "'lstm' is not one this server runs"),
        ({"type": "simple_rnn", "vocab_size": 7}, "incomplete"),
        ({"type": "simple_rnn", "vocab_size": 7, "embedding_dim": 3, "hidden_units": 0,
          "tied": True}, "sizes below 1"),
        ({"type": "simple_rnn", "vocab_size": 7, "embedding_dim": 3, "hidden_units": 5,
          "tied": "yes"}, "non-boolean 'tied'"),
        ({"type": "simple_rnn", "vocab_size": "many", "embedding_dim": 3, "hidden_units": 5,
          "tied": True}, "'vocab_size' must be a whole number"),
        ({"type": "simple_rnn", "vocab_size": 7, "embedding_dim": True, "hidden_units": 5,
          "tied": True}, "'embedding_dim' must be a whole number, not True"),
    ],
)  # fmt: skip
def test_an_architecture_this_engine_cannot_run_is_refused(manifest: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Architecture.from_manifest(manifest)


# --- the BLAS under it --------------------------------------------------------------------------


@pytest.mark.skipif("OPENBLAS_CORETYPE" not in os.environ, reason="OPENBLAS_CORETYPE is not set")
def test_openblas_runs_the_kernel_family_it_was_asked_for() -> None:
    # test_blas_kernels.py runs the numeric tests under several kernel families; this checks
    # that the one asked for was the one used (OpenBLAS ignores a name it does not know).
    openblas = [lib for lib in threadpool_info() if lib.get("internal_api") == "openblas"]
    assert openblas, f"NumPy's BLAS is not OpenBLAS: {threadpool_info()}"
    wanted = os.environ["OPENBLAS_CORETYPE"].lower()
    assert {str(lib.get("architecture")).lower() for lib in openblas} == {wanted}
