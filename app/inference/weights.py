"""From a manifest's architecture and the exported arrays to the engine's `RnnWeights`.

Load time only: every shape and value is checked here, so the engine can trust what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.inference.engine import FLOAT, OUTPUT_BLOCK, RnnWeights


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

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The exported arrays this architecture needs, by name, with their shapes."""
        vocab, embed, hidden = self.vocab_size, self.embedding_dim, self.hidden_units
        shapes: dict[str, tuple[int, ...]] = {
            "embedding": (vocab, embed),
            "rnn.input_kernel": (embed, hidden),
            "rnn.recurrent_kernel": (hidden, hidden),
            "rnn.bias": (hidden,),
            "output.bias": (vocab,),
        }
        if self.projected:
            shapes["projection.kernel"] = (hidden, embed)
        if not self.tied:
            shapes["output.kernel"] = (hidden, vocab)
        return shapes

    @classmethod
    def from_manifest(cls, architecture: Any) -> Architecture:
        """Raises ValueError when the manifest describes a model this engine cannot run."""
        if not isinstance(architecture, Mapping):
            raise ValueError("the architecture is missing")
        kind = architecture.get("type")
        if kind != "simple_rnn":
            raise ValueError(f"architecture type {kind!r} is not one this server runs (simple_rnn)")
        fields = ("vocab_size", "embedding_dim", "hidden_units", "tied")
        if missing := [key for key in fields if key not in architecture]:
            raise ValueError(f"architecture is incomplete (no {', '.join(map(repr, missing))})")
        sizes = {key: architecture[key] for key in fields[:3]}
        for key, size in sizes.items():
            # A JSON integer: not true (an int to Python), not 16.0, not "16".
            if type(size) is not int:
                raise ValueError(f"architecture {key!r} must be a whole number, not {size!r}")
            if size < 1:
                raise ValueError(f"architecture has sizes below 1 ({key!r} is {size})")
        tied = architecture["tied"]
        if not isinstance(tied, bool):
            raise ValueError(f"architecture has a non-boolean 'tied' ({tied!r})")
        return cls(tied=tied, **sizes)


def weights_from_arrays(arrays: Mapping[str, np.ndarray], architecture: Architecture) -> RnnWeights:
    """Check the exported arrays against the architecture and lay them out for the engine.

    Raises ValueError naming the first array that is missing, misshapen or not finite.
    """
    expected = architecture.shapes()
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
    # replaces it (Keras multiplies each step's embedding by the input kernel and adds the
    # bias, which is the same, but for rounding, as picking that word's row of the product).
    output_kernel = checked["output.kernel"] if not architecture.tied else embedding.T
    weights = RnnWeights(
        input_table=embedding @ checked["rnn.input_kernel"] + checked["rnn.bias"],
        recurrent_kernel=checked["rnn.recurrent_kernel"],
        projection=checked.get("projection.kernel"),
        output_blocks=_blocks(output_kernel),
        output_bias=checked["output.bias"],
    )
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
