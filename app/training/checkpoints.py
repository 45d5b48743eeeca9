"""Training checkpoints: a run that was killed resumes where it stopped, not from the start.

A checkpoint (tf.train.Checkpoint; a CheckpointManager keeps the last two) holds everything the
loop needs to go on as if it had never stopped:

    model      every variable of the model, the dropout layers' seed-generator states included
    optimizer  its variables: iteration count, learning rate, moments
    average    the EMA weights and their update count
    best       the best weights so far (restored at the end of training)
    state      the recurrent state of the whole global batch after the saved window (batch, hidden)
    progress   JSON: the data position (epoch, window), the epoch's loss so far, the history...

It is written every `checkpoint_every` windows and at the end of every epoch into
`checkpoint_dir`, by default <store>/<name>/.checkpoints/<fingerprint>/ (hidden, beside the
versions), where the fingerprint names the settings and the corpus files, so that only the same
run resumes from it. The folder is removed once the version is published. Under a strategy every
worker saves (the chief into the folder, the others into a scratch folder they delete at once)
and every worker restores from the folder: it must be one that all workers can read.

Not restored: the sampled softmax's sampler, whose state is inside its TensorFlow op; after a
resume it draws other words than an uninterrupted run would (with the full softmax, a resumed
run ends with the very weights of an uninterrupted one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from app.training.config import TrainConfig

# Settings that do not change what is trained: a run resumes across changes to these.
_NOT_IN_FINGERPRINT = ("store", "name", "checkpoint_dir", "checkpoint_every", "worker_timeout")
_PROGRESS_KEY = "progress/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass
class Progress:
    """Where the training loop is; saved in every checkpoint."""

    fingerprint: str
    epoch: int = 1  # the epoch under way, from 1
    window: int = 0  # its windows trained so far
    loss_sum: float = 0.0  # their summed training loss
    epoch_seconds: float = 0.0  # the time they took
    windows_trained: int = 0  # in all epochs (for max_windows)
    best_perplexity: float = math.inf
    best_epoch: int = 0
    epochs_without_gain: int = 0
    train_seconds: float = 0.0  # in training steps
    wall_seconds: float = 0.0  # since the run started, validation included (for max_minutes)
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str = ""  # set once training is over (a resume then goes on to saving)


def fingerprint(config: TrainConfig) -> str:
    """What makes two runs the same run: the settings and the corpus files (path, size, time)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
    files = []
    for name in ("train", "valid", "test"):
        value = getattr(config, name)
        if value:
            path = Path(value).resolve()
            stat = path.stat()
            files.append([name, str(path), stat.st_size, stat.st_mtime_ns])
    text = json.dumps([settings, files], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_folder(config: TrainConfig, run: str) -> Path:
    if config.checkpoint_dir:
        return Path(config.checkpoint_dir)
    return Path(config.store) / config.name / ".checkpoints" / run


class TrainingCheckpoint:
    """Save and restore one run's checkpoints in `folder`.

    `worker`: None in one process and on the chief; another worker's index otherwise (it saves
    into a scratch folder, as a strategy needs every worker to take part in a save).
    """

    def __init__(
        self,
        folder: Path,
        run: str,
        trackables: dict[str, list[Any]],
        best_weights: list[np.ndarray],
        state_shape: tuple[int, int],
        worker: int | None = None,
    ) -> None:
        self.folder = folder
        self.run = run
        self.scratch = folder / f".worker-{worker}"
        # Plain variables (outside any strategy scope): the same values on every worker.
        self.best = [tf.Variable(w, trainable=False) for w in best_weights]
        self.state = tf.Variable(tf.zeros(state_shape), trainable=False)
        self.progress = tf.Variable("", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            best=self.best, state=self.state, progress=self.progress, **trackables
        )
        self.manager = (
            tf.train.CheckpointManager(self.checkpoint, folder, max_to_keep=2)
            if worker is None
            else None
        )

    @classmethod
    def of_training(
        cls,
        folder: Path,
        run: str,
        model: Any,
        optimizer: Any,
        average: Any,
        best_weights: list[np.ndarray],
        state_shape: tuple[int, int],
        worker: int | None,
    ) -> TrainingCheckpoint:
        """The checkpoint of a training loop's model, optimizer and weight average."""
        trackables = {
            "model": [v.value for v in model.variables],  # seed-generator states included
            "optimizer": [v.value for v in optimizer.variables],
            "average": [*average.averages, average.updates] if average else [],
        }
        return cls(folder, run, trackables, best_weights, state_shape, worker)

    def restore(self) -> tuple[Progress, np.ndarray, list[np.ndarray]] | None:
        """(progress, global recurrent state, best weights) of the last checkpoint, or None."""
        path = tf.train.latest_checkpoint(str(self.folder))
        if path is None:
            return None
        saved = json.loads(tf.train.load_variable(path, _PROGRESS_KEY).decode())
        if saved.get("fingerprint") != self.run:
            raise ValueError(
                f"checkpoint {path} is of another run (other settings or corpus files): remove "
                f"{self.folder} or give another --checkpoint-dir"
            )
        self.checkpoint.restore(path).assert_existing_objects_matched()
        best = [np.asarray(v) for v in self.best]
        return Progress(**saved), np.asarray(self.state), best

    def save(self, progress: Progress, state: np.ndarray, best_weights: list[np.ndarray]) -> str:
        """Write a checkpoint; returns where (the chief's path, a scratch path elsewhere)."""
        for variable, value in zip(self.best, best_weights, strict=True):
            variable.assign(value)
        self.state.assign(state)
        self.progress.assign(json.dumps(asdict(progress)))
        if self.manager is not None:
            return str(self.manager.save())
        path = self.checkpoint.write(str(self.scratch / "ckpt"))
        shutil.rmtree(self.scratch, ignore_errors=True)
        return str(path)


@contextlib.contextmanager
def lock_run(folder: Path, chief: bool) -> Iterator[None]:
    """Hold the run's checkpoint folder (the chief does): a second run of the same settings and
    corpus into the same store fails at once instead of writing over the first's checkpoints."""
    if not chief:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another run of the same settings and corpus is training into {folder}: wait "
                "for it, or give this one another --checkpoint-dir"
            ) from None
        yield


def remove_checkpoints(folder: Path) -> None:
    """After the version is published: the run is over, nothing to resume."""
    shutil.rmtree(folder, ignore_errors=True)
    if folder.parent.name == ".checkpoints":
        with contextlib.suppress(OSError):  # not empty: another run's checkpoints
            folder.parent.rmdir()
