"""The language model's forward pass in NumPy: what the server runs instead of TensorFlow.

The same arithmetic as the Keras model in `app.training.model`, over the weights it exports
(`export_weights`, saved as weights.safetensors):

    id ── row of the input table (vocab, hidden) ──────┐
    state (hidden,) ── · recurrent kernel (hidden, hidden) ─┴─ + bias ── tanh ── next state
    state ── [· projection (hidden, embedding)] ── · output kernel (.., vocab) + bias ── logits

The input table is embedding · input kernel, computed once at load: Keras multiplies every
step's embedding vector by the input kernel, which is the same as picking that word's row.

Everything here is a pure function of its arguments, float32 throughout, and the weights are
read-only, so one `RnnWeights` can serve many threads at once.

A batch of states gives, row for row, the very bits one state gives: the products are done as a
stack of matrix-vector products, never as one matrix-matrix product (BLAS sums those in another
order, which moves probabilities by up to 2e-6), so an answer never depends on which other
requests shared its batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT = np.float32


@dataclass(frozen=True)
class Architecture:
    """The sizes a manifest promises; the weights are checked against them."""

    vocab_size: int
    embedding_dim: int
    hidden_units: int
    tied: bool

    @property
    def projected(self) -> bool:
        return self.tied and self.embedding_dim != self.hidden_units

    @classmethod
    def from_manifest(cls, architecture: Any) -> Architecture:
        """Raises ValueError when the manifest describes a model this engine cannot run."""
        if not isinstance(architecture, Mapping):
            raise ValueError("the architecture is missing")
        kind = architecture.get("type")
        if kind != "simple_rnn":
            raise ValueError(f"architecture type {kind!r} is not one this server runs (simple_rnn)")
        try:
            sizes = {
                key: int(architecture[key])
                for key in ("vocab_size", "embedding_dim", "hidden_units")
            }
            tied = architecture["tied"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"architecture is incomplete ({error!r})") from None
        if not isinstance(tied, bool) or min(sizes.values()) < 1:
            raise ValueError("architecture has sizes below 1 or a non-boolean 'tied'")
        return cls(tied=tied, **sizes)


@dataclass(frozen=True)
class RnnWeights:
    """Everything the forward pass reads, in the layout it reads it."""

    input_table: np.ndarray  # (vocab, hidden): embedding · input kernel
    recurrent_kernel: np.ndarray  # (hidden, hidden)
    bias: np.ndarray  # (hidden,)
    projection: np.ndarray | None  # (hidden, embedding) when tied and the sizes differ
    output_kernel: np.ndarray  # (hidden or embedding, vocab), C order; tied: embeddingᵀ
    output_bias: np.ndarray  # (vocab,)

    @property
    def vocab_size(self) -> int:
        return int(self.output_bias.shape[0])

    @property
    def hidden_units(self) -> int:
        return int(self.recurrent_kernel.shape[0])


def weights_from_arrays(arrays: Mapping[str, np.ndarray], architecture: Architecture) -> RnnWeights:
    """Check the exported arrays against the architecture and lay them out for the engine.

    Raises ValueError naming the first array that is missing, misshapen or not finite.
    """
    vocab, embed, hidden = (
        architecture.vocab_size,
        architecture.embedding_dim,
        architecture.hidden_units,
    )
    expected: dict[str, tuple[int, ...]] = {
        "embedding": (vocab, embed),
        "rnn.input_kernel": (embed, hidden),
        "rnn.recurrent_kernel": (hidden, hidden),
        "rnn.bias": (hidden,),
        "output.bias": (vocab,),
    }
    if architecture.projected:
        expected["projection.kernel"] = (hidden, embed)
    if not architecture.tied:
        expected["output.kernel"] = (hidden, vocab)
    unexpected = sorted(set(arrays) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected arrays {unexpected} for this architecture")
    checked: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        if name not in arrays:
            raise ValueError(f"array {name!r} is missing")
        array = np.ascontiguousarray(arrays[name], dtype=FLOAT)
        if array.shape != shape:
            raise ValueError(f"array {name!r} has shape {array.shape}, expected {shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"array {name!r} holds NaN or infinite values")
        checked[name] = array

    embedding = checked["embedding"]
    # Tied: logits = y · embeddingᵀ, as a copy in C order rather than the transposed view: a
    # vector times it is ~1.4x faster (0.19 vs 0.27 ms for 10,000 x 256 here), and a batch
    # never needs a copy made (NumPy may copy a strided operand of a stacked product). The
    # embedding itself is not kept: the input table replaces it.
    output_kernel = (
        checked["output.kernel"] if not architecture.tied else np.ascontiguousarray(embedding.T)
    )
    weights = RnnWeights(
        input_table=embedding @ checked["rnn.input_kernel"],
        recurrent_kernel=checked["rnn.recurrent_kernel"],
        bias=checked["rnn.bias"],
        projection=checked.get("projection.kernel"),
        output_kernel=output_kernel,
        output_bias=checked["output.bias"],
    )
    for array in vars(weights).values():
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # shared by every request: nothing may change it
    return weights


def rnn_step(
    input_row: np.ndarray, state: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """One SimpleRNN step: h_t = tanh(x_t · W_xh + h_{t-1} · W_hh + b).

    `input_row` is x_t · W_xh, already looked up in the input table. Works on one state
    (hidden,) or a batch (batch, hidden).
    """
    # In place on the one new array; the same sums in the same order as
    # tanh(input_row + state @ recurrent_kernel + bias), so the same bits.
    out = _rows_times(state, recurrent_kernel)
    out += input_row
    out += bias
    return np.tanh(out, out=out)


def run(weights: RnnWeights, ids: Sequence[int], state: np.ndarray | None = None) -> np.ndarray:
    """The state after reading `ids` from `state` (zeros when None): (hidden,)."""
    if state is None:
        state = np.zeros(weights.hidden_units, dtype=FLOAT)
    for token in ids:
        state = rnn_step(weights.input_table[token], state, weights.recurrent_kernel, weights.bias)
    return state


def run_many(
    weights: RnnWeights, sequences: Sequence[Sequence[int]], states: np.ndarray
) -> np.ndarray:
    """Row r is `run(weights, sequences[r], states[r])`, bit for bit: (batch, hidden).

    The rows step together, one stacked product a step for the rows still reading (longest
    first, so those are always the leading rows): a batch of texts costs about as many NumPy
    calls as its longest text, not as all of its words.
    """
    order = sorted(range(len(sequences)), key=lambda row: -len(sequences[row]))
    lengths = [len(sequences[row]) for row in order]
    current = states[order]  # a copy, in that order
    for step in range(lengths[0] if lengths else 0):
        reading = sum(1 for length in lengths if length > step)
        ids = [sequences[row][step] for row in order[:reading]]
        current[:reading] = rnn_step(
            weights.input_table[ids], current[:reading], weights.recurrent_kernel, weights.bias
        )
    out = np.empty_like(current)
    out[order] = current
    return out


def logits(weights: RnnWeights, states: np.ndarray) -> np.ndarray:
    """Output-layer scores for one state (hidden,) -> (vocab,) or a batch -> (batch, vocab)."""
    features = states if weights.projection is None else _rows_times(states, weights.projection)
    scores = _rows_times(features, weights.output_kernel)
    scores += weights.output_bias
    return scores


def next_words(
    weights: RnnWeights, states: np.ndarray, ks: Sequence[int], firsts: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each state (batch, hidden): the ks[r] most likely next ids from firsts[r] on, most
    likely first, and their probabilities over the whole vocabulary (float32)."""
    probabilities = softmax(logits(weights, states), in_place=True)
    best = top_k_rows(probabilities, ks, firsts)
    return [(ids, probabilities[row, ids]) for row, ids in enumerate(best)]


def _rows_times(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Each row times `matrix` as a matrix-vector product: (n,) -> (m,), (batch, n) -> (batch, m).

    (batch, 1, n) @ (n, m) makes NumPy call BLAS gemv once per row, in one call, so every row
    is bit for bit what `row @ matrix` gives. A matrix-matrix product gives other bits, and
    gains little: OpenBLAS packs the 10 MB output kernel on every call (measured for 32 rows:
    3.4 ms against 4.6 ms; for 2 rows, 1.6 ms against 0.3 ms).
    """
    if rows.ndim == 1:
        return rows @ matrix
    return np.matmul(rows[:, None, :], matrix)[:, 0, :]


def softmax(scores: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Probabilities over the last axis; with in_place, `scores` is overwritten (no copy).

    The maximum is subtracted first so exp never overflows, whatever the scores.
    """
    out = scores if in_place else scores.copy()
    out -= out.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, largest first (equal values in index order)."""
    return top_k_rows(values[None, :], [k], [0])[0]


# Columns per block when bounding the k-th largest value of a row (see top_k_rows).
_BLOCK = 64


def top_k_rows(values: np.ndarray, ks: Sequence[int], firsts: Sequence[int]) -> list[np.ndarray]:
    """For each row r of `values` (batch, n): the indices of its ks[r] largest values among
    columns firsts[r] and after, largest first, equal values in index order.

    A sort, or even argpartition (~100 µs for 10,000 values), is more than a request needs.
    Instead, deal the columns into groups of 64 (column j to group j mod groups): K values reach
    the K-th largest group maximum (one in each of K groups), so the K largest values are all at
    or above it. Only the few columns there are sorted, for the whole batch at once.
    """
    batch, width = values.shape
    most = min(max(ks, default=0), width)
    if most <= 0:
        return [np.empty(0, dtype=np.intp) for _ in range(batch)]
    lead = max(firsts)  # the columns before it are few (the special tokens): always candidates
    region = values[:, lead:]
    blocks = region.shape[1] // _BLOCK
    if blocks > most:
        # (batch, 64, blocks) -> (batch, blocks): a maximum over 64 rows, SIMD across columns.
        block_max = region[:, : blocks * _BLOCK].reshape(batch, _BLOCK, blocks).max(axis=1)
        tail = region[:, blocks * _BLOCK :]
        if tail.shape[1]:
            block_max = np.concatenate([block_max, tail.max(axis=1, keepdims=True)], axis=1)
        count = block_max.shape[1]
        bound = np.partition(block_max, count - most, axis=1)[:, count - most]
        flat = np.flatnonzero(region >= bound[:, None])  # much faster than a 2-D nonzero
    else:  # fewer groups than values wanted: every column is a candidate
        flat = np.arange(region.size)
    rows, columns = np.divmod(flat, region.shape[1])
    columns += lead
    extra = [(r, c) for r, first in enumerate(firsts) for c in range(first, lead)]
    if extra:
        rows = np.concatenate([rows, np.array([r for r, _ in extra], dtype=rows.dtype)])
        columns = np.concatenate([columns, np.array([c for _, c in extra], dtype=columns.dtype)])
    # By row, then value falling, then index rising.
    order = np.lexsort((columns, -values[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    counts = np.bincount(rows, minlength=batch)
    starts = np.cumsum(counts) - counts  # where each row's candidates begin
    return [
        columns[start : start + max(0, min(k, count))]
        for start, count, k in zip(starts.tolist(), counts.tolist(), ks, strict=True)
    ]
