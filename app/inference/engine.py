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
    output_kernel: np.ndarray  # (hidden or embedding, vocab); tied: a view of embeddingᵀ
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
    weights = RnnWeights(
        input_table=embedding @ checked["rnn.input_kernel"],
        recurrent_kernel=checked["rnn.recurrent_kernel"],
        bias=checked["rnn.bias"],
        projection=checked.get("projection.kernel"),
        # Tied: logits = y · embeddingᵀ. The transposed view costs no copy; BLAS reads it as is.
        output_kernel=checked["output.kernel"] if not architecture.tied else embedding.T,
        output_bias=checked["output.bias"],
    )
    for array in (*vars(weights).values(), embedding):
        if array is not None:
            array.flags.writeable = False  # shared by every request: nothing may change it
    return weights


def rnn_step(
    input_row: np.ndarray, state: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    """One SimpleRNN step: h_t = tanh(x_t · W_xh + h_{t-1} · W_hh + b).

    `input_row` is x_t · W_xh, already looked up in the input table. Works on one state
    (hidden,) or a batch (batch, hidden).
    """
    return np.tanh(input_row + state @ recurrent_kernel + bias)


def run(weights: RnnWeights, ids: Sequence[int], state: np.ndarray | None = None) -> np.ndarray:
    """The state after reading `ids` from `state` (zeros when None): (hidden,)."""
    if state is None:
        state = np.zeros(weights.hidden_units, dtype=FLOAT)
    for token in ids:
        state = rnn_step(weights.input_table[token], state, weights.recurrent_kernel, weights.bias)
    return state


def logits(weights: RnnWeights, states: np.ndarray) -> np.ndarray:
    """Output-layer scores for one state (hidden,) -> (vocab,) or a batch -> (batch, vocab)."""
    features = states if weights.projection is None else states @ weights.projection
    scores = features @ weights.output_kernel  # the one vocab-sized array a request allocates
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


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, largest first (equal values in index order)."""
    k = min(k, values.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    # argpartition finds the k best in O(vocab) without sorting the rest; only they are sorted.
    best = np.argpartition(values, values.shape[0] - k)[-k:]
    order = np.lexsort((best, -values[best]))  # by value falling, then by index rising
    return best[order]
