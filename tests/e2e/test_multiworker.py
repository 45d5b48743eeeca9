"""Multi-worker training: 2 `nextword train` processes on 127.0.0.1 under
tf.distribute.MultiWorkerMirroredStrategy train in step, the chief alone publishes one version,
its perplexity is the one-process run's, a worker whose peer never comes fails in one line, and
a job whose worker is killed mid-epoch resumes from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import store
from app.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A tiny model; batch 8 (the global batch) is 4 streams a worker. 150 windows an epoch.
SETTINGS = [
    "--preset", "raw", "--embedding-dim", "16", "--hidden-units", "16", "--batch-size", "8",
    "--bptt", "10", "--learning-rate", "0.01", "--clip-norm", "1.0", "--name", "mw", "--quiet",
]  # fmt: skip
# Two workers train the global batch in float32 sums of two halves instead of one: the same
# model up to rounding, so their perplexity is the one process's within 0.1 %.
TOLERANCE = 1e-3


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def _start(index: int, ports: list[int], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    workers = ",".join(f"127.0.0.1:{port}" for port in ports)
    command = [sys.executable, "-m", "app.cli", "train", *args]
    command += ["--workers", workers, "--worker-index", str(index)]
    # The token ids in the test's folder: a worker ended by SIGKILL cannot remove them.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(log.parent)}
    env.pop("TF_CONFIG", None)
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output)


def _run_workers(args: list[str], logs: list[Path], timeout: float = 180) -> list[int]:
    ports = _free_ports(len(logs))
    processes = [_start(i, ports, args, log) for i, log in enumerate(logs)]
    return [process.wait(timeout=timeout) for process in processes]


def _lines(log: Path) -> list[str]:
    return log.read_text(errors="replace").splitlines()


def _digest(log: Path) -> str:
    found = [line.rsplit(" ", 1)[1] for line in _lines(log) if "final weights sha256" in line]
    assert len(found) == 1, _lines(log)[-20:]
    return found[0]


def _valid_perplexity(store_dir: Path, name: str) -> float:
    path = store.version_dir(store_dir, name, "latest")
    return float(json.loads((path / store.MANIFEST).read_text())["metrics"]["valid"]["perplexity"])


def test_two_workers_train_in_step_and_publish_one_version(
    corpus_file: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "store"
    args = [str(corpus_file), *SETTINGS, "--epochs", "2", "--store", str(stores)]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    assert _run_workers(args, logs) == [0, 0], [_lines(log)[-5:] for log in logs]
    assert _digest(logs[0]) == _digest(logs[1])  # the same final weights on both workers
    assert store.versions(stores, "mw") == [1]
    assert not (stores / "mw" / ".checkpoints").exists()
    manifest = json.loads((stores / "mw" / "1" / store.MANIFEST).read_text())
    assert manifest["training"]["workers"] == 2
    assert any("global batch 8 streams (4 a worker" in line for line in _lines(logs[1]))

    alone = tmp_path / "alone"
    code = main(["train", *args[:-2], "--store", str(alone), "--name", "alone"])
    assert code == 0
    one, two = _valid_perplexity(alone, "alone"), _valid_perplexity(stores, "mw")
    assert abs(two - one) / one < TOLERANCE, (one, two)


def test_a_worker_whose_peer_never_comes_fails_in_one_line(
    corpus_file: Path, tmp_path: Path
) -> None:
    log = tmp_path / "worker1.log"
    args = [str(corpus_file), *SETTINGS, "--store", str(tmp_path / "s"), "--worker-timeout", "3"]
    started = time.monotonic()
    worker = _start(1, _free_ports(2), args, log)
    assert worker.wait(timeout=120) != 0
    assert time.monotonic() - started < 60
    last = _lines(log)[-1]
    assert last.startswith("nextword: error: worker 1 of 2: the other workers (127.0.0.1:")
    assert "did not all join within 3 s" in last
    assert store.versions(tmp_path / "s", "mw") == []


def test_a_killed_worker_resumes_from_the_last_checkpoint(
    corpus_file: Path, tmp_path: Path
) -> None:
    stores = tmp_path / "store"
    args = [str(corpus_file), *SETTINGS, "--epochs", "3", "--store", str(stores)]
    args += ["--checkpoint-every", "20", "--worker-timeout", "30"]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    ports = _free_ports(2)
    chief, other = (_start(i, ports, args, log) for i, log in enumerate(logs))
    deadline = time.monotonic() + 120
    while not any(line.startswith("checkpoint: epoch 1") for line in _lines(logs[0])):
        assert chief.poll() is None and time.monotonic() < deadline, _lines(logs[0])[-5:]
        time.sleep(0.05)
    other.send_signal(signal.SIGKILL)  # mid-epoch 1: 150 windows, a checkpoint every 20
    assert other.wait(timeout=30) == -signal.SIGKILL
    assert chief.wait(timeout=60) == 1
    assert _lines(logs[0])[-1].startswith("nextword: error: worker 0 of 2: lost another worker")
    assert store.versions(stores, "mw") == []

    logs = [tmp_path / "again0.log", tmp_path / "again1.log"]
    assert _run_workers(args, logs) == [0, 0], [_lines(log)[-5:] for log in logs]
    for log in logs:
        resumed = [line for line in _lines(log) if line.startswith("resumed from the checkpoint")]
        assert len(resumed) == 1, _lines(log)[-10:]
        epoch, window = resumed[0].split(": epoch ")[1].split(", window ")
        assert (int(epoch), int(window.split()[0]) > 0) == (1, True), resumed
    assert _digest(logs[0]) == _digest(logs[1])
    assert store.versions(stores, "mw") == [1]
