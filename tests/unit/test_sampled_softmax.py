"""Training with the sampled-softmax loss: the exact (full-softmax) perplexity still falls, the
saved weights are the same arrays as with the full loss, and bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest

from app.training.config import TrainConfig
from app.training.evaluate import evaluate_ids
from app.training.model import build_model, export_weights
from app.training.trainer import check_trainable, train

VOCAB = 40


def _cycle_ids(count: int) -> np.ndarray:
    """Ids 2..VOCAB-1 in a fixed order, each word following from the one before (0 and 1 are
    the special tokens): a model that learns the pattern is far below perplexity VOCAB."""
    order = np.random.default_rng(0).permutation(np.arange(2, VOCAB))
    return order[np.arange(count) % len(order)].astype(np.int32)


def _config(**settings: object) -> TrainConfig:
    values: dict[str, object] = {
        "train": "unused",
        "max_vocab": VOCAB,
        "embedding_dim": 16,
        "hidden_units": 16,
        "batch_size": 4,
        "bptt": 10,
        "epochs": 2,
        "learning_rate": 0.01,
        "softmax": "sampled",
        "sampled_words": 8,
    }
    values.update(settings)
    config = TrainConfig(**values)  # type: ignore[arg-type]
    config.validate()
    return config


@pytest.mark.parametrize(
    "shape",
    [
        {"tied": True},
        {"tied": True, "hidden_units": 24},  # a projection before the tied output layer
        {"tied": False},
    ],
    ids=["tied", "projected", "untied"],
)
def test_sampled_loss_lowers_the_exact_perplexity(shape: dict[str, object]) -> None:
    train_ids, valid_ids = _cycle_ids(2000), _cycle_ids(300)
    config = _config(**shape)
    result = train(train_ids, valid_ids, VOCAB, config, verbose=False)
    untrained = build_model(result.model_config, seed=config.seed)  # the weights it started from
    before = evaluate_ids(untrained, valid_ids, config.hidden_units).perplexity
    after = evaluate_ids(result.model, valid_ids, config.hidden_units).perplexity
    assert before > VOCAB / 2
    assert after < before / 4
    # The saved arrays are those of a model trained with the full loss.
    exported = export_weights(result.model, result.model_config)
    expected = export_weights(untrained, result.model_config)
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in expected.items()}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"softmax": "hierarchical"}, "softmax must be full or sampled, not 'hierarchical'"),
        ({"sampled_words": 0}, "sampled_words must be at least 1 and fewer than max_vocab"),
        ({"sampled_words": VOCAB}, "sampled_words must be at least 1 and fewer than max_vocab"),
    ],
)
def test_bad_sampled_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**settings)


def test_sampled_words_must_be_fewer_than_the_words_of_the_vocabulary() -> None:
    # max_vocab is a ceiling; a small corpus can have fewer words than it.
    config = _config(max_vocab=1000, sampled_words=500)
    with pytest.raises(ValueError, match="fewer than the 40 words of the vocabulary"):
        check_trainable(_cycle_ids(2000), _cycle_ids(300), VOCAB, config)
