"""What every `nextword train` option means, with its unit, and its group in `--help`.

One table, OPTIONS, keyed by TrainConfig field (and by the few flags that are no setting:
--recipe, --quiet, --workers, --worker-index). The parser is built from it, so a new field
without an entry here fails as soon as the parser is built (and tests/unit/test_train_options.py
says which). TensorFlow-free: `nextword train --help` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.training.config import TrainConfig

# The sections of `nextword train --help`, in order: name -> what its options decide.
GROUPS: dict[str, str] = {
    "recipe": "settings from a file; the flags below override them",
    "data": "the corpus, how it is split, and the vocabulary",
    "model": "the network: Embedding -> SimpleRNN -> Dense over the vocabulary",
    "optimisation": "how the weights are fitted, and when training stops",
    "distribution": "several workers (tf.distribute), checkpoints and resuming",
    "output": "where the trained version is written, and what is printed",
}

# name -> (group, one-line help: what it does, in which unit). Defaults are added to the help.
OPTIONS: dict[str, tuple[str, str]] = {
    "recipe": ("recipe", "TOML file of settings, a key a flag (max_vocab = 20000); see recipes/"),
    # --- data ---
    "train": ("data", "training text file: UTF-8, one sentence (or paragraph) a line"),
    "valid": ("data", "validation text file; empty: --holdout of the training file's last lines"),
    "test": ("data", "test text file (needs --valid); empty: --holdout lines after the valid ones"),
    "holdout": (
        "data",
        "fraction of the training file's lines cut from its end for validation, and as many "
        "again for test, when --valid is not given",
    ),
    "preset": (
        "data",
        "tokenizer standardisation (case, punctuation, numbers): raw (your own text), ptb or "
        "wikitext",
    ),
    "max_vocab": ("data", "largest vocabulary, in words, <unk> and <eos> included"),
    "min_count": ("data", "occurrences in training a word needs to be kept; rarer ones are <unk>"),
    # --- model ---
    "embedding_dim": ("model", "width of the word vectors, in units"),
    "hidden_units": ("model", "width of the SimpleRNN's hidden state, in units"),
    "dropout": ("model", "fraction of the embedding's and the RNN's outputs zeroed in training"),
    "locked_dropout": ("model", "true: one dropout mask for every time step of a window"),
    "tied": ("model", "true: the output layer shares the embedding matrix (fewer weights)"),
    "init_scale": ("model", "embedding weights start uniform in [-init_scale, init_scale]"),
    # --- optimisation ---
    "softmax": (
        "optimisation",
        "training loss: full (softmax over the vocabulary) or sampled (--sampled-words words); "
        "validation and metrics are always full",
    ),
    "sampled_words": (
        "optimisation",
        "words drawn per step for --softmax sampled: more is closer to the full loss, and slower",
    ),
    "batch_size": (
        "optimisation",
        "contiguous text streams trained side by side: the global batch, split across workers",
    ),
    "bptt": (
        "optimisation",
        "steps of backpropagation through time: tokens a training window holds",
    ),
    "epochs": (
        "optimisation",
        "most passes over the training split (early stopping may end sooner)",
    ),
    "optimizer": ("optimisation", "adam, adamw or sgd"),
    "learning_rate": ("optimisation", "the optimizer's step size at the start, as for one worker"),
    "weight_decay": (
        "optimisation",
        "decoupled weight decay: each step shrinks the weights by learning rate x this (adamw)",
    ),
    "ema_decay": (
        "optimisation",
        "decay of the moving average of the weights that is validated and saved (0: off)",
    ),
    "clip_norm": (
        "optimisation",
        "largest global L2 norm of a step's gradients; larger ones are scaled down to it",
    ),
    "lr_decay": (
        "optimisation",
        "factor the learning rate is multiplied by when validation perplexity stops improving",
    ),
    "plateau_patience": (
        "optimisation",
        "epochs without improvement before the learning rate decays (0: at the first)",
    ),
    "early_stop_patience": (
        "optimisation",
        "epochs without improvement before training stops (the best weights are kept)",
    ),
    "min_learning_rate": (
        "optimisation",
        "stop once --lr-decay has brought the learning rate below this",
    ),
    "max_minutes": (
        "optimisation",
        "time budget in minutes: no epoch starts that would end past it (0: no limit)",
    ),
    "max_windows": (
        "optimisation",
        "stop after this many windows (steps of batch x bptt tokens), even mid-epoch (0: no limit)",
    ),
    "seed": ("optimisation", "random seed of the initial weights, dropout and sampled words"),
    # --- distribution ---
    "workers": (
        "distribution",
        "host:port of every worker, comma-separated, in index order: train under "
        "MultiWorkerMirroredStrategy (without it and --worker-index: TF_CONFIG, if set)",
    ),
    "worker_index": (
        "distribution",
        "this process's index in --workers (0, the chief, evaluates and saves the version)",
    ),
    "worker_timeout": (
        "distribution",
        "seconds a worker waits for the others, to join and at each step, before it fails",
    ),
    "checkpoint_dir": (
        "distribution",
        "folder of this run's checkpoints; empty: <store>/<name>/.checkpoints/<fingerprint>",
    ),
    "checkpoint_every": (
        "distribution",
        "windows between checkpoints; one is also saved at each epoch's end (0: only that)",
    ),
    # --- output ---
    "store": ("output", "model store folder: versions go to <store>/<name>/<version>/"),
    "name": ("output", "model name: this run writes the next version of it"),
    "quiet": ("output", "no progress bar"),
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Every `nextword train` option, in the GROUPS sections, helped from OPTIONS.

    The settings (TrainConfig fields) default to None, "not given", so a recipe's value stands
    unless a flag overrides it; their help shows TrainConfig's default.
    """
    missing = [f.name for f in fields(TrainConfig) if f.name not in OPTIONS]
    if missing:
        raise LookupError(f"no help in app/training/options.py for: {', '.join(missing)}")
    groups = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}

    def add(name: str, *flags: str, **kwargs: Any) -> None:
        group, text = OPTIONS[name]
        groups[group].add_argument(*flags, help=text, **kwargs)

    add("train", "train_file", nargs="?")
    add("recipe", "--recipe", type=Path)
    add("quiet", "--quiet", action="store_true")
    add("workers", "--workers")
    add("worker_index", "--worker-index", type=int)
    defaults = TrainConfig()
    for item in fields(TrainConfig):
        if item.name == "train":
            continue
        default = getattr(defaults, item.name)
        kind: Callable[[str], Any] = _bool if isinstance(default, bool) else type(default)
        group, text = OPTIONS[item.name]
        groups[group].add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            type=kind,
            default=None,
            help=f"{text} (default {default!r})",
        )
