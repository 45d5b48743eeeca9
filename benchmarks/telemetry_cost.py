"""What app.api.telemetry adds to each request, measured in process (no sockets, no server).

    python benchmarks/telemetry_cost.py [--requests 5000] [--rounds 15]

Calls ASGI apps directly on one event loop, each request a fresh scope, and prints the
microseconds a request: the fastest round (what the code costs; a busy machine only adds) and
the median round. The variants take turns in each round, so a noisy neighbour slows them alike:

    bare app           an ASGI app that answers 200 with a small JSON body, nothing else
    + uvicorn's line   with the access line uvicorn wrote before Telemetry (its format, the
                       query string and client dropped by AccessLogRedaction): the old cost
    + telemetry        the same inside Telemetry: request id, timing, metrics; no access line
                       (NEXTWORD_LOG_LEVEL=warning)
    + text access line and the access line written, uvicorn's text format (to /dev/null)
    + json access line and the same line as JSON (NEXTWORD_LOG_FORMAT=json)
    GET /health        the whole nextword app (the tiny store's model or model_store/ptb),
                       with and without its Telemetry layer

Each access line is written to /dev/null through a StreamHandler, as to a log file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.logging import DefaultFormatter

from app.api.app import create_app
from app.api.metrics import RequestCounts
from app.api.telemetry import Telemetry, access_log
from app.logs import JsonFormatter
from app.serve_cli import AccessLogRedaction
from app.settings import Settings

BODY = b'{"next_word":"to"}'
HEADERS = [
    (b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"content-type", b"application/json"),
    (b"content-length", b"33"),
]  # fmt: skip


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"18")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def with_uvicorn_access_line(app: ASGIApp) -> ASGIApp:
    """`app`, and the access line uvicorn's protocol wrote after each answer (uvicorn 0.3x
    `httptools_impl`: its arguments, its logger, the filter and format `nextword serve` set)."""
    from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

    logger = logging.getLogger("uvicorn.access")
    logger.handlers.clear()
    handler = logging.StreamHandler(Path("/dev/null").open("w"))  # noqa: SIM115
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    logger.addHandler(handler)
    logger.filters = [AccessLogRedaction()]
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        http: Any = scope  # (uvicorn types its scopes apart)
        logger.info(
            '%s - "%s %s HTTP/%s" %d', get_client_addr(http), scope["method"],
            get_path_with_query_string(http), scope["http_version"], 200,
        )  # fmt: skip

    return logged


def scope_of(method: str, path: str) -> Scope:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": HEADERS, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000), "state": {},
    }  # fmt: skip


async def per_request_us(app: ASGIApp, scope: Scope, requests: int) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    start = time.perf_counter()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - start) / requests * 1e6


def access_line(log_format: str | None) -> Callable[[], None]:
    """Set the access log as `nextword serve` would (None: off, as at level warning)."""

    def configure() -> None:
        access_log.handlers.clear()
        access_log.propagate = False
        if log_format is None:
            access_log.setLevel(logging.WARNING)
            return
        handler = logging.StreamHandler(Path("/dev/null").open("w"))  # noqa: SIM115
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:  # as `nextword serve` sets it (app.serve_cli)
            handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)

    return configure


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    settings = Settings(model_store=args.store, model_name=args.name, model_process=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        observed = app.build_middleware_stack()
        assert isinstance(observed, Telemetry)
        paths = observed.routes
        health = {**scope_of("GET", "/health"), "app": app}  # (as Starlette's __call__ sets it)
        variants: list[tuple[str, ASGIApp, Scope, Callable[[], None]]] = [
            ("bare app", bare, scope_of("POST", "/predict"), access_line(None)),
            ("+ uvicorn's line (before)", with_uvicorn_access_line(bare),
             scope_of("POST", "/predict"), access_line(None)),
            ("+ telemetry", Telemetry(bare, RequestCounts(), paths, ()),
             scope_of("POST", "/predict"), access_line(None)),
            ("+ text access line", Telemetry(bare, RequestCounts(), paths, ()),
             scope_of("POST", "/predict"), access_line("text")),
            ("+ json access line", Telemetry(bare, RequestCounts(), paths, ()),
             scope_of("POST", "/predict"), access_line("json")),
            ("GET /health, no telemetry", observed.app, health, access_line(None)),
            ("GET /health, telemetry", observed, health, access_line(None)),
        ]  # fmt: skip
        figures: dict[str, list[float]] = {name: [] for name, *_ in variants}
        for _ in range(args.rounds):
            for name, asgi, scope, configure in variants:
                configure()
                await per_request_us(asgi, scope, args.requests // 10)  # warm-up
                figures[name].append(await per_request_us(asgi, scope, args.requests))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5_000, help="a variant's, each round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", default="ptb")
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    base = {name: min(values) for name, values in figures.items()}
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:28} {base[name]:8.2f} us a request  (median round {median:.2f})")
    added = base["+ telemetry"] - base["bare app"]
    whole = base["GET /health, telemetry"] - base["GET /health, no telemetry"]
    print(f"telemetry adds {added:.2f} us to a bare app, {whole:.2f} us to GET /health")
    print(f"the access line: text {base['+ text access line'] - base['+ telemetry']:.2f} us, "
          f"json {base['+ json access line'] - base['+ telemetry']:.2f} us")  # fmt: skip
    before = base["+ uvicorn's line (before)"]
    print(f"against uvicorn's access line before: text {base['+ text access line'] - before:+.2f}"
          f" us a request, json {base['+ json access line'] - before:+.2f} us")  # fmt: skip


if __name__ == "__main__":
    main()
