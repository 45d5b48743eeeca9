"""The compiled training step: forward, cross-entropy, gradients, global-norm clip, update, EMA.

In one process the step is one tf.function. Under tf.distribute.MultiWorkerMirroredStrategy each
worker computes its rows' share of the loss of the global batch (tf.nn.compute_average_loss:
the sum of its token losses over the global token count), the gradients are summed across the
workers (one all-reduce, the loss with them), and then clipped and applied outside the replica
context: the clip then sees the global gradient, as it does in one process, and the optimizer
adds nothing on top (applied inside a replica, Keras would all-reduce the gradients again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from app.training.config import TrainConfig
from app.training.model import ModelConfig, features_model, output_weights

# (tokens, targets, state) -> (loss, final state); tokens and targets (rows, bptt) int32.
TrainStep = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=config.learning_rate)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
    return keras.optimizers.Adam(learning_rate=config.learning_rate)


def make_training_loss(
    model: keras.Model, model_config: ModelConfig, config: TrainConfig
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """(tokens, targets, state) -> (loss of every token, final state), in training mode.

    "full": cross-entropy of the whole softmax. "sampled": tf.nn.sampled_softmax_loss over the
    output layer's weights and bias; its default log-uniform sampler fits because token ids are
    ranked by training frequency. It estimates the full loss (lower than it) at a fraction of
    the cost of the (batch, time, vocab) logits.
    """
    if config.softmax == "full":

        def full(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
            logits, final_state = model([tokens, state], training=True)  # (batch, time, vocab)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            return losses, final_state  # (batch, time)

        return full

    features_of = features_model(model, model_config)

    def sampled(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
        features, final_state = features_of([tokens, state], training=True)  # (batch, time, f)
        weights, bias = output_weights(model, model_config)  # (vocab, f), (vocab,)
        losses = tf.nn.sampled_softmax_loss(
            weights=tf.convert_to_tensor(weights),
            biases=tf.convert_to_tensor(bias),
            labels=tf.reshape(tf.cast(targets, tf.int64), (-1, 1)),  # (batch * time, 1)
            inputs=tf.reshape(features, (-1, features.shape[-1])),  # (batch * time, f)
            num_sampled=config.sampled_words,
            num_classes=model_config.vocab_size,
        )
        return losses, final_state  # (batch * time,)

    return sampled


class WeightAverage:
    """Exponential moving average of the weights, swapped in for evaluation and saving.

    The decay ramps up as min(decay, (1 + t) / (10 + t)) so the average does not remember the
    random initial weights (the same warm-up as tf.train.ExponentialMovingAverage).
    """

    def __init__(self, variables: list[Any], decay: float) -> None:
        self.variables = variables
        self.decay = decay
        self.averages = [tf.Variable(v, trainable=False) for v in variables]
        self.updates = tf.Variable(0.0, trainable=False)

    def update(self) -> None:
        """Called inside the compiled training step, after the optimizer."""
        self.updates.assign_add(1.0)
        decay = tf.minimum(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for average, variable in zip(self.averages, self.variables, strict=True):
            average.assign(decay * average + (1.0 - decay) * variable)

    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to undo)."""
        for average, variable in zip(self.averages, self.variables, strict=True):
            live = tf.identity(variable)
            variable.assign(average)
            average.assign(live)


def make_train_step(
    model: keras.Model,
    model_config: ModelConfig,
    optimizer: keras.optimizers.Optimizer,
    average: WeightAverage | None,
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainStep:
    """The step for one process (strategy None) or for one worker of `strategy`.

    Build it inside the strategy's scope; `config.batch_size` is the global batch.
    """
    training_loss = make_training_loss(model, model_config, config)
    variables = model.trainable_variables
    clip_norm = tf.constant(config.clip_norm, tf.float32)

    def gradients_of(loss: tf.Tensor, tape: tf.GradientTape) -> list[tf.Tensor]:
        # The sampled loss leaves the output weights a sparse gradient whose rows can repeat;
        # summed into a dense one first, the global-norm clip and Adam see each word once.
        return [tf.convert_to_tensor(gradient) for gradient in tape.gradient(loss, variables)]

    def update(gradients: list[tf.Tensor]) -> None:
        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
        optimizer.apply(gradients, variables)
        if average is not None:
            average.update()

    if strategy is None:

        @tf.function(jit_compile=False)
        def train_step(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
            with tf.GradientTape() as tape:
                losses, final_state = training_loss(tokens, targets, state)
                loss = tf.reduce_mean(losses)
            update(gradients_of(loss, tape))
            return loss, final_state

        return train_step

    global_tokens = config.batch_size * config.bptt

    def replica_step(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
        with tf.GradientTape() as tape:
            losses, final_state = training_loss(tokens, targets, state)
            # This worker's share of the global mean: summed over workers, the mean itself.
            loss = tf.nn.compute_average_loss(
                tf.reshape(losses, (-1,)), global_batch_size=global_tokens
            )
        summed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [loss, *gradients_of(loss, tape)]
        )
        return summed[0], summed[1:], final_state

    @tf.function(jit_compile=False)
    def distributed_step(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
        loss, gradients, final_state = strategy.run(replica_step, args=(tokens, targets, state))
        update(gradients)  # cross-replica context: each worker applies the same global gradient
        return loss, final_state

    return distributed_step
