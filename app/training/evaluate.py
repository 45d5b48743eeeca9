"""Exact evaluation: perplexity and top-k accuracy over a whole split.

The split is one stream (batch of one) read in windows with the recurrent state carried across
them, so every token is predicted once, from all the text before it, exactly as the server sees
a prefix. Perplexity = exp(mean cross-entropy over every target token, <eos> and <unk> included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tensorflow as tf

# Long windows: fewer calls; the state is carried, so the length does not change the result.
EVAL_WINDOW = 512


@dataclass(frozen=True)
class Metrics:
    tokens: int
    cross_entropy: float
    perplexity: float
    top1: float
    top3: float
    top5: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_scorer(model: Any) -> Any:
    """A compiled function: (tokens, targets, state) -> (sums of loss and hits, final state)."""

    # Shapes left open so windows of any length (the last one is short) share one trace.
    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((None, None), tf.float32),
        ]
    )
    def score(
        tokens: tf.Tensor, targets: tf.Tensor, state: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        logits, final_state = model([tokens, state], training=False)  # (1, time, vocab)
        logits = tf.reshape(logits, (-1, tf.shape(logits)[-1]))
        targets = tf.reshape(targets, (-1,))
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        # Rank of the true word = how many words score strictly higher.
        target_logit = tf.gather(logits, targets, axis=1, batch_dims=1)[:, None]
        rank = tf.reduce_sum(tf.cast(logits > target_logit, tf.int32), axis=1)
        sums = tf.stack(
            [
                tf.reduce_sum(loss),
                tf.reduce_sum(tf.cast(rank < 1, tf.float32)),
                tf.reduce_sum(tf.cast(rank < 3, tf.float32)),
                tf.reduce_sum(tf.cast(rank < 5, tf.float32)),
            ]
        )
        return sums, final_state

    return score


def evaluate_ids(model: Any, ids: np.ndarray, hidden_units: int, scorer: Any = None) -> Metrics:
    """Metrics for predicting ids[1:] from the text before each (ids[0] is context only)."""
    if len(ids) < 2:
        raise ValueError("evaluation text must hold at least two tokens")
    scorer = scorer or make_scorer(model)
    state = tf.zeros((1, hidden_units))
    totals = np.zeros(4, dtype=np.float64)
    count = len(ids) - 1
    for start in range(0, count, EVAL_WINDOW):
        stop = min(start + EVAL_WINDOW, count)
        tokens = tf.constant(ids[None, start:stop], dtype=tf.int32)
        targets = tf.constant(ids[None, start + 1 : stop + 1], dtype=tf.int32)
        sums, state = scorer(tokens, targets, state)
        totals += sums.numpy()
    cross_entropy = totals[0] / count
    return Metrics(
        tokens=count,
        cross_entropy=float(cross_entropy),
        perplexity=float(math.exp(cross_entropy)),
        top1=float(totals[1] / count),
        top3=float(totals[2] / count),
        top5=float(totals[3] / count),
    )


def unigram_perplexity(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity of the add-one unigram model of the training split: the baseline to beat."""
    return unigram_perplexity_of_counts(np.bincount(train_ids, minlength=vocab_size), eval_ids)


def unigram_perplexity_of_counts(train_counts: np.ndarray, eval_ids: np.ndarray) -> float:
    """The same from the (vocab,) counts of the training ids (counted as they were written)."""
    counts = train_counts.astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(math.exp(-log_probs[eval_ids[1:]].mean()))
