"""The language model's forward pass in NumPy: what the server runs instead of TensorFlow.

The same arithmetic as the Keras model in `app.training.model`, over the weights it exports
(laid out by `app.inference.weights`):

    id ── row of the input table (vocab, hidden) ─────────────┐
    state (hidden,) ── · recurrent kernel (hidden, hidden) ── + ── tanh ── next state
    state ── [· projection (hidden, embedding)] ── · output kernel (.., vocab) + bias ── logits

Everything here is a pure function of its arguments, float32 throughout, and works on a batch:
a batch's rows are stepped and scored with matrix-matrix products, whatever the machine's BLAS.
A row's last bits may then depend on its batch (BLAS kernels sum in an order of their own
choosing), so two computations of one text agree to float32 rounding, not bit for bit: the
rule the service promises is in the README ("The same input gives the same answer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FLOAT = np.float32
# Output-kernel columns per block: each block's product is small enough for OpenBLAS's
# small-matrix path, so the 10 MB kernel is not repacked on every call.
OUTPUT_BLOCK = 64
# Columns per group when bounding the k-th largest value of a row (see top_k_rows).
_TOP_K_GROUP = 64


@dataclass(frozen=True)
class RnnWeights:
    """Everything the forward pass reads, in the layout it reads it (read-only arrays)."""

    input_table: np.ndarray  # (vocab, hidden): embedding · input kernel + recurrent bias
    recurrent_kernel: np.ndarray  # (hidden, hidden)
    projection: np.ndarray | None  # (hidden, embedding) when tied and the sizes differ
    output_blocks: np.ndarray  # (blocks, features, OUTPUT_BLOCK), the last padded with zeros
    output_bias: np.ndarray  # (vocab,)

    @property
    def vocab_size(self) -> int:
        return int(self.output_bias.shape[0])

    @property
    def hidden_units(self) -> int:
        return int(self.recurrent_kernel.shape[0])


def rnn_step(
    weights: RnnWeights, input_rows: np.ndarray, states: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """One SimpleRNN step for a batch: h_t = tanh(h_{t-1} · W_hh + (x_t · W_xh + b)).

    `input_rows` (batch, hidden) are rows of the input table; the new states (batch, hidden) go
    to `out` (it may be `states`) or a new array.
    """
    sums = np.matmul(states, weights.recurrent_kernel, out=out)
    sums += input_rows
    return np.tanh(sums, out=sums)


def run_batch(
    weights: RnnWeights,
    sequences: Sequence[Sequence[int]],
    states: np.ndarray,
    steps: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Row r: the state after reading sequences[r] from states[r]. (batch, hidden) -> same.

    The rows step together, longest first, one product a step for the rows still reading: a
    batch costs about as many NumPy calls as its longest sequence. Given a list as `steps`,
    row r's states after each of its ids, (len(sequences[r]), hidden), are appended to it.
    """
    order = sorted(range(len(sequences)), key=lambda row: -len(sequences[row]))
    lengths = [len(sequences[row]) for row in order]
    longest = lengths[0] if lengths else 0
    # history[t] holds the states after t ids, in that order: each step's products are written
    # straight into the next, so a step is three NumPy calls and no copy.
    history = np.empty((longest + 1, len(order), states.shape[1]), dtype=FLOAT)
    history[0] = states[order]
    if longest:
        # (steps, batch) ids, 0 past a row's end (looked up, never used) -> their input rows.
        ids = np.zeros((longest, len(order)), dtype=np.intp)
        for column, row in enumerate(order):
            ids[: lengths[column], column] = sequences[row]
        inputs = weights.input_table[ids]  # (steps, batch, hidden)
        reading = len(order)
        for step in range(longest):
            while lengths[reading - 1] <= step:
                reading -= 1
            rnn_step(
                weights,
                inputs[step, :reading],
                history[step, :reading],
                history[step + 1, :reading],
            )
    if steps is not None:
        column_of = {row: column for column, row in enumerate(order)}
        steps += [
            history[1 : len(sequences[row]) + 1, column_of[row]].copy() for row in range(len(order))
        ]
    out = np.empty((len(order), states.shape[1]), dtype=FLOAT)
    out[order] = history[lengths, np.arange(len(order))]  # each row's state after its last id
    return out


def run(weights: RnnWeights, ids: Sequence[int], state: np.ndarray | None = None) -> np.ndarray:
    """The state (hidden,) after reading `ids` from `state` (zeros when None)."""
    start = np.zeros((1, weights.hidden_units), FLOAT) if state is None else state[None]
    result: np.ndarray = run_batch(weights, [ids], start)[0]
    return result


def logits(weights: RnnWeights, states: np.ndarray) -> np.ndarray:
    """Output-layer scores: (batch, hidden) -> (batch, vocab)."""
    features = states if weights.projection is None else states @ weights.projection
    blocks = weights.output_blocks
    # Each block's products are written straight to their columns of a (batch, vocab) array:
    # the (blocks, batch, OUTPUT_BLOCK) view of it is the stacked product's layout, so no copy.
    whole = np.empty((len(states), blocks.shape[0] * OUTPUT_BLOCK), dtype=FLOAT)
    np.matmul(features, blocks, out=whole.reshape(len(states), blocks.shape[0], -1).swapaxes(0, 1))
    scores = whole[:, : weights.vocab_size]  # rows contiguous; the padding columns left over
    scores += weights.output_bias
    return scores


def softmax(scores: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Probabilities over the last axis; with in_place, `scores` is overwritten (no copy).

    The maximum is subtracted first so exp never overflows, whatever the scores.
    """
    out = scores if in_place else scores.copy()
    out -= out.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def next_words(
    weights: RnnWeights, states: np.ndarray, ks: Sequence[int], firsts: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each state (batch, hidden): the ks[r] most likely next ids from firsts[r] on, most
    likely first (equal probabilities: the lower id first), and their probabilities over the
    whole vocabulary (float32)."""
    probabilities = softmax(logits(weights, states), in_place=True)
    best = top_k_rows(probabilities, ks, firsts)
    return [(ids, probabilities[row, ids]) for row, ids in enumerate(best)]


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, largest first (equal values in index order).

    For one short row (a completion's candidates), where top_k_rows' grouping costs more than
    it saves: the k-th largest value by partition, then the few at or above it sorted.
    """
    count = len(values)
    if k <= 0 or count == 0:
        return np.empty(0, dtype=np.intp)
    if k >= count:
        candidates = np.arange(count)
    else:
        threshold = np.partition(values, count - k)[count - k]
        candidates = np.flatnonzero(values >= threshold)  # ties at the threshold included
    order = np.lexsort((candidates, -values[candidates]))
    return candidates[order[:k]]


def top_k_rows(values: np.ndarray, ks: Sequence[int], firsts: Sequence[int]) -> list[np.ndarray]:
    """For each row r of `values` (batch, n): the indices of its ks[r] largest values among
    columns firsts[r] and after, largest first, equal values in index order.

    A sort, or even argpartition, of 10,000 values is more than a request needs. Instead, deal
    the columns into groups (column j to group j mod groups): K values reach the K-th largest
    group maximum (one in each of K groups), so the K largest values are all at or above it.
    Only the few columns there are sorted, for the whole batch at once.
    """
    batch, width = values.shape
    most = min(max(ks, default=0), width)
    if most <= 0:
        return [np.empty(0, dtype=np.intp) for _ in range(batch)]
    lead = max(firsts)  # the columns before it are few (the special tokens): always candidates
    region = values[:, lead:]
    groups = region.shape[1] // _TOP_K_GROUP
    if groups > most:
        # (batch, 64, groups) -> (batch, groups): a maximum over 64 rows, SIMD across columns.
        group_max = region[:, : groups * _TOP_K_GROUP].reshape(batch, _TOP_K_GROUP, groups)
        group_max = group_max.max(axis=1)
        tail = region[:, groups * _TOP_K_GROUP :]
        if tail.shape[1]:
            group_max = np.concatenate([group_max, tail.max(axis=1, keepdims=True)], axis=1)
        count = group_max.shape[1]
        bound = np.partition(group_max, count - most, axis=1)[:, count - most]
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
