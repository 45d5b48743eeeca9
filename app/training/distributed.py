"""Where the training loop runs: one process, or one worker of several under
tf.distribute.MultiWorkerMirroredStrategy. The loop asks this object the same questions either
way; in one process every answer is the trivial one.

Sharding: the global batch is `batch_size` contiguous streams, exactly those one process would
train on (corpus.batchify). Worker i of n trains rows i * batch_size / n ... (i + 1) *
batch_size / n - 1 of them and reads only those rows from the token file; it carries the
recurrent state of its rows. The gradients are summed across workers at every step (see
app.training.steps), so every step is the step of the global batch, at the learning rate as
given (not scaled: n workers train the model one process would train with the same batch).

Decisions that end an epoch or the run (validation perplexity, the time budget) are the chief's
numbers, broadcast to all, so the workers never disagree on whether to go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from app.training.cluster import Cluster, Watchdog, WorkerError

# What a collective raises on a worker whose peer died or was cut off.
_LOST_PEER = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


class Distribution:
    """One process (cluster None) or one worker of `cluster`.

    `timeout`: seconds a worker waits for the others, at start-up and at every step, before it
    fails with a one-line error (exit status 137, from the watchdog).
    """

    def __init__(self, cluster: Cluster | None, batch_size: int, timeout: float) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.strategy: tf.distribute.Strategy | None = None
        self.watchdog: Watchdog | None = None
        workers = cluster.size if cluster else 1
        if batch_size % workers:
            raise ValueError(
                f"batch_size ({batch_size}, the global batch) must be a multiple of the "
                f"{workers} workers, so that each trains the same number of streams"
            )
        index = cluster.index if cluster else 0
        share = batch_size // workers
        self.rows = range(index * share, (index + 1) * share)
        if cluster is None:
            return
        os.environ["TF_CONFIG"] = cluster.tf_config
        self.watchdog = Watchdog()
        peers = ", ".join(a for i, a in enumerate(cluster.workers) if i != cluster.index)
        self.watchdog.arm(
            timeout,
            f"{cluster.describe()}: the other workers ({peers}) did not all join within "
            f"{timeout:g} s: start every worker with the same --workers list (or TF_CONFIG "
            "cluster) and check that each can reach the others' host:port",
        )
        try:
            self.strategy = strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (tf.errors.OpError, RuntimeError, ValueError) as error:  # e.g. a port in use
            self.close()
            first = str(getattr(error, "message", error)).strip().splitlines()[0][:200]
            raise WorkerError(f"{cluster.describe()}: cannot start ({first})") from None
        context = tf.distribute.get_replica_context
        # Collectives outside the training step, compiled (eager ones are slow, and warn so);
        # tf.identity places the value on this replica's device, as a collective needs.
        self._sum = tf.function(
            lambda value: strategy.run(
                lambda v: context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(v)),
                args=(value,),
            )
        )
        self._gather = tf.function(
            lambda value: strategy.run(
                lambda v: context().all_gather(tf.identity(v), axis=0), args=(value,)
            )
        )
        self.agree([0.0])  # a barrier: every worker is there

    @property
    def index(self) -> int:
        return self.cluster.index if self.cluster else 0

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    def scope(self) -> Any:
        """Create the model, optimizer and averages inside this (mirrored on every worker)."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def describe_batch(
        self, batch_size: int, bptt: int, learning_rate: float, log: Callable[[str], None]
    ) -> None:
        """Log the global batch and the learning rate (under a strategy only)."""
        if self.cluster is None:
            return
        log(
            f"{self.cluster.describe()}: global batch {batch_size} streams ({len(self.rows)} a "
            f"worker, rows {self.rows.start}-{self.rows.stop - 1} here) x {bptt} tokens = "
            f"{batch_size * bptt} tokens a step, learning rate {learning_rate:g} (as for one "
            f"process with batch {batch_size}: not scaled by the {self.cluster.size} workers)"
        )

    def pet(self) -> None:
        """Progress: the other workers answered; wait for them another `timeout` seconds."""
        if self.watchdog and self.cluster:
            self.watchdog.arm(
                self.timeout,
                f"{self.cluster.describe()}: no answer from the other workers for "
                f"{self.timeout:g} s: restart every worker (training resumes from the last "
                "checkpoint)",
            )

    def rest(self) -> None:
        """Work without the others for a while (validation, saving): no deadline."""
        if self.watchdog:
            self.watchdog.disarm()

    def close(self) -> None:
        if self.watchdog:
            self.watchdog.close()
            self.watchdog = None

    @contextlib.contextmanager
    def lost_peers_fail(self) -> Iterator[None]:
        """Turn a collective's error (a worker died) into a one-line WorkerError."""
        try:
            yield
        except _LOST_PEER as error:
            if self.cluster is None:
                raise
            lines = str(error.message).strip().splitlines() or [type(error).__name__]
            reason = next((line for line in lines if "aborted by" in line), lines[0])[:200]
            raise WorkerError(
                f"{self.cluster.describe()}: lost another worker ({reason}); restart every "
                "worker: training resumes from the last checkpoint"
            ) from None

    def agree(self, values: list[float]) -> list[float]:
        """The chief's `values`, on every worker."""
        if self.strategy is None or self.cluster is None:
            return values
        mine = np.asarray(values, np.float64) * (1.0 if self.cluster.is_chief else 0.0)
        return [float(v) for v in np.asarray(self._sum(tf.constant(mine)))]

    def check_same_checkpoint(self, epoch: int, window: int, folder: Path) -> None:
        """Fail unless every worker resumed from where the chief did (or none resumed)."""
        position = [float(epoch), float(window)]
        if self.agree(position) != position:
            raise WorkerError(
                f"this worker resumed from another checkpoint than the chief in {folder}: the "
                "checkpoint folder must be one folder that every worker reads (a shared volume)"
            )

    def gather_state(self, state: tf.Tensor) -> np.ndarray:
        """Every worker's rows of the recurrent state, in row order: (batch_size, hidden)."""
        return np.asarray(self._gather(state) if self.strategy else state)

    def local_state(self, full_state: np.ndarray) -> tf.Tensor:
        """This worker's rows of a (batch_size, hidden) state."""
        return tf.constant(full_state[self.rows.start : self.rows.stop])


def weights_digest(model: keras.Model) -> str:
    """sha256 of every weight: equal on workers that trained in step."""
    return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()[:16]
