"""`nextword serve` (the HTTP server) and `nextword predict` (the same prediction, locally).

Both read the NEXTWORD_* settings (see app.settings); flags override them. Neither imports
TensorFlow.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.settings import Settings, load_settings

# uvicorn's own exit status for "the application failed to start" (e.g. the model is missing).
EXIT_STARTUP_FAILED = 3


def add_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the model over HTTP (POST /predict, docs at /docs)",
        description="Serve a model from the model store. Settings come from NEXTWORD_* "
        "environment variables; these flags override them.",
    )
    _add_model_flags(serve)
    serve.add_argument("--host", help="address to listen on (NEXTWORD_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (NEXTWORD_PORT, 8000)")
    serve.add_argument("--log-level", help="critical|error|warning|info|debug (NEXTWORD_LOG_LEVEL)")

    predict = commands.add_parser(
        "predict",
        help="print the most likely next words after a text",
        description="Predict locally, without a server, exactly as POST /predict would.",
    )
    predict.add_argument("text", nargs="*", help="the text so far (empty: a sentence start)")
    predict.add_argument("--top-k", type=int, default=5, help="how many words (default 5)")
    predict.add_argument(
        "--include-special", action="store_true", help="also offer <unk> and <eos>"
    )
    _add_model_flags(predict)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, help="model store folder (NEXTWORD_MODEL_STORE)")
    parser.add_argument("--name", help="model name (NEXTWORD_MODEL_NAME, ptb)")
    parser.add_argument("--version", help="a number or 'latest' (NEXTWORD_MODEL_VERSION)")


def _settings(args: argparse.Namespace, **more: Any) -> Settings:
    return load_settings(
        model_store=args.store, model_name=args.name, model_version=args.version, **more
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port, log_level=args.log_level)
    import uvicorn

    from app.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level),
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exit_:
        # uvicorn exits when start-up fails; it has already logged why, in one line.
        return int(exit_.code) if isinstance(exit_.code, int) else EXIT_STARTUP_FAILED
    except KeyboardInterrupt:
        # After a graceful shutdown uvicorn re-raises the signal it caught (SIGTERM ends the
        # process with that status, as supervisors expect); Ctrl+C is a normal way to stop.
        return 0 if server.started else 130
    return 0 if server.started else EXIT_STARTUP_FAILED


def _log_config(level: str) -> dict[str, Any]:
    # uvicorn's logging, plus our "nextword" logger on the same handler (it says which model
    # is served).
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["nextword"] = {
        "handlers": ["default"],
        "level": level.upper() if level != "trace" else "DEBUG",
        "propagate": False,
    }
    return config


def _run_predict(args: argparse.Namespace) -> int:
    from app.inference.predictor import Predictor

    if not 1 <= args.top_k <= 100:
        raise ValueError(f"--top-k must be between 1 and 100, not {args.top_k}")
    settings = _settings(args)
    predictor = Predictor.load(settings.model_store, settings.model_name, settings.model_version)
    prediction = predictor.predict(" ".join(args.text), args.top_k, args.include_special)
    info = predictor.info
    print(f"{info.name} v{info.version} read: {' '.join(prediction.prefix.tokens)}")
    if prediction.prefix.unknown_words:
        print(f"unknown words: {' '.join(prediction.prefix.unknown_words)}")
    width = max(len(item.word) for item in prediction.words)
    for item in prediction.words:
        print(f"  {item.word:<{width}}  {item.probability:.4f}")
    sys.stdout.flush()
    return 0


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _run_serve,
    "predict": _run_predict,
}
