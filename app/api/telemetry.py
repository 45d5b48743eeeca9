"""Each request's id, time, count and access line: one pure ASGI middleware, the outermost.

    X-Request-ID  the request's own when it is 1 to 128 characters of letters, digits and
                  `-_.:+/=@` (anything else is replaced, never echoed); otherwise a new one,
                  16 hex digits. Every answer carries it, and every log line written while the
                  request is answered (app.logs.REQUEST_ID).
    time          from the app's first sight of the request to its answer's last byte
    metrics       the answer's route, status and time, added to RequestCounts (app.api.metrics)
    access line   `POST /predict 200`, or with NEXTWORD_LOG_FORMAT=json an object with method,
                  path, status, duration_ms and request_id: never the query string (where a
                  careless client may put a key), a header, the body or the client's address

All four in one layer, at the cost of one extra call on each of the answer's messages: the
benchmark's floor is a bare FastAPI app (benchmarks/serve_bench.py). It sits outside Starlette's
own outermost layer (ServerErrorMiddleware, which answers a 500), where `add_middleware` cannot
put it: `install_telemetry` wraps the app's middleware stack when it is built.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable, Sequence
from time import perf_counter
from urllib.parse import quote

from fastapi import Depends, FastAPI
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.documented import documented
from app.api.metrics import CLIENT_GONE, OTHER_ROUTE, RequestCounts, metrics_registry, router
from app.api.security import require_metrics_key
from app.logs import REQUEST_ID
from app.settings import Settings

access_log = logging.getLogger("nextword.access")

# A request id sent by a client (or a proxy in front) that is kept; the characters of UUIDs,
# hex and base64 ids and of trace headers, none that could break a log line.
CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,128}")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's X-Request-ID if it passes CLIENT_REQUEST_ID, else a new random one."""
    for name, value in headers:  # the raw list (names lower-case): no Headers object
        if name == b"x-request-id":
            if CLIENT_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(8).hex()


class Telemetry:
    """The id, time, count and access line of every HTTP request (see the module's docstring).

    In the metrics, a path among `routes` is its own route, one under a path of `mounts` (the
    documentation's assets, the page's files) is that mount, and any other is `other`: one
    series for every path clients try."""

    def __init__(
        self, app: ASGIApp, counts: RequestCounts, routes: Collection[str], mounts: Sequence[str]
    ) -> None:
        self.app = app
        self.counts = counts
        self.routes = frozenset(routes)
        self.mounts = tuple(mount.rstrip("/") + "/" for mount in mounts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        request_id = request_id_of(scope["headers"])
        id_header = (b"x-request-id", request_id.encode("ascii"))
        # Unless an answer starts: the client went away first (a failure is answered, 500, by
        # ServerErrorMiddleware). 499 is how nginx logs it.
        status = CLIENT_GONE

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, perf_counter() - start, request_id)
        # Not after an error: the server's log of it, written after this, then carries the id.
        # (uvicorn answers each request in a task of its own: the id does not outlive it.)
        REQUEST_ID.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        path: str = scope["path"]  # without the query string (ASGI keeps it apart)
        known = path in self.routes
        self.counts.add(path if known else self._route_under(path), status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            shown = path if known else quote(path)  # as uvicorn showed it: no line break
            method = scope["method"]
            access_log.info(
                "%s %s %d", method, shown, status,
                extra={
                    "method": method, "path": shown, "status": status,
                    "duration_ms": round(seconds * 1000, 3), "request_id": request_id,
                },
            )  # fmt: skip

    def _route_under(self, path: str) -> str:
        for mount in self.mounts:
            if path.startswith(mount):
                return mount[:-1]
        return OTHER_ROUTE


def install_telemetry(app: FastAPI, settings: Settings) -> None:
    """GET /metrics (behind NEXTWORD_METRICS_KEY when it is set), and Telemetry around the
    whole app, Starlette's own layers included, once the app builds its middleware stack (on
    its first request, when every route is there)."""
    counts = RequestCounts()
    app.state.metrics = metrics_registry(counts, app.state)
    if settings.metrics_key is None:
        app.include_router(router)
    else:
        app.include_router(
            router, dependencies=[Depends(require_metrics_key)], responses=documented(401)
        )
    build = app.build_middleware_stack

    def build_with_telemetry() -> ASGIApp:
        routes: list[str] = []
        mounts: list[str] = []
        _paths(app.routes, routes, mounts)
        return Telemetry(build(), counts, routes, mounts)

    app.build_middleware_stack = build_with_telemetry  # type: ignore[method-assign]


def _paths(routes: Iterable[BaseRoute], found: list[str], mounts: list[str]) -> None:
    """The paths of `routes` into `found`, and their mounts' into `mounts`. FastAPI keeps a
    router included in the app whole, as one entry (its `original_router`); this app includes
    none with a prefix."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            _paths(included.routes, found, mounts)
        elif isinstance(route, Mount):
            mounts.append(route.path)
        elif isinstance(path := getattr(route, "path", None), str):
            found.append(path)
