"""`nextword tune-cache` and `nextword evaluate --continuous-cache`: the continuous cache's
settings tuned on a validation text and stored with the model (app.evaluation.continuous_cache).

NumPy only: the model is read as the server reads it (app.inference.loading), not by Keras.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import serve_cli, store, store_edits
from app.evaluation import continuous_cache as evaluation

if TYPE_CHECKING:  # the predictor and its loading are imported when a command runs
    from app.inference.predictor import Predictor

# The metrics a stored setting is measured by; retired with it when it is tuned again.
VALID_METRIC = "valid_continuous_cache"
TEST_METRIC = "test_continuous_cache"
# Chosen on PTB valid split into texts of 1, 2 and 4 sentences (benchmarks/README.md): with
# none, the cache over one sentence's few pairs made perplexity worse than the model alone.
DEFAULT_RAMP = 100.0


def _numbers(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(item) for item in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, not {text!r}"
            ) from None
        return values

    return parse


def add_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "tune-cache",
        help="tune the continuous cache on a validation text and store it with the model",
        description="Grid search of the continuous cache's memory size, theta and weight on "
        "--valid (one stream, as `evaluate` reads it); the best is written to the version "
        "folder as continuous_cache.json, with its perplexities in the manifest's metrics.",
    )
    parser.add_argument("--valid", type=Path, required=True, help="validation text (UTF-8)")
    parser.add_argument("--test", type=Path, help="also measure, and record, on this text")
    for flag, kind, default, what in [
        ("--sizes", int, evaluation.DEFAULT_SIZES, "memory sizes N (pairs kept)"),
        ("--thetas", float, evaluation.DEFAULT_THETAS, "theta values (> 0)"),
        ("--weights", float, evaluation.DEFAULT_WEIGHTS, "cache weights lambda, in [0, 1)"),
    ]:
        listed = ",".join(f"{value:g}" for value in default)
        parser.add_argument(flag, type=_numbers(kind), default=default,
                            help=f"{what}, comma-separated (default {listed})")  # fmt: skip
    parser.add_argument(
        "--ramp",
        type=float,
        default=DEFAULT_RAMP,
        help="the memory's pairs at which the cache gets half its weight, for short texts "
        f"(default {DEFAULT_RAMP:g}; a stream's perplexity hardly depends on it)",
    )
    parser.add_argument("--show", type=int, default=15, help="rows of the table (default 15)")
    parser.add_argument("--dry-run", action="store_true", help="print the table, store nothing")
    serve_cli.add_model_flags(parser)


def add_evaluate_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--continuous-cache",
        action="store_true",
        help="exact perplexity with the model's stored continuous cache (NumPy), and without",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """`nextword evaluate FILE --continuous-cache`."""
    if args.keystrokes:
        raise ValueError("--continuous-cache measures perplexity: leave out --keystrokes")
    predictor = _load(args)
    settings = predictor.info.continuous_cache
    if settings is None:
        raise ValueError(
            f"{predictor.info.path} has no {store.CONTINUOUS_CACHE}: tune one with "
            "`nextword tune-cache --valid FILE`"
        )
    started = time.perf_counter()
    stream = _stream(predictor, args.text_file)
    result = evaluation.evaluate(predictor.weights, stream, settings)
    print(
        f"{_model(predictor)} on {args.text_file}: {result.tokens:,} tokens  perplexity "
        f"{result.perplexity:.2f} with the continuous cache ({_describe(settings.to_dict())}), "
        f"{result.perplexity_without:.2f} without  ({time.perf_counter() - started:.0f} s)"
    )
    return 0


def run_tune(args: argparse.Namespace) -> int:
    """`nextword tune-cache --valid FILE [--test FILE]`."""
    # Every setting checked before minutes of work (CacheSettings says what is wrong).
    grid = [
        evaluation.CacheSettings(n, t, w)
        for n in args.sizes
        for t in args.thetas
        for w in args.weights
    ]
    evaluation.CacheSettings(1, 1.0, 0.0, args.ramp)  # checks the ramp
    if args.show < 0 or not grid:
        raise ValueError("--show must be 0 or more and the grid must not be empty")
    predictor = _load(args)
    for file in (args.valid, args.test):
        if file is not None and not file.is_file():
            raise ValueError(f"{file} is not a file")
    if not args.dry_run and not os.access(predictor.info.path, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {predictor.info.path}: the settings could not be stored")
    started = time.perf_counter()
    valid = _stream(predictor, args.valid)
    tuning = evaluation.tune(valid, args.sizes, args.thetas, args.weights)
    print(
        f"{_model(predictor)}: {len(grid)} settings on {args.valid} "
        f"({valid.tokens:,} tokens, {time.perf_counter() - started:.0f} s)"
    )
    print(f"{'size':>6} {'theta':>6} {'weight':>6} {'perplexity':>10}")
    print(f"{'-':>6} {'-':>6} {0:>6} {tuning.perplexity_without:>10.2f}")
    for point in tuning.table[: args.show]:
        print(f"{point.size:>6} {point.theta:>6g} {point.weight:>6g} {point.perplexity:>10.2f}")
    best = dataclasses.replace(tuning.best, ramp=args.ramp)
    measured = {VALID_METRIC: _measure(predictor, valid, best)}
    record = {
        **best.to_dict(),
        "tuned_on": str(args.valid),
        "valid_perplexity": measured[VALID_METRIC]["perplexity"],
        "valid_perplexity_without": measured[VALID_METRIC]["perplexity_without"],
        "grid": {
            "sizes": list(args.sizes),
            "thetas": list(args.thetas),
            "weights": list(args.weights),
        },
    }
    if args.test is not None:
        measured[TEST_METRIC] = _measure(predictor, _stream(predictor, args.test), best)
        record |= {
            "tested_on": str(args.test),
            "test_perplexity": measured[TEST_METRIC]["perplexity"],
            "test_perplexity_without": measured[TEST_METRIC]["perplexity_without"],
        }
    for split, figures in measured.items():
        print(
            f"{split}: perplexity {figures['perplexity']:.2f} with ({_describe(figures)}), "
            f"{figures['perplexity_without']:.2f} without"
        )
    if args.dry_run:
        print("dry run: nothing stored")
        return 0
    content = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    store_edits.attach(
        predictor.info.path,
        store.CONTINUOUS_CACHE,
        content,
        measured,
        retired=(VALID_METRIC, TEST_METRIC),
    )
    print(
        f"stored {predictor.info.path / store.CONTINUOUS_CACHE} "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return 0


def _measure(
    predictor: Predictor, stream: evaluation.Stream, settings: evaluation.CacheSettings
) -> dict[str, Any]:
    """The exact evaluation (as served), for the record."""
    result = evaluation.evaluate(predictor.weights, stream, settings)
    return {
        "tokens": result.tokens,
        "perplexity": result.perplexity,
        "perplexity_without": result.perplexity_without,
        **settings.to_dict(),
    }


def _load(args: argparse.Namespace) -> Predictor:
    from app.inference.loading import load_predictor

    settings = serve_cli.model_settings(args)
    return load_predictor(settings.model_store, settings.model_name, settings.model_version)


def _stream(predictor: Predictor, file: Path) -> evaluation.Stream:
    from app.training.corpus import read_lines  # NumPy only, no TensorFlow

    return evaluation.read_stream(
        predictor.weights, predictor.tokenizer.encode_lines(read_lines(file))
    )


def _model(predictor: Predictor) -> str:
    return f"{predictor.info.name} v{predictor.info.version}"


def _describe(settings: dict[str, Any]) -> str:
    return (
        f"memory {settings['size']}, theta {settings['theta']:g}, weight {settings['weight']:g}, "
        f"ramp {settings.get('ramp', 0):g}"
    )


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"tune-cache": run_tune}
