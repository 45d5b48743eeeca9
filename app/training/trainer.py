"""The training loop: truncated BPTT over contiguous text with the state carried across windows.

Per epoch: reset the state, run every window of the batched training streams through one compiled
step (forward, cross-entropy, gradients, global-norm clip, update), then measure exact validation
perplexity. The learning rate decays when validation stops improving; training stops early after
`early_stop_patience` epochs without improvement, and the best weights are restored at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.training.config import TrainConfig
from app.training.corpus import batchify, window_count, windows
from app.training.evaluate import evaluate_ids, make_scorer
from app.training.model import ModelConfig, build_model, features_model, output_weights


@dataclass
class EpochRecord:
    epoch: int
    learning_rate: float
    train_loss: float
    train_perplexity: float
    valid_perplexity: float
    seconds: float
    tokens_per_second: float


@dataclass
class TrainResult:
    model: Any
    model_config: ModelConfig
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    train_tokens_per_second: float = 0.0
    stop_reason: str = ""


def check_trainable(
    train_ids: np.ndarray, valid_ids: np.ndarray, vocab_size: int, config: TrainConfig
) -> None:
    """Refuse corpora too small for one training batch, before anything is built or written."""
    needed = config.batch_size * (config.bptt + 1)
    if len(train_ids) < needed:
        raise ValueError(
            f"training text has {len(train_ids)} tokens; one batch needs batch_size * (bptt + 1)"
            f" = {needed}: give more text or lower --batch-size / --bptt"
        )
    if len(valid_ids) < 2:
        raise ValueError("validation text must hold at least two tokens")
    # The sampler draws distinct words, so it needs more words than it draws.
    if config.softmax == "sampled" and config.sampled_words >= vocab_size:
        raise ValueError(
            f"sampled_words must be fewer than the {vocab_size} words of the vocabulary, not "
            f"{config.sampled_words}: lower --sampled-words or use --softmax full"
        )


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
    """(tokens, targets, state) -> (mean loss, final state), in training mode, to be traced.

    "full": cross-entropy of the whole softmax. "sampled": tf.nn.sampled_softmax_loss over the
    output layer's weights and bias; its default log-uniform sampler fits because token ids are
    ranked by training frequency. It estimates the full loss (lower than it) at a fraction of
    the cost of the (batch, time, vocab) logits.
    """
    if config.softmax == "full":

        def full(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
            logits, final_state = model([tokens, state], training=True)  # (batch, time, vocab)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            return tf.reduce_mean(losses), final_state

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
        return tf.reduce_mean(losses), final_state

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


def train(
    train_ids: np.ndarray,
    valid_ids: np.ndarray,
    vocab_size: int,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    verbose: bool = True,
) -> TrainResult:
    check_trainable(train_ids, valid_ids, vocab_size, config)
    keras.utils.set_random_seed(config.seed)
    model_config = ModelConfig(
        vocab_size=vocab_size,
        embedding_dim=config.embedding_dim,
        hidden_units=config.hidden_units,
        dropout=config.dropout,
        locked_dropout=config.locked_dropout,
        tied=config.tied,
        init_scale=config.init_scale,
    )
    model = build_model(model_config, seed=config.seed)
    optimizer = make_optimizer(config)
    variables = model.trainable_variables
    optimizer.build(variables)
    clip_norm = tf.constant(config.clip_norm, tf.float32)
    average = WeightAverage(variables, config.ema_decay) if config.ema_decay else None

    training_loss = make_training_loss(model, model_config, config)

    @tf.function(jit_compile=False)
    def train_step(tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor) -> Any:
        with tf.GradientTape() as tape:
            loss, final_state = training_loss(tokens, targets, state)
        gradients = tape.gradient(loss, variables)
        # The sampled loss leaves the output weights a sparse gradient whose rows can repeat;
        # summed into a dense one first, the global-norm clip and Adam see each word once.
        gradients = [tf.convert_to_tensor(gradient) for gradient in gradients]
        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
        optimizer.apply(gradients, variables)
        if average is not None:
            average.update()
        return loss, final_state

    streams = batchify(train_ids, config.batch_size)  # (batch, steps)
    steps_per_epoch = window_count(streams, config.bptt)
    tokens_per_step = config.batch_size * config.bptt
    scorer = make_scorer(model)
    result = TrainResult(model=model, model_config=model_config)
    best_perplexity = math.inf
    best_weights = model.get_weights()
    epochs_without_gain = 0
    started = time.perf_counter()
    trained_tokens = 0
    train_time = 0.0

    # The sampled loss estimates the full one from below: say so beside its perplexity.
    train_note = " (sampled loss)" if config.softmax == "sampled" else ""
    for epoch in range(1, config.epochs + 1):
        learning_rate = float(optimizer.learning_rate.numpy())
        if verbose:
            log(f"epoch {epoch}/{config.epochs}  learning rate {learning_rate:.3g}")
        bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if verbose else 0, unit_name="window")
        state = tf.zeros((config.batch_size, config.hidden_units))
        epoch_start = time.perf_counter()
        loss_sum = 0.0
        for step, (tokens, targets) in enumerate(windows(streams, config.bptt), start=1):
            loss, state = train_step(tf.constant(tokens), tf.constant(targets), state)
            loss_sum += float(loss)
            if step % 20 == 0 or step == steps_per_epoch:
                elapsed = time.perf_counter() - epoch_start
                bar.update(
                    step,
                    values=[
                        ("ppl", math.exp(loss_sum / step)),
                        ("tok/s", step * tokens_per_step / elapsed),
                    ],
                    finalize=step == steps_per_epoch,
                )
        epoch_seconds = time.perf_counter() - epoch_start
        train_time += epoch_seconds
        trained_tokens += steps_per_epoch * tokens_per_step
        if average is not None:
            average.swap()  # evaluate (and keep, if best) the averaged weights
        eval_start = time.perf_counter()
        valid = evaluate_ids(model, valid_ids, config.hidden_units, scorer)
        eval_seconds = time.perf_counter() - eval_start
        snapshot = model.get_weights() if valid.perplexity < best_perplexity else None
        if average is not None:
            average.swap()
        train_loss = loss_sum / steps_per_epoch
        record = EpochRecord(
            epoch=epoch,
            learning_rate=learning_rate,
            train_loss=train_loss,
            train_perplexity=math.exp(train_loss),
            valid_perplexity=valid.perplexity,
            seconds=epoch_seconds,
            tokens_per_second=steps_per_epoch * tokens_per_step / epoch_seconds,
        )
        result.history.append(record)
        if verbose:
            log(
                f"epoch {epoch}: train ppl {record.train_perplexity:.2f}{train_note}  valid ppl "
                f"{valid.perplexity:.2f}  {epoch_seconds:.0f} s  "
                f"{record.tokens_per_second:.0f} tokens/s  (validation {eval_seconds:.0f} s)"
            )
        if snapshot is not None:
            best_perplexity = valid.perplexity
            best_weights = snapshot
            result.best_epoch = epoch
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain > config.plateau_patience:
                optimizer.learning_rate.assign(learning_rate * config.lr_decay)
        if epochs_without_gain >= config.early_stop_patience:
            result.stop_reason = (
                f"no gain in validation perplexity for {epochs_without_gain} epochs"
            )
            break
        if float(optimizer.learning_rate.numpy()) < config.min_learning_rate:
            result.stop_reason = "learning rate fell below min_learning_rate"
            break
        minutes = (time.perf_counter() - started) / 60
        # Stop before an epoch that would end past the budget (the last one is the best guess
        # of how long the next takes), so that max_minutes is a ceiling, not a starting line.
        next_epoch_minutes = (epoch_seconds + eval_seconds) / 60
        if config.max_minutes and minutes + next_epoch_minutes > config.max_minutes:
            result.stop_reason = f"time budget of {config.max_minutes:g} minutes reached"
            break
    else:
        result.stop_reason = f"all {config.epochs} epochs done"

    model.set_weights(best_weights)
    result.train_seconds = train_time
    result.train_tokens_per_second = trained_tokens / train_time if train_time else 0.0
    if verbose:
        log(f"stopped: {result.stop_reason}; best epoch {result.best_epoch}")
    return result
