"""The language model's forward pass in NumPy: what the server runs instead of TensorFlow.

The same arithmetic as the Keras model in `app.training.model`, over the weights it exports
(`export_weights`, saved as weights.safetensors):

    id ── row of the input table (vocab, hidden) ─────────────┐
    state (hidden,) ── · recurrent kernel (hidden, hidden) ── + ── tanh ── next state
    state ── [· projection (hidden, embedding)] ── · output kernel (.., vocab) + bias ── logits

The input table is embedding · input kernel + the recurrent bias, computed once at load: Keras
multiplies every step's embedding vector by the input kernel and adds the bias, which is the
same (but for rounding) as picking that word's row.

Everything here is a pure function of its arguments, float32 throughout, and the weights are
read-only, so one `RnnWeights` can serve many threads at once.

A batch of states gives, row for row, the very bits one state gives, so an answer never depends
on which other requests shared its batch (nor on whether a cached state was computed in one).
How the products are taken is chosen at load to keep that (`RnnWeights.batched`):

    batched   matrix-matrix products (BLAS gemm), a lone row padded to two, the output kernel in
              blocks of OUTPUT_BLOCK columns: 2.4x faster a row for 32 rows, ~1.2x slower for
              one. Chosen when a probe at load finds every row of a batch, whatever its size or
              place, has the bits it has alone: so with the OpenBLAS in NumPy's wheels, whose
              kernels sum each entry over k in one order whatever the batch.
    per row   a stack of matrix-vector products (gemv), one per row: the same bits by
              construction, for any BLAS. gemm and gemv sum in different orders (they differ by
              up to 2e-6 in probability), so one model never mixes the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.inference.top_k import top_k_rows

FLOAT = np.float32
# Output-kernel columns per block in the batched layout: small enough that each block's product
# takes OpenBLAS's small-matrix path, with no packing of the 10 MB kernel on every call (for 32
# rows and 10,000 words: 1.9 ms in blocks of 64, 2.7 in blocks of 128, 3.4 ms unblocked).
OUTPUT_BLOCK = 64
# Batch sizes the load-time probe checks (see `_batches_keep_row_bits`): the tails of every
# kernel width up to 16 and the usual batch sizes (NEXTWORD_BATCH_MAX_SIZE is 8 by default;
# larger batches take the same kernels, checked by hand here up to 64 rows).
PROBE_SIZES = (2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33)


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

    input_table: np.ndarray  # (vocab, hidden): embedding · input kernel + recurrent bias
    recurrent_kernel: np.ndarray  # (hidden, hidden)
    projection: np.ndarray | None  # (hidden, embedding) when tied and the sizes differ
    # (features, vocab) in C order, features = hidden or embedding (tied: embeddingᵀ); batched:
    # (blocks, features, OUTPUT_BLOCK), the last block padded with zero columns.
    output_kernel: np.ndarray
    output_bias: np.ndarray  # (vocab,)
    batched: bool = False  # how products are taken: see the module's docstring

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
    # Tied: logits = y · embeddingᵀ. The embedding itself is not kept: the input table
    # replaces it.
    output_kernel = checked["output.kernel"] if not architecture.tied else embedding.T
    weights = RnnWeights(
        input_table=embedding @ checked["rnn.input_kernel"] + checked["rnn.bias"],
        recurrent_kernel=checked["rnn.recurrent_kernel"],
        projection=checked.get("projection.kernel"),
        output_kernel=_blocks(output_kernel),
        output_bias=checked["output.bias"],
        batched=True,
    )
    if not _batches_keep_row_bits(weights):
        # A copy in C order rather than the transposed view: a vector times it is ~1.4x faster
        # (0.19 vs 0.27 ms for 10,000 x 256 here).
        weights = replace(weights, output_kernel=np.ascontiguousarray(output_kernel), batched=False)
    for array in vars(weights).values():
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # shared by every request: nothing may change it
    return weights


def _blocks(kernel: np.ndarray) -> np.ndarray:
    """(features, vocab) -> (blocks, features, OUTPUT_BLOCK), each block contiguous."""
    features, vocab = kernel.shape
    count = -(-vocab // OUTPUT_BLOCK)
    padded = np.zeros((features, count * OUTPUT_BLOCK), dtype=FLOAT)
    padded[:, :vocab] = kernel
    return np.ascontiguousarray(padded.reshape(features, count, OUTPUT_BLOCK).transpose(1, 0, 2))


def _batches_keep_row_bits(weights: RnnWeights) -> bool:
    """Whether batched products give each row of a batch the bits it gets alone, for these
    weights' shapes and this machine's BLAS (~25 ms for a 10,000 x 256 model).

    A BLAS that sums a batch in another order than a lone row (by blocking along the inner
    dimension, or with tail kernels that differ) moves the bits of almost every entry of random
    rows, so a handful of batch sizes and every place in them find it.
    """
    rng = np.random.default_rng(0)
    rows = rng.uniform(-1, 1, (max(PROBE_SIZES), weights.hidden_units)).astype(FLOAT)
    ids = rng.integers(0, weights.vocab_size, len(rows))
    alone = [
        (logits(weights, row), rnn_step(weights, weights.input_table[token], row))
        for row, token in zip(rows, ids, strict=True)
    ]
    for size in PROBE_SIZES:
        scores = logits(weights, rows[:size])
        states = rnn_step(weights, weights.input_table[ids[:size]], rows[:size])
        for row in range(size):
            if not (
                np.array_equal(scores[row], alone[row][0])
                and np.array_equal(states[row], alone[row][1])
            ):
                return False
    return True


def rnn_step(
    weights: RnnWeights,
    input_rows: np.ndarray,
    states: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One SimpleRNN step: h_t = tanh(h_{t-1} · W_hh + (x_t · W_xh + b)).

    `input_rows` are x_t · W_xh + b, rows of the input table. Works on one state (hidden,) or a
    batch (batch, hidden); the new states go to `out` (it may be `states`) or a new array.
    """
    sums = _rows_times(states, weights.recurrent_kernel, weights.batched)
    sums += input_rows
    return np.tanh(sums, out=sums if out is None else out)


def run(weights: RnnWeights, ids: Sequence[int], state: np.ndarray | None = None) -> np.ndarray:
    """The state after reading `ids` from `state` (zeros when None): (hidden,)."""
    if weights.batched and len(ids) > 1:
        # The state as row 0 of a batch of two, stepped in place: the padding row is made once
        # rather than every step (see _two_rows_at_least), and row 0 has its bits whatever
        # row 1 holds (the load-time probe checked it).
        rows = np.zeros((2, weights.hidden_units), dtype=FLOAT)
        if state is not None:
            rows[0] = state
        for token in ids:
            rnn_step(weights, weights.input_table[token], rows, out=rows)
        return rows[0].copy()
    if state is None:
        state = np.zeros(weights.hidden_units, dtype=FLOAT)
    for token in ids:
        state = rnn_step(weights, weights.input_table[token], state)
    return state


def run_many(
    weights: RnnWeights, sequences: Sequence[Sequence[int]], states: np.ndarray
) -> np.ndarray:
    """Row r is `run(weights, sequences[r], states[r])`, bit for bit: (batch, hidden).

    The rows step together, one product a step for the rows still reading (longest first, so
    those are always the leading rows): a batch of texts costs about as many NumPy calls as its
    longest text, not as all of its words. Every step's input rows are looked up at once.
    """
    order = sorted(range(len(sequences)), key=lambda row: -len(sequences[row]))
    lengths = [len(sequences[row]) for row in order]
    current = states[order]  # a copy, in that order
    if lengths and lengths[0]:
        # (steps, batch) ids, 0 past a row's end (looked up, never used) -> their input rows.
        ids = np.zeros((lengths[0], len(order)), dtype=np.intp)
        for column, row in enumerate(order):
            ids[: lengths[column], column] = sequences[row]
        inputs = weights.input_table[ids]
        reading = len(order)
        for step in range(lengths[0]):
            while lengths[reading - 1] <= step:
                reading -= 1
            rows = current[:reading]
            rnn_step(weights, inputs[step, :reading], rows, out=rows)
    out = np.empty_like(current)
    out[order] = current
    return out


def logits(weights: RnnWeights, states: np.ndarray) -> np.ndarray:
    """Output-layer scores for one state (hidden,) -> (vocab,) or a batch -> (batch, vocab)."""
    rows = states if states.ndim == 2 else states[None]
    features = rows
    if weights.projection is not None:
        features = _rows_times(rows, weights.projection, weights.batched)
    if weights.batched:
        # (blocks, batch, OUTPUT_BLOCK) -> (batch, vocab): one copy, the bias added on the way.
        products = np.matmul(_two_rows_at_least(features), weights.output_kernel)
        whole = products[:, : len(rows)].transpose(1, 0, 2).reshape(len(rows), -1)
        scores = np.add(whole[:, : weights.vocab_size], weights.output_bias)
    else:
        scores = _rows_times(features, weights.output_kernel, False)
        scores += weights.output_bias
    return scores if states.ndim == 2 else scores[0]


def next_words(
    weights: RnnWeights, states: np.ndarray, ks: Sequence[int], firsts: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each state (batch, hidden): the ks[r] most likely next ids from firsts[r] on, most
    likely first, and their probabilities over the whole vocabulary (float32)."""
    probabilities = softmax(logits(weights, states), in_place=True)
    best = top_k_rows(probabilities, ks, firsts)
    return [(ids, probabilities[row, ids]) for row, ids in enumerate(best)]


def _rows_times(rows: np.ndarray, matrix: np.ndarray, batched: bool) -> np.ndarray:
    """Each row times `matrix`: (n,) -> (m,), (batch, n) -> (batch, m), each row with the bits
    it has alone (see the module's docstring).

    Per row, (batch, 1, n) @ (n, m) makes NumPy call BLAS gemv once per row, in one call.
    """
    if rows.ndim == 1:
        return _rows_times(rows[None], matrix, batched)[0]
    if batched:
        return np.matmul(_two_rows_at_least(rows), matrix)[: len(rows)]
    return np.matmul(rows[:, None, :], matrix)[:, 0, :]


def _two_rows_at_least(rows: np.ndarray) -> np.ndarray:
    # NumPy gives a one-row product to gemv, which sums in another order than gemm.
    if len(rows) > 1:
        return rows
    padded = np.zeros((2, rows.shape[1]), dtype=rows.dtype)
    padded[0] = rows[0]
    return padded


def softmax(scores: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Probabilities over the last axis; with in_place, `scores` is overwritten (no copy).

    The maximum is subtracted first so exp never overflows, whatever the scores.
    """
    out = scores if in_place else scores.copy()
    out -= out.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out
