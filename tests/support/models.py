"""Models for tests: a patterned corpus a tiny RNN learns in seconds, the training job run on
it, and predictors with random weights (no training) for the engine's and backend's tests."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.inference.blocklist import Blocklist
from app.inference.predictor import ModelInfo, Predictor
from app.inference.weights import Architecture, weights_from_arrays
from app.tokenizer import PRESETS, Tokenizer

REPO = Path(__file__).resolve().parents[2]
# The corpora beside the repository, when they are there (optional tests skip without them).
SHARED_DATA = REPO.parent / "shared" / "data"

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


@dataclass(frozen=True)
class TinyModel:
    """A version published in a model store."""

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


def random_arrays(
    vocab: int, embed: int, hidden: int, tied: bool = True, seed: int = 0, scale: float = 0.5
) -> dict[str, np.ndarray]:
    """Exported arrays of an untrained model, as `app.training` would save them."""
    rng = np.random.default_rng(seed)

    def uniform(*shape: int) -> np.ndarray:
        return rng.uniform(-scale, scale, shape).astype(np.float32)

    arrays = {
        "embedding": uniform(vocab, embed),
        "rnn.input_kernel": uniform(embed, hidden),
        "rnn.recurrent_kernel": uniform(hidden, hidden),
        "rnn.bias": uniform(hidden),
        "output.bias": uniform(vocab),
    }
    if tied and embed != hidden:
        arrays["projection.kernel"] = uniform(hidden, embed)
    if not tied:
        arrays["output.kernel"] = uniform(hidden, vocab)
    return arrays


def random_predictor(
    vocab: int = 300,
    embed: int = 16,
    hidden: int = 16,
    tied: bool = True,
    seed: int = 0,
    cache_size: int = 4096,
    blocklist: Blocklist | None = None,
) -> Predictor:
    """A Predictor over random weights and the words w2, w3, ... (ids 0 and 1: <unk>, <eos>)."""
    arrays = random_arrays(vocab, embed, hidden, tied, seed)
    weights = weights_from_arrays(arrays, Architecture(vocab, embed, hidden, tied))
    words = ["<unk>", "<eos>", *(f"w{i}" for i in range(2, vocab))]
    tokenizer = Tokenizer(PRESETS["raw"], words)
    info = ModelInfo("random", 1, Path("random/1"), vocab, {"type": "simple_rnn"}, {})
    return Predictor(weights, tokenizer, info, cache_size, blocklist)
