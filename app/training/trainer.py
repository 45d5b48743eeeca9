"""The training loop: truncated BPTT over contiguous text with the state carried across windows.

Per epoch: reset the state, run every window of the batched training streams through one compiled
step (app.training.steps: forward, cross-entropy, gradients, global-norm clip, update), then
measure exact validation perplexity. The learning rate decays when validation stops improving;
training stops early after `early_stop_patience` epochs without improvement, and the best weights
are restored at the end.

The same loop runs in one process or as one worker of several (app.training.distributed), and
saves checkpoints it resumes from after a crash (app.training.checkpoints).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.training.checkpoints import Progress, TrainingCheckpoint
from app.training.cluster import Cluster
from app.training.config import TrainConfig
from app.training.distributed import Distribution, weights_digest
from app.training.evaluate import evaluate_ids, make_scorer
from app.training.model import ModelConfig, build_model
from app.training.steps import WeightAverage, make_optimizer, make_train_step
from app.training.stream import TokenFile, window_batches


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
    train_ids: np.ndarray | TokenFile, valid_ids: np.ndarray, vocab_size: int, config: TrainConfig
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


def stop_reason(
    progress: Progress, config: TrainConfig, learning_rate: float, minutes: float
) -> str:
    """Why training stops after the epoch just recorded ("" to go on); `minutes`: when the
    next epoch would end, guessing that it takes as long as the last one."""
    if progress.epochs_without_gain >= config.early_stop_patience:
        return f"no gain in validation perplexity for {progress.epochs_without_gain} epochs"
    if learning_rate < config.min_learning_rate:
        return "learning rate fell below min_learning_rate"
    # Stop before an epoch that would end past the budget, so that max_minutes is a ceiling,
    # not a starting line.
    if config.max_minutes and minutes > config.max_minutes:
        return f"time budget of {config.max_minutes:g} minutes reached"
    if progress.epoch == config.epochs:
        return f"all {config.epochs} epochs done"
    return ""


def train(
    train_ids: np.ndarray | TokenFile,
    valid_ids: np.ndarray,
    vocab_size: int,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    verbose: bool = True,
    cluster: Cluster | None = None,
    checkpoints: tuple[Path, str] | None = None,
) -> TrainResult:
    """Train on `train_ids` (in memory, or a token file streamed from disk).

    `cluster`: train as one worker of it (None: one process). `checkpoints`: (folder, run
    fingerprint) to save checkpoints into and resume from (None: no checkpoints).
    """
    check_trainable(train_ids, valid_ids, vocab_size, config)
    distribution = Distribution(cluster, config.batch_size, config.worker_timeout)
    try:
        with distribution.lost_peers_fail():
            arguments = (train_ids, valid_ids, vocab_size, config, log, verbose)
            return _train(*arguments, distribution, checkpoints)
    finally:
        distribution.close()


def _train(
    train_ids: np.ndarray | TokenFile,
    valid_ids: np.ndarray,
    vocab_size: int,
    config: TrainConfig,
    log: Callable[[str], None],
    verbose: bool,
    distribution: Distribution,
    checkpoints: tuple[Path, str] | None,
) -> TrainResult:
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
    with distribution.scope():
        model = build_model(model_config, seed=config.seed)
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
        average = None
        if config.ema_decay:
            average = WeightAverage(model.trainable_variables, config.ema_decay)
        strategy = distribution.strategy
        train_step = make_train_step(model, model_config, optimizer, average, config, strategy)

    rows = distribution.rows
    steps_per_epoch = max(0, (len(train_ids) // config.batch_size - 1) // config.bptt)
    tokens_per_step = config.batch_size * config.bptt  # the global batch
    scorer = make_scorer(model)
    progress = Progress(fingerprint=checkpoints[1] if checkpoints else "")
    best_weights = model.get_weights()
    saver, resumed_state = None, None
    if checkpoints is not None:
        worker = None if distribution.is_chief else distribution.index
        shape = (config.batch_size, config.hidden_units)
        saver = TrainingCheckpoint.of_training(
            *checkpoints, model, optimizer, average, best_weights, shape, worker
        )
        restored = saver.restore()
        if restored is not None:
            progress, full_state, best_weights = restored
            resumed_state = distribution.local_state(full_state)
            log(
                f"resumed from the checkpoint in {checkpoints[0]}: epoch {progress.epoch}, "
                f"window {progress.window} of {steps_per_epoch}"
            )
        distribution.check_same_checkpoint(progress.epoch, progress.window, checkpoints[0])
    distribution.describe_batch(config.batch_size, config.bptt, config.learning_rate, log)
    result = TrainResult(model=model, model_config=model_config)
    result.history = [EpochRecord(**record) for record in progress.history]  # type: ignore[arg-type]
    started = time.perf_counter() - progress.wall_seconds

    def save(state: tf.Tensor) -> None:
        if saver is None:
            return
        full_state = distribution.gather_state(state)
        progress.wall_seconds = time.perf_counter() - started
        path = saver.save(progress, full_state, best_weights)
        if distribution.is_chief:  # the others write a scratch copy
            log(f"checkpoint: epoch {progress.epoch} window {progress.window} -> {path}")

    # The sampled loss estimates the full one from below: say so beside its perplexity.
    train_note = " (sampled loss)" if config.softmax == "sampled" else ""
    while progress.epoch <= config.epochs and not progress.stop_reason:
        epoch = progress.epoch
        learning_rate = float(optimizer.learning_rate.numpy())
        if verbose:
            log(f"epoch {epoch}/{config.epochs}  learning rate {learning_rate:.3g}")
        bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if verbose else 0, unit_name="window")
        state = tf.zeros((len(rows), config.hidden_units))
        if resumed_state is not None:
            state, resumed_state = resumed_state, None
        first = progress.window
        epoch_start = time.perf_counter()
        for tokens, targets in window_batches(
            train_ids, config.batch_size, config.bptt, rows, first
        ):
            distribution.pet()
            loss, state = train_step(tokens, targets, state)
            progress.loss_sum += float(loss)
            progress.window += 1
            progress.windows_trained += 1
            step = progress.window
            if step % 20 == 0 or step == steps_per_epoch:
                elapsed = progress.epoch_seconds + time.perf_counter() - epoch_start
                bar.update(
                    step,
                    values=[
                        ("ppl", math.exp(progress.loss_sum / step)),
                        ("tok/s", step * tokens_per_step / elapsed),
                    ],
                    finalize=step == steps_per_epoch,
                )
            if progress.windows_trained == config.max_windows:
                progress.stop_reason = f"max_windows ({config.max_windows}) reached"
                break
            every = config.checkpoint_every
            if every and step % every == 0 and step < steps_per_epoch:
                progress.epoch_seconds += time.perf_counter() - epoch_start
                save(state)  # not counted as training time
                epoch_start = time.perf_counter()
        epoch_seconds = progress.epoch_seconds + time.perf_counter() - epoch_start
        windows_done = progress.window
        distribution.rest()
        if average is not None:
            average.swap()  # evaluate (and keep, if best) the averaged weights
        eval_start = time.perf_counter()
        valid = evaluate_ids(model, valid_ids, config.hidden_units, scorer)
        eval_seconds = time.perf_counter() - eval_start
        distribution.pet()
        # The chief's figures on every worker, so that all take the same decisions.
        valid_perplexity, epoch_seconds, eval_seconds, minutes = distribution.agree(
            [valid.perplexity, epoch_seconds, eval_seconds, (time.perf_counter() - started) / 60]
        )
        snapshot = model.get_weights() if valid_perplexity < progress.best_perplexity else None
        if average is not None:
            average.swap()
        train_loss = progress.loss_sum / windows_done
        record = EpochRecord(
            epoch=epoch,
            learning_rate=learning_rate,
            train_loss=train_loss,
            train_perplexity=math.exp(train_loss),
            valid_perplexity=valid_perplexity,
            seconds=epoch_seconds,
            tokens_per_second=windows_done * tokens_per_step / epoch_seconds,
        )
        result.history.append(record)
        progress.history.append(vars(record))
        progress.train_seconds += epoch_seconds
        if verbose:
            log(
                f"epoch {epoch}: train ppl {record.train_perplexity:.2f}{train_note}  valid ppl "
                f"{valid_perplexity:.2f}  {epoch_seconds:.0f} s  "
                f"{record.tokens_per_second:.0f} tokens/s  (validation {eval_seconds:.0f} s)"
            )
        if snapshot is not None:
            progress.best_perplexity = valid_perplexity
            best_weights = snapshot
            progress.best_epoch = epoch
            progress.epochs_without_gain = 0
        else:
            progress.epochs_without_gain += 1
            if progress.epochs_without_gain > config.plateau_patience:
                optimizer.learning_rate.assign(learning_rate * config.lr_decay)
        minutes += (epoch_seconds + eval_seconds) / 60  # when the next epoch would end
        learning_rate = float(optimizer.learning_rate.numpy())
        progress.stop_reason = progress.stop_reason or stop_reason(
            progress, config, learning_rate, minutes
        )
        progress.epoch, progress.window, progress.loss_sum = epoch + 1, 0, 0.0
        progress.epoch_seconds = 0.0
        save(state)

    model.set_weights(best_weights)
    result.best_epoch = progress.best_epoch
    result.stop_reason = progress.stop_reason
    result.train_seconds = progress.train_seconds
    trained_tokens = progress.windows_trained * tokens_per_step
    if result.train_seconds:
        result.train_tokens_per_second = trained_tokens / result.train_seconds
    if verbose:
        log(f"stopped: {result.stop_reason}; best epoch {result.best_epoch}")
    if distribution.cluster is not None:
        log(f"{distribution.cluster.describe()}: final weights sha256 {weights_digest(model)}")
        # A plain copy, outside the strategy: evaluation and saving need no other worker.
        result.model = build_model(model_config, seed=config.seed)
        result.model.set_weights(model.get_weights())
    return result
