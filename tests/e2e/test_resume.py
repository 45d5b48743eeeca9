"""Checkpoints: a training run stopped mid-epoch resumes from its last checkpoint, not from the
start, and ends with the very weights of a run that was never stopped."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app import store
from app.training.checkpoints import checkpoint_folder, fingerprint, lock_run
from app.training.config import TrainConfig, make_config
from app.training.job import run_training

pytestmark = pytest.mark.slow

# Dropout (its seed generators' states), locked masks and the weight average all have to come
# back from the checkpoint for the weights to match exactly.
SETTINGS: dict[str, Any] = dict(
    preset="raw", embedding_dim=16, hidden_units=16, epochs=2, batch_size=8, bptt=10,
    learning_rate=0.01, clip_norm=1.0, dropout=0.2, locked_dropout=True, ema_decay=0.99,
    checkpoint_every=40,
)  # fmt: skip


class Crash(Exception):
    """Stands for the process being killed."""


def _config(corpus: Path, store_dir: Path, **settings: Any) -> TrainConfig:
    values = {**SETTINGS, **settings}
    return make_config(None, train=str(corpus), store=str(store_dir), name="r", **values)


def _train(config: TrainConfig, log: Any) -> Any:
    return run_training(config, log=log, verbose=False)


def _crash_after(line_start: str, lines: list[str]) -> Any:
    def log(line: str) -> None:
        lines.append(line)
        if line.startswith(line_start):
            raise Crash(line)

    return log


def test_a_stopped_run_resumes_mid_epoch_and_ends_as_if_never_stopped(
    corpus_file: Path, tmp_path: Path
) -> None:
    config = _config(corpus_file, tmp_path / "resumed")
    folder = checkpoint_folder(config, fingerprint(config))
    first: list[str] = []
    with pytest.raises(Crash):
        _train(config, _crash_after("checkpoint: epoch 1 window 80", first))
    assert any(line.startswith("checkpoint: epoch 1 window 40") for line in first)
    assert store.versions(tmp_path / "resumed", "r") == []
    assert folder.is_dir()

    second: list[str] = []
    published = _train(config, second.append)
    assert published is not None
    resumed = [line for line in second if line.startswith("resumed from the checkpoint")]
    assert resumed == [f"resumed from the checkpoint in {folder}: epoch 1, window 80 of 150"]
    assert not folder.exists(), "the checkpoints outlived the published version"
    scratch = Path(tempfile.gettempdir()) / f"nextword-ids-{fingerprint(config)}-0"
    assert not scratch.exists()

    never_stopped = _train(_config(corpus_file, tmp_path / "whole"), lambda _: None)
    assert never_stopped is not None
    expected = store.load_weights(never_stopped.path)
    got = store.load_weights(published.path)
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_a_checkpoint_of_other_settings_is_refused(corpus_file: Path, tmp_path: Path) -> None:
    shared = tmp_path / "checkpoints"
    config = _config(corpus_file, tmp_path / "s", checkpoint_dir=str(shared))
    with pytest.raises(Crash):
        _train(config, _crash_after("checkpoint:", []))
    other = _config(corpus_file, tmp_path / "s", checkpoint_dir=str(shared), learning_rate=0.02)
    with pytest.raises(ValueError, match="is of another run"):
        _train(other, lambda _: None)


def test_two_runs_of_the_same_settings_cannot_share_checkpoints(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with lock_run(folder, chief=True):
        refused = pytest.raises(ValueError, match="another run of the same settings")
        with refused, lock_run(folder, chief=True):
            pass
        with lock_run(folder, chief=False):  # the other workers do not lock
            pass
