"""`nextword serve` (the HTTP server) and `nextword predict` (the same prediction, locally).

Both read the NEXTWORD_* settings (see app.settings); flags override them. Neither imports
TensorFlow.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.settings import Settings, load_settings

# uvicorn's own exit status for "the application failed to start" (e.g. the model is missing).
EXIT_STARTUP_FAILED = 3


def add_commands(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the models over HTTP (POST /predict, docs at /docs)",
        description="Serve models from the model store (every model in it, unless --models "
        "says which; --name is the default one). Settings come from NEXTWORD_* environment "
        "variables; these flags override them.",
    )
    add_model_flags(serve)
    serve.add_argument(
        "--models",
        help="models to serve side by side, comma-separated; --name is the default one "
        "(NEXTWORD_MODELS; every model in the store)",
    )
    serve.add_argument("--host", help="address to listen on (NEXTWORD_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (NEXTWORD_PORT, 8000)")
    serve.add_argument("--log-level", help="critical|error|warning|info|debug (NEXTWORD_LOG_LEVEL)")

    predict = commands.add_parser(
        "predict",
        help="print the most likely next words after a text (or completions of its last word)",
        description="Predict locally, without a server, exactly as POST /predict would.",
    )
    predict.add_argument("text", nargs="*", help="the text so far (empty: a sentence start)")
    predict.add_argument("--top-k", type=int, default=5, help="how many words (default 5)")
    predict.add_argument(
        "--include-special", action="store_true", help="also offer <unk> and <eos>"
    )
    add_model_flags(predict)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, help="model store folder (NEXTWORD_MODEL_STORE)")
    parser.add_argument("--name", help="model name (NEXTWORD_MODEL_NAME, ptb)")
    parser.add_argument(
        "--version", help="a number or 'latest', of --name's model (NEXTWORD_MODEL_VERSION)"
    )


def model_settings(args: argparse.Namespace, **more: Any) -> Settings:
    return load_settings(
        model_store=args.store, model_name=args.name, model_version=args.version, **more
    )


def _run_serve(args: argparse.Namespace) -> int:
    settings = model_settings(
        args, models=args.models, host=args.host, port=args.port, log_level=args.log_level
    )
    import uvicorn

    from app.api.app import create_app
    from app.api.connections import bounded_protocol

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=_log_config(settings.log_level, settings.log_format),
        access_log=False,  # the app writes its own access line (app.api.telemetry)
        server_header=False,
        timeout_keep_alive=settings.keep_alive_s,
        # uvicorn's httptools connection with the limits it lacks (headers' time and size,
        # connections open): app.api.connections.
        http=bounded_protocol(settings),
        # No route is a WebSocket: uvicorn's default would import a WebSocket library (and
        # h11) into the server and the model process for nothing. An upgrade request is then
        # answered as the plain HTTP request it also is.
        ws="none",
        # On SIGTERM: stop accepting, let requests in flight finish (up to this), then stop.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
    )
    server = _server_class()(config)
    try:
        server.run()
    except SystemExit:
        # uvicorn exits when it cannot start (e.g. the port is taken); it has logged why.
        return EXIT_STARTUP_FAILED
    except KeyboardInterrupt:  # only if a signal arrives before uvicorn listens for them
        return 130
    # A clean stop after SIGTERM or Ctrl+C is a success: 0, as supervisors expect of a service
    # that shut down gracefully.
    return 0 if server.started else EXIT_STARTUP_FAILED


def _server_class() -> type[Any]:
    # Made on demand: the other commands (`nextword predict`) never import uvicorn.
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, minus one step: after a graceful shutdown on a signal, uvicorn
        raises the signal again, so the process dies of it (status -15 for SIGTERM) even
        though every request was answered. This one restores the handlers and returns."""

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # signals can only be handled in the main thread
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def _log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    # uvicorn's logging, plus our "nextword" logger on the same handler (it says which model
    # is served), and the app's access lines (method, path, status; app.api.telemetry) where
    # uvicorn's went. uvicorn's own access log, if turned on, is redacted (AccessLogRedaction).
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    ours = {"level": level.upper() if level != "trace" else "DEBUG", "propagate": False}
    config["loggers"]["nextword"] = {"handlers": ["default"], **ours}
    config["loggers"]["nextword.access"] = {"handlers": ["access"], **ours}
    config.setdefault("filters", {})["access_redaction"] = {"()": AccessLogRedaction}
    # On the logger, not a handler: the record itself is rewritten, for every handler.
    config["loggers"]["uvicorn.access"]["filters"] = ["access_redaction"]
    config["filters"]["websocket_advice"] = {"()": NoWebSocketAdvice}
    config["loggers"]["uvicorn.error"]["filters"] = ["websocket_advice"]
    config["formatters"]["access"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(message)s",
    }
    if log_format == "json":  # every line, uvicorn's included: one JSON object (app.logs)
        for name in ("default", "access"):
            config["formatters"][name] = {"()": "app.logs.JsonFormatter"}
    return config


# A query string in an access line that is not in uvicorn's usual shape (see below).
_QUERY = re.compile(r"\?[^\s\"]*")


class AccessLogRedaction(logging.Filter):
    """uvicorn's access line is `client_addr - "METHOD /path?query HTTP/1.1" status`: the query
    string can hold a key (`?api_key=...`, refused with 401 but logged all the same), and the
    client's address and port are personal data. This rewrites each access record to
    `METHOD /path status` (`POST /predict 401`): no query string, no client address."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            # uvicorn's args: (client_addr, method, path with query string, http_version,
            # status_code); the path is percent-quoted, so its first "?" starts the query.
            _client, method, full_path, _http_version, status = args
            record.msg = "%s %s %s"
            record.args = (method, str(full_path).split("?", 1)[0], status)
        else:  # another shape (a future uvicorn): keep the line, drop anything like a query
            record.msg = _QUERY.sub("", record.getMessage())
            record.args = None
        return True


class NoWebSocketAdvice(logging.Filter):
    """With `ws="none"`, uvicorn follows its "Unsupported upgrade request." warning (an upgrade
    header, e.g. `curl --http2`'s h2c) with advice to install a WebSocket library: advice for an
    app with WebSocket routes, which this one has not. This drops that second line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No supported WebSocket library")


def _run_predict(args: argparse.Namespace) -> int:
    from app.inference.blocklist import load_blocklist
    from app.inference.loading import load_predictor

    if not 1 <= args.top_k <= 100:
        raise ValueError(f"--top-k must be between 1 and 100, not {args.top_k}")
    settings = model_settings(args)
    predictor = load_predictor(
        settings.model_store,
        settings.model_name,
        settings.model_version,
        blocklist=load_blocklist(settings.blocklist),
    )
    prediction = predictor.predict(" ".join(args.text), args.top_k, args.include_special)
    info = predictor.info
    print(f"{info.name} v{info.version} read: {' '.join(prediction.tokens)}")
    if prediction.unknown_words:
        print(f"unknown words: {' '.join(prediction.unknown_words)}")
    if prediction.completing is not None:
        print(f"completing {prediction.completing!r}" + ("" if prediction.words else ": no word"))
    width = max((len(word) for word in prediction.words), default=0)
    for word, probability in zip(prediction.words, prediction.probabilities, strict=True):
        print(f"  {word:<{width}}  {probability:.4f}")
    sys.stdout.flush()
    return 0


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _run_serve,
    "predict": _run_predict,
}
