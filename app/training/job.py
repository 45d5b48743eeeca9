"""The training job: corpus -> vocabulary -> model -> a new version in the model store.

Everything that can be wrong with the input (settings, files, sizes, output name) is checked
before training starts, and the version is published atomically at the end, so a failed or
interrupted run writes nothing a server could pick up (a killed run leaves checkpoints, hidden,
that the same command resumes from).

The corpus is streamed: one pass builds the vocabulary, one writes the ids of each split to a
temporary folder ($TMPDIR, 4 bytes a token), and training reads the training ids back from disk,
so memory does not grow with the training split. Validation and test ids are held in memory.
Under a strategy every worker does all this; the chief alone evaluates and publishes.
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
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
from app.training.checkpoints import (
    checkpoint_folder,
    fingerprint,
    lock_run,
    remove_checkpoints,
)
from app.training.cluster import Cluster
from app.training.config import TrainConfig
from app.training.corpus import plan_splits
from app.training.evaluate import evaluate_ids, unigram_perplexity_of_counts
from app.training.model import export_weights
from app.training.plot import plot_history
from app.training.stream import write_ids
from app.training.trainer import check_trainable, train


def run_training(
    config: TrainConfig,
    log: Callable[[str], None] = print,
    verbose: bool = True,
    cluster: Cluster | None = None,
) -> store.Published | None:
    """Train and publish a version (None on a worker other than the chief, which publishes)."""
    config.validate()
    store.check_writable(Path(config.store), config.name)
    splits = plan_splits(
        Path(config.train),
        Path(config.valid) if config.valid else None,
        Path(config.test) if config.test else None,
        holdout=config.holdout,
    )
    tokenizer = Tokenizer.build(
        splits.train.lines(), config.tokenizer_config(), config.max_vocab, config.min_count
    )
    run = fingerprint(config)
    checkpoints = (checkpoint_folder(config, run), run)
    # Named by run and worker, not at random: a worker killed (SIGKILL skips any clean-up) and
    # started again writes over its own ids instead of leaving one more copy behind.
    scratch = Path(tempfile.gettempdir()) / f"nextword-ids-{run}-{cluster.index if cluster else 0}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        train_ids, train_counts = write_ids(splits.train.lines(), tokenizer, scratch / "train")
        valid_ids = write_ids(splits.valid.lines(), tokenizer, scratch / "valid")[0].read()
        test_ids = None
        if splits.test is not None:
            test_ids = write_ids(splits.test.lines(), tokenizer, scratch / "test")[0].read()
        check_trainable(train_ids, valid_ids, tokenizer.size, config)
        log(
            f"corpus: {len(train_ids):,} / {len(valid_ids):,} / "
            f"{len(test_ids) if test_ids is not None else 0:,} tokens (train/valid/test), "
            f"vocabulary {tokenizer.size:,}"
        )
        started = time.perf_counter()
        with lock_run(checkpoints[0], cluster is None or cluster.is_chief):
            result = train(
                train_ids, valid_ids, tokenizer.size, config, log, verbose, cluster, checkpoints
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if cluster is not None and not cluster.is_chief:
        log(f"{cluster.describe()}: done; the chief (worker 0) evaluates and saves the version")
        return None
    metrics: dict[str, Any] = {
        "valid": evaluate_ids(result.model, valid_ids, config.hidden_units).to_dict()
    }
    if test_ids is not None:
        metrics["test"] = evaluate_ids(result.model, test_ids, config.hidden_units).to_dict()
    baseline = unigram_perplexity_of_counts(train_counts, valid_ids)
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
                "workers": cluster.size if cluster else 1,
            },
            "corpus": {
                "sources": splits.sources,
                "tokens": {
                    "train": len(train_ids),
                    "valid": len(valid_ids),
                    "test": len(test_ids) if test_ids is not None else 0,
                },
                "unknown_rate_train": float(train_counts[tokenizer.unknown_id] / len(train_ids)),
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
    remove_checkpoints(checkpoints[0])
    log(f"saved {published.path}")
    return published
