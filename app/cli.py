"""The `nextword` command: train, evaluate, serve, predict, tune-cache.

Errors in what the user gave (files, settings, names) print one line, `nextword: error: ...`, and
exit with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the message names the argument.
        self.exit(EXIT_USAGE, f"nextword: error: {message} (see `{self.prog} --help`)\n")


def _add_train(commands: Any) -> None:
    from app.training.options import add_train_options  # no TensorFlow import

    parser = commands.add_parser(
        "train",
        help="train a model and save it as a new version in the model store",
        description="Train a SimpleRNN language model. Settings come from the defaults, then "
        "--recipe (TOML), then the flags below.",
    )
    add_train_options(parser)


def _run_train(args: argparse.Namespace) -> int:
    from app.training.config import TrainConfig, make_config

    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    overrides["train"] = args.train_file
    config = make_config(args.recipe, **overrides)
    from app.training.cluster import cluster_from  # no TensorFlow import

    cluster = cluster_from(args.worker_index, args.workers)
    # Checked before TensorFlow loads (seconds) so a bad call fails at once.
    for name in ("train", "valid", "test"):
        value = getattr(config, name)
        if value and not Path(value).is_file():
            raise ValueError(f"{name}: corpus file {value} does not exist")
    from app.store import check_writable

    check_writable(Path(config.store), config.name)
    _quiet_tensorflow()
    from app.training.job import run_training

    run_training(config, verbose=not args.quiet, cluster=cluster)
    return 0


def _add_evaluate(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="perplexity and top-k accuracy of a saved model on a text file, or with "
        "--keystrokes the keystrokes its suggestions save a user typing it",
    )
    parser.add_argument("text_file", type=Path)
    parser.add_argument(
        "--keystrokes",
        action="store_true",
        help="simulate a user typing the file with the service's suggestions (keystroke "
        "savings, and a most-frequent-words baseline)",
    )
    parser.add_argument("--suggestions", type=int, default=3, help="shown at once (default 3)")
    parser.add_argument(
        "--phrases", action="store_true", help="the last slot may offer a phrase instead"
    )
    parser.add_argument(
        "--phrase-words", type=int, default=2, help="words in such a phrase (default 2)"
    )
    parser.add_argument("--words", type=int, default=None, help="only the file's first WORDS words")
    parser.add_argument(
        "--model-alone",
        action="store_true",
        help="with --keystrokes: without the model's continuous cache (used by default, as "
        "/predict uses it)",
    )
    from app import cache_cli, serve_cli

    cache_cli.add_evaluate_flag(parser)

    # The same model flags and defaults (NEXTWORD_* settings) as `serve` and `predict`.
    serve_cli.add_model_flags(parser)


def _run_evaluate(args: argparse.Namespace) -> int:
    from app import serve_cli, store
    from app.tokenizer import Tokenizer
    from app.training.corpus import read_lines

    if args.continuous_cache:
        from app import cache_cli

        return cache_cli.run_evaluate(args)
    settings = serve_cli.model_settings(args)
    if args.keystrokes:
        return _run_keystrokes(args, settings)
    path = store.version_dir(settings.model_store, settings.model_name, settings.model_version)
    manifest = store.read_manifest(path)
    lines = read_lines(args.text_file)
    tokenizer = Tokenizer.load(path / store.TOKENIZER)
    ids = tokenizer.encode_lines(lines)
    _quiet_tensorflow()
    import keras

    import app.training.model  # noqa: F401  (registers the custom layer for loading)
    from app.training.evaluate import evaluate_ids

    model = keras.saving.load_model(path / store.KERAS_MODEL)
    metrics = evaluate_ids(model, ids, int(manifest["architecture"]["hidden_units"]))
    print(
        f"{settings.model_name} v{path.name} on {args.text_file}: {metrics.tokens:,} tokens  "
        f"perplexity {metrics.perplexity:.2f}  top-1 {metrics.top1:.4f}  "
        f"top-3 {metrics.top3:.4f}  top-5 {metrics.top5:.4f}"
    )
    return 0


def _run_keystrokes(args: argparse.Namespace, settings: Any) -> int:
    from app.evaluation.keystrokes import simulate
    from app.inference.blocklist import load_blocklist
    from app.inference.loading import load_predictor
    from app.training.corpus import read_lines

    if not 1 <= args.suggestions <= 20:
        raise ValueError(f"--suggestions must be between 1 and 20, not {args.suggestions}")
    if args.phrases and not (2 <= args.phrase_words <= 5 and args.suggestions >= 2):
        raise ValueError("--phrases needs --phrase-words between 2 and 5 and 2 suggestions or more")
    if args.words is not None and args.words < 1:
        raise ValueError(f"--words must be 1 or more, not {args.words}")
    lines = read_lines(args.text_file)
    predictor = load_predictor(
        settings.model_store,
        settings.model_name,
        settings.model_version,
        blocklist=load_blocklist(settings.blocklist),
    )
    phrase_words = args.phrase_words if args.phrases else 0
    cache = not args.model_alone
    result = simulate(predictor, lines, args.suggestions, args.words, phrase_words, cache)
    info = predictor.info
    phrases = f", phrases of {args.phrase_words} words" if args.phrases else ""
    cached = ", continuous cache" if cache and info.continuous_cache else ", the model alone"
    print(
        f"{info.name} v{info.version} on {args.text_file}: {result.model.words:,} words, "
        f"{args.suggestions} suggestions{phrases}{cached}"
    )
    print(f"keystroke savings {100 * result.model.savings:.1f} %", end="")
    print(f" ({result.model.phrases_taken:,} phrases taken)" if args.phrases else "")
    print(f"baseline (most frequent words) {100 * result.baseline.savings:.1f} %")
    return 0


def _add_promote(commands: Any) -> None:
    parser = commands.add_parser(
        "promote",
        help="publish a checked copy of a saved version as a new version of another model",
        description="Verify a version folder (manifest and sha256 of every file) and publish a "
        "copy of it, atomically, as the next version of --name in --store.",
    )
    parser.add_argument("version_dir", type=Path, help="e.g. /tmp/scratch/mymodel/3")
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", required=True)


def _run_promote(args: argparse.Namespace) -> int:
    from app import store_edits

    published = store_edits.promote(args.version_dir, args.store, args.name)
    print(f"published {published.path}")
    return 0


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nextword", description="Next-word prediction with a SimpleRNN.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_promote(commands)
    from app import cache_cli, serve_cli

    serve_cli.add_commands(commands)
    cache_cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runners = {"train": _run_train, "evaluate": _run_evaluate, "promote": _run_promote}
    from app import cache_cli, serve_cli

    runners.update(serve_cli.RUNNERS)
    runners.update(cache_cli.RUNNERS)
    from app.training.cluster import WorkerError  # no TensorFlow import

    try:
        return runners[args.command](args)
    except KeyboardInterrupt:
        print("nextword: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except WorkerError as error:  # a training worker lost the others: not a usage error
        print(f"nextword: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"nextword: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
