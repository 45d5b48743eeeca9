"""The training job: corpus -> vocabulary -> model -> a new version in the model store.

Everything that can be wrong with the input (settings, files, sizes, output name) is checked
before training starts, and the version is published atomically at the end, so a failed or
interrupted run writes nothing a server could pick up.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app import store
from app.tokenizer import Tokenizer
from app.training.config import TrainConfig
from app.training.corpus import load_splits
from app.training.evaluate import evaluate_ids, unigram_perplexity
from app.training.model import export_weights
from app.training.plot import plot_history
from app.training.trainer import check_trainable, train


def run_training(
    config: TrainConfig, log: Callable[[str], None] = print, verbose: bool = True
) -> store.Published:
    config.validate()
    store.check_writable(Path(config.store), config.name)
    splits = load_splits(
        Path(config.train),
        Path(config.valid) if config.valid else None,
        Path(config.test) if config.test else None,
        holdout=config.holdout,
    )
    tokenizer = Tokenizer.build(
        splits.train, config.tokenizer_config(), config.max_vocab, config.min_count
    )
    train_ids = tokenizer.encode_lines(splits.train)
    valid_ids = tokenizer.encode_lines(splits.valid)
    test_ids = tokenizer.encode_lines(splits.test) if splits.test else None
    check_trainable(train_ids, valid_ids, tokenizer.size, config)
    log(
        f"corpus: {len(train_ids):,} / {len(valid_ids):,} / "
        f"{len(test_ids) if test_ids is not None else 0:,} tokens (train/valid/test), "
        f"vocabulary {tokenizer.size:,}"
    )

    started = time.perf_counter()
    result = train(train_ids, valid_ids, tokenizer.size, config, log=log, verbose=verbose)
    metrics: dict[str, Any] = {
        "valid": evaluate_ids(result.model, valid_ids, config.hidden_units).to_dict()
    }
    if test_ids is not None:
        metrics["test"] = evaluate_ids(result.model, test_ids, config.hidden_units).to_dict()
    baseline = unigram_perplexity(train_ids, valid_ids, tokenizer.size)
    metrics["valid"]["unigram_perplexity"] = baseline
    wall_seconds = time.perf_counter() - started
    for split, values in metrics.items():
        log(
            f"{split}: perplexity {values['perplexity']:.2f}  top-1 {values['top1']:.3f}  "
            f"top-5 {values['top5']:.3f}"
        )

    def write(folder: Path) -> dict[str, Any]:
        from safetensors.numpy import save_file

        result.model.save(folder / store.KERAS_MODEL)
        save_file(export_weights(result.model, result.model_config), folder / store.WEIGHTS)
        tokenizer.save(folder / store.TOKENIZER)
        history = [vars(record) for record in result.history]
        plot_history(history, folder / "training_curve.png")
        return {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "architecture": {"type": "simple_rnn", **vars(result.model_config)},
            "tokenizer": {"preset": config.preset, "vocabulary_size": tokenizer.size},
            "training": {
                "config": config.to_dict(),
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "stop_reason": result.stop_reason,
                "train_seconds": round(result.train_seconds, 1),
                "wall_seconds": round(wall_seconds, 1),
                "tokens_per_second": round(result.train_tokens_per_second, 1),
                "history": history,
            },
            "corpus": {
                "sources": splits.sources,
                "tokens": {
                    "train": len(train_ids),
                    "valid": len(valid_ids),
                    "test": len(test_ids) if test_ids is not None else 0,
                },
                "unknown_rate_train": float(np.mean(train_ids == tokenizer.unknown_id)),
            },
            "metrics": metrics,
            "libraries": {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
            },
        }

    published = store.publish(Path(config.store), config.name, write)
    log(f"saved {published.path}")
    return published
