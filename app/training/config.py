"""Training settings: one dataclass, readable from a TOML recipe and overridable from the CLI."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from app.tokenizer import PRESETS, TokenizerConfig


@dataclass(frozen=True)
class TrainConfig:
    # --- corpus ---
    train: str = ""  # training text (UTF-8, one sentence a line)
    valid: str = ""  # validation text; empty: cut from the end of `train`
    test: str = ""  # test text; empty: cut from the end of `train` (only when `valid` is empty)
    holdout: float = 0.05  # fraction of lines for valid and for test when cut from `train`
    # --- tokenizer ---
    preset: str = "raw"  # ptb | wikitext | raw: standardisation (see app.tokenizer.PRESETS)
    max_vocab: int = 10_000  # largest vocabulary, <unk> and <eos> included
    min_count: int = 1  # words seen fewer times in training become <unk>
    # --- model ---
    embedding_dim: int = 256
    hidden_units: int = 256
    dropout: float = 0.0  # on the embedding output and on the RNN output
    locked_dropout: bool = False  # the same dropout mask at every time step of a window
    tied: bool = True  # output layer shares the embedding matrix
    init_scale: float = 0.05
    # --- optimisation ---
    # Training loss: "full" softmax over the whole vocabulary, or "sampled" softmax (Jean et al.
    # 2015): the target against `sampled_words` words drawn by frequency rank, which spares the
    # (batch, time, vocab) logits that dominate a step once the vocabulary is large. Validation
    # and the final metrics are always the exact full softmax; the saved model is the same.
    softmax: str = "full"
    # Words drawn (log-uniform over the frequency-ranked ids, shared by the whole batch) per step
    # of the sampled loss; more words: a closer estimate of the full loss, a slower step.
    sampled_words: int = 1024
    batch_size: int = 32  # contiguous streams trained side by side
    bptt: int = 35  # truncated back-propagation window, in tokens
    epochs: int = 10
    optimizer: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # decoupled weight decay (adamw only)
    # Evaluate and save an exponential moving average of the weights (0: off). Averaging the
    # weights late in training is one of the strongest levers for recurrent LMs (cf. ASGD).
    ema_decay: float = 0.0
    clip_norm: float = 0.25  # global gradient-norm clip
    # When validation perplexity stops improving, multiply the learning rate by this factor...
    lr_decay: float = 0.5
    # ... after this many epochs without improvement (0: on the first one).
    plateau_patience: int = 0
    # Stop after this many epochs without improvement (the best weights are restored).
    early_stop_patience: int = 3
    min_learning_rate: float = 1e-6  # stop once the learning rate decays below this
    max_minutes: float = 0.0  # no epoch is started that would end past this (0: no limit)
    # Stop after this many training windows in all, mid-epoch if need be (0: no limit): a short
    # run on a large corpus. The last epoch is then validated and recorded as it stands.
    max_windows: int = 0
    seed: int = 1234
    # --- checkpoints and multi-worker training (see app.training.checkpoints, .distributed) ---
    # Folder of this run's checkpoints; empty: <store>/<name>/.checkpoints/<run fingerprint>.
    # A run started again with the same settings and corpus resumes from the last one.
    checkpoint_dir: str = ""
    # Also save a checkpoint every this many windows (0: at the end of each epoch only).
    checkpoint_every: int = 500
    # Seconds a worker waits for the others (to join, then at each step) before it fails.
    worker_timeout: float = 300.0
    # --- output ---
    store: str = "model_store"
    name: str = "default"

    def tokenizer_config(self) -> TokenizerConfig:
        return PRESETS[self.preset]

    def validate(self) -> None:
        """Raise ValueError naming the first setting that makes no sense."""
        if not self.train:
            raise ValueError("train: a training text file is required")
        if self.test and not self.valid:
            raise ValueError("test: a test file needs a valid file too")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        checks: list[tuple[str, bool, str]] = [
            ("holdout", 0 < self.holdout < 0.5, "between 0 and 0.5"),
            ("max_vocab", self.max_vocab >= 3, "at least 3"),
            ("min_count", self.min_count >= 1, "at least 1"),
            ("embedding_dim", 1 <= self.embedding_dim <= 8192, "between 1 and 8192"),
            ("hidden_units", 1 <= self.hidden_units <= 8192, "between 1 and 8192"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("init_scale", 0 < self.init_scale <= 1, "in (0, 1]"),
            ("softmax", self.softmax in ("full", "sampled"), "full or sampled"),
            (
                "sampled_words",
                1 <= self.sampled_words < self.max_vocab,
                "at least 1 and fewer than max_vocab",
            ),
            ("batch_size", 1 <= self.batch_size <= 4096, "between 1 and 4096"),
            ("bptt", 1 <= self.bptt <= 10_000, "between 1 and 10000"),
            ("epochs", 1 <= self.epochs <= 10_000, "between 1 and 10000"),
            ("optimizer", self.optimizer in ("adam", "adamw", "sgd"), "adam, adamw or sgd"),
            ("weight_decay", 0 <= self.weight_decay < 1, "in [0, 1)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("learning_rate", 0 < self.learning_rate <= 100, "in (0, 100]"),
            ("clip_norm", self.clip_norm > 0, "positive"),
            ("lr_decay", 0 < self.lr_decay <= 1, "in (0, 1]"),
            ("plateau_patience", self.plateau_patience >= 0, "0 or more"),
            ("early_stop_patience", self.early_stop_patience >= 1, "at least 1"),
            ("min_learning_rate", self.min_learning_rate >= 0, "0 or more"),
            ("max_minutes", self.max_minutes >= 0, "0 or more"),
            ("max_windows", self.max_windows >= 0, "0 or more"),
            ("checkpoint_every", self.checkpoint_every >= 0, "0 or more"),
            ("worker_timeout", self.worker_timeout > 0, "positive"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_recipe(path: Path) -> dict[str, Any]:
    """Settings from a TOML recipe (flat keys named as the TrainConfig fields)."""
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"recipe {path} is not valid TOML ({error})") from None
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"recipe {path} has unknown settings: {', '.join(unknown)}")
    return values


def make_config(recipe: Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe, then explicit overrides (None means 'not given')."""
    config = TrainConfig()
    if recipe is not None:
        config = _typed_replace(config, load_recipe(recipe))
    config = _typed_replace(config, {k: v for k, v in overrides.items() if v is not None})
    config.validate()
    return config


def _typed_replace(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    checked: dict[str, Any] = {}
    for key, value in values.items():
        expected = types[key]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ValueError(f"{key} must be a {expected.__name__}, not {value!r}")
        checked[key] = value
    return replace(config, **checked)
