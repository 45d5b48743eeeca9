"""The Keras 3 language model: Embedding -> SimpleRNN(tanh) -> Dense(vocab).

The model takes the recurrent state as an input and returns the final state as an output, so the
training loop can carry it across windows of contiguous text (truncated back-propagation through
time) and evaluation can carry it across a whole split.

    tokens (batch, time) int32 ─ Embedding ─ Dropout ─ SimpleRNN ─ Dropout ─ [Projection] ─ Output
    state  (batch, hidden) ─────────────────────┘         └─ final state (batch, hidden)

With tied embeddings the output layer reuses the embedding matrix (logits = h · Eᵀ + b), which
cuts parameters and is one of the strongest regularisers for word-level language models. When the
hidden size differs from the embedding size, a linear projection maps hidden -> embedding first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
from keras import ops


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    # Width of the word vectors (and of the output layer's input when tied).
    embedding_dim: int = 256
    # Width of the SimpleRNN's hidden state.
    hidden_units: int = 256
    # Dropout on the non-recurrent connections: embedding output and RNN output.
    dropout: float = 0.0
    # Locked (variational) dropout: one mask per sequence, the same at every time step, so the
    # noise does not wash out over time (Gal & Ghahramani 2016).
    locked_dropout: bool = False
    # Share the embedding matrix with the output layer.
    tied: bool = True
    # Half-width of the uniform initialiser of the embedding (the recurrent kernel is orthogonal).
    init_scale: float = 0.05

    def validate(self) -> None:
        if self.vocab_size < 3:
            raise ValueError("vocabulary must hold at least one word besides <unk> and <eos>")
        if self.embedding_dim < 1 or self.hidden_units < 1:
            raise ValueError("embedding_dim and hidden_units must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if not 0.0 < self.init_scale <= 1.0:
            raise ValueError(f"init_scale must be in (0, 1], not {self.init_scale}")

    @property
    def projected(self) -> bool:
        return self.tied and self.embedding_dim != self.hidden_units


@keras.saving.register_keras_serializable(package="nextword")
class ReversibleEmbedding(keras.layers.Embedding):
    """An embedding that, called with `reverse=True`, is the tied output layer.

    Forward: ids (batch, time) -> vectors (batch, time, embedding).
    Reverse: vectors (batch, time, embedding) · Eᵀ + b -> logits (batch, time, vocab).
    One layer used twice in the graph, so the sharing survives saving and loading.
    """

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.input_dim,), initializer="zeros"
        )

    def call(self, inputs: Any, reverse: bool = False) -> Any:
        if reverse:
            return ops.matmul(inputs, ops.transpose(self.embeddings)) + self.output_bias
        return super().call(inputs)

    # Embedding's own (de)serialisation knows only `embeddings`; the generic Layer one saves
    # every variable, the output bias included.
    def save_own_variables(self, store: Any) -> None:
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store: Any) -> None:
        keras.layers.Layer.load_own_variables(self, store)

    def compute_output_spec(self, inputs: Any, reverse: bool = False) -> Any:
        if reverse:
            shape = (*inputs.shape[:-1], self.input_dim)
            return keras.KerasTensor(shape, dtype=self.compute_dtype)
        return super().compute_output_spec(inputs)


def build_model(config: ModelConfig, seed: int = 0) -> keras.Model:
    """A functional model: [tokens, state] -> [logits, final state]."""
    config.validate()
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    state = keras.Input(shape=(config.hidden_units,), name="state")
    embedding_class = ReversibleEmbedding if config.tied else keras.layers.Embedding
    embedding = embedding_class(
        config.vocab_size,
        config.embedding_dim,
        embeddings_initializer=keras.initializers.RandomUniform(
            -config.init_scale, config.init_scale, seed=seed
        ),
        name="embedding",
    )
    x = embedding(tokens)  # (batch, time, embedding)
    x = keras.layers.Dropout(
        config.dropout, noise_shape=_mask(config, config.embedding_dim), seed=seed + 1,
        name="input_dropout",
    )(x)  # fmt: skip
    sequence, final_state = keras.layers.SimpleRNN(
        config.hidden_units,
        activation="tanh",
        return_sequences=True,
        return_state=True,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2),
        # An orthogonal recurrent matrix keeps gradients from exploding or vanishing early on.
        recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 3),
        name="rnn",
    )(x, initial_state=[state])  # (batch, time, hidden), (batch, hidden)
    y = keras.layers.Dropout(
        config.dropout, noise_shape=_mask(config, config.hidden_units), seed=seed + 4,
        name="output_dropout",
    )(sequence)  # fmt: skip
    if config.projected:
        y = keras.layers.Dense(
            config.embedding_dim,
            use_bias=False,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 5),
            name="projection",
        )(y)
    if config.tied:
        logits = embedding(y, reverse=True)
    else:
        logits = keras.layers.Dense(
            config.vocab_size,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 6),
            name="output",
        )(y)
    return keras.Model([tokens, state], [logits, final_state], name="simple_rnn_lm")


def _mask(config: ModelConfig, features: int) -> tuple[int | None, ...] | None:
    # (batch, 1, features): broadcast over time, i.e. one mask per sequence.
    return (None, 1, features) if config.locked_dropout else None


def features_model(model: keras.Model, config: ModelConfig) -> keras.Model:
    """The same layers up to the output layer: [tokens, state] -> [features, final state].

    Features are (batch, time, embedding) when tied (after the projection, if any), else
    (batch, time, hidden). Every weight is shared with `model`, so training this view trains it;
    a sampled-softmax loss uses it to skip the (batch, time, vocab) logits.
    """
    last = "projection" if config.projected else "output_dropout"
    return keras.Model(model.inputs, [model.get_layer(last).output, model.outputs[1]])


def output_weights(model: keras.Model, config: ModelConfig) -> tuple[Any, Any]:
    """The output layer as (vocab, features) weights and a (vocab,) bias: logits = f · Wᵀ + b.

    Call it inside the compiled step: the untied kernel is transposed there, at every step.
    """
    if config.tied:
        embedding = model.get_layer("embedding")
        return embedding.embeddings, embedding.output_bias
    output = model.get_layer("output")
    return ops.transpose(output.kernel), output.bias


def export_weights(model: keras.Model, config: ModelConfig) -> dict[str, np.ndarray]:
    """The weights under the names the NumPy engine reads (see app.inference.engine)."""
    rnn = model.get_layer("rnn")
    input_kernel, recurrent_kernel, bias = (np.asarray(w) for w in rnn.get_weights())
    weights = {
        "embedding": np.asarray(model.get_layer("embedding").embeddings),
        "rnn.input_kernel": input_kernel,
        "rnn.recurrent_kernel": recurrent_kernel,
        "rnn.bias": bias,
    }
    if config.projected:
        weights["projection.kernel"] = np.asarray(model.get_layer("projection").kernel)
    if config.tied:
        weights["output.bias"] = np.asarray(model.get_layer("embedding").output_bias)
    else:
        output = model.get_layer("output")
        weights["output.kernel"] = np.asarray(output.kernel)
        weights["output.bias"] = np.asarray(output.bias)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
