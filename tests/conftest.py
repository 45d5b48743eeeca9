"""Shared fixtures: a small patterned corpus, a tiny model trained on it (seconds), and a helper
that serves a model from a real server process."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "follows", "helps", "watches"]
OBJECTS = ["the ball", "a tree", "the river", "the old house", "a small boat"]
PLACES = ["in the morning", "at night", "after school", "near the park"]


def patterned_lines(count: int, seed: int = 0) -> list[str]:
    """Simple English sentences with strong regularities a tiny RNN can learn."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
        for _ in range(count)
    ]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-line corpus (~13k tokens); valid and test are cut from its end."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(patterned_lines(1500)) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class TinyModel:
    store: Path
    name: str
    version: int

    @property
    def path(self) -> Path:
        return self.store / self.name / str(self.version)


def train_tiny(corpus: Path, store: Path, name: str = "tiny", **settings: object) -> TinyModel:
    """Train a tiny model with the project's own training job and publish it into `store`."""
    from app.training.config import make_config
    from app.training.job import run_training

    defaults: dict[str, object] = dict(
        preset="raw", embedding_dim=16, hidden_units=16, epochs=3, batch_size=8, bptt=10,
        learning_rate=0.01, clip_norm=1.0,
    )  # fmt: skip
    config = make_config(
        None, train=str(corpus), store=str(store), name=name, **{**defaults, **settings}
    )
    published = run_training(config, log=lambda _: None, verbose=False)
    return TinyModel(store, published.name, published.version)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> TinyModel:
    """A tied 16-unit model trained for a few seconds; shared by the tests that only read it."""
    return train_tiny(corpus_file, tmp_path_factory.mktemp("store"))


# --- a real server in a subprocess (end-to-end and browser tests) ---------------------------

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(model: TinyModel, log_dir: Path, ready_within: float = 30.0) -> Iterator[Server]:
    """`python -m app.cli serve` for `model` on a free port; yields once /ready answers 200."""
    import httpx

    port = free_port()
    log = log_dir / f"server-{port}.log"
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(model.store),
        "--name", model.name, "--version", str(model.version), "--port", str(port),
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + "/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within {ready_within} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: uvicorn shuts down gracefully
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
