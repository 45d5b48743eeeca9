"""The FastAPI application: `create_app(settings)`.

The models are loaded by the lifespan when the server starts (never at import), each held by a
`ModelManager` that swaps in new versions as they are published, all of them in a
`ModelRegistry` handed to each request (`app.api.routes.get_models`), which picks the model the
body names. A model that cannot be loaded stops the start-up with a one-line message naming the
file and the fix. Run it with `nextword serve`, or with `uvicorn --factory
app.api.app:create_app`.

Requests pass through, outermost first (below them all, `nextword serve` bounds each
connection: headers' time and size, connections open; app.api.connections):

    Telemetry       X-Request-ID, the time, the metrics (GET /metrics) and the access line
                    (app.api.telemetry); outside even Starlette's own layers
    CORS (only when NEXTWORD_CORS_ORIGINS is set)
    BodyLimits      431 past 100 headers or 16 KiB of them, 413 past NEXTWORD_MAX_BODY_BYTES,
                    415 for a /predict or /score body not sent as JSON, before anything is
                    parsed
    BodyDeadline    reads the whole body: 408 when it takes over NEXTWORD_BODY_TIMEOUT_S;
                    400 for a /predict or /score body in UTF-16 or UTF-32
    InFlightLimit   503 + Retry-After past NEXTWORD_MAX_IN_FLIGHT (not /health, /ready,
                    /metrics), counting requests whose body has arrived
    the routes      API key on /predict, /score and /models, admin key on /admin
                    (app.api.security); 504 when /predict or /score has no answer within
                    NEXTWORD_PREDICT_TIMEOUT_S
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app.api import admin
from app.api.deadlines import BodyDeadline
from app.api.documented import documented
from app.api.errors import install_error_handlers
from app.api.middleware import (
    BodyLimits,
    InFlightLimit,
    Load,
    OneLineStartupError,
)
from app.api.page import install_page
from app.api.routes import model_routes, probes
from app.api.scoring import score_routes
from app.api.security import require_admin_key, require_api_key
from app.api.telemetry import install_telemetry
from app.serving.memory import share_one_arena, trim_free_memory
from app.serving.registry import ModelRegistry
from app.settings import Settings, load_settings

logger = logging.getLogger("nextword")

DESCRIPTION = """
Next-word prediction with a word-level recurrent language model (a SimpleRNN trained with
Keras, run here in NumPy).

`POST /predict` with the text so far; the answer is the most likely next words with their
probabilities, and the words the model actually read (unknown words shown as `<unk>`).
`POST /score` with a whole text; the answer is its perplexity and each word's probability.
Every error has the same body: `{"error": code, "message": text, "fields": [...]}`.
"""


def _package_version() -> str:
    try:
        return version("nextword")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    share_one_arena()  # before the worker threads that load the models first allocate
    models = ModelRegistry(app.state.settings)
    await models.start()  # loads and checks each model; raises ModelStoreError if one cannot
    app.state.models = models
    # What loading freed (files read, arrays checked) goes back to the system before a model
    # process is forked, rather than stay resident in the server.
    trim_free_memory()
    # Everything made so far (the app, its libraries, the model) lives as long as the server:
    # the cyclic garbage collector need not walk it again: its full passes over everything
    # loaded would otherwise stall the event loop under load.
    gc.freeze()
    try:
        yield
    finally:
        # The server has finished the requests in flight by now (graceful shutdown).
        app.state.models = None  # /ready answers 503 while shutting down
        await models.aclose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for these settings (default: from NEXTWORD_* environment variables)."""
    settings = settings or load_settings()
    # FastAPIOffline serves Swagger UI and ReDoc from files in the package: /docs and /redoc
    # work without internet access.
    app = FastAPIOffline(
        title="nextword",
        summary="Next-word prediction service",
        description=DESCRIPTION,
        version=_package_version(),
        lifespan=lifespan,
        # Each operation's id is its function's name (`predict`, `models`): the names a client
        # generated from the OpenAPI document gives its functions.
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.models = None
    app.include_router(probes)
    for routes in (score_routes(settings), model_routes(settings)):  # /predict ends up first
        if settings.api_key is None:
            include_first(app, routes)
        else:
            include_first(
                app, routes, dependencies=[Depends(require_api_key)], responses=documented(401)
            )
    if settings.admin_key is not None:  # otherwise /admin/* is not there at all: 404
        app.include_router(
            admin.router, dependencies=[Depends(require_admin_key)], responses=documented(401)
        )
    install_page(app)
    install_telemetry(app, settings)
    install_error_handlers(app)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    # Added last = outermost.
    app.add_middleware(OneLineStartupError)
    app.state.load = Load()
    # Inside BodyDeadline: a request counts as in flight once its body has arrived.
    app.add_middleware(
        InFlightLimit,
        limit=settings.max_in_flight,
        load=app.state.load,
        exempt=["/health", "/ready", "/metrics"],  # probes, and the view of an overload
    )
    json_paths = ["/predict", "/score"]  # the routes that read a JSON body
    app.add_middleware(BodyDeadline, timeout_s=settings.body_timeout_s, json_paths=json_paths)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, json_paths=json_paths)
    if settings.cors_origins:
        # Outermost, so that error answers (413, 503...) carry the CORS headers a browser
        # needs to show them. No cookies are used: credentials stay off.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
            max_age=600,
        )
    return app


def operation_id(route: APIRoute) -> str:
    return route.name


def include_first(app: FastAPI, router: APIRouter, **options: Any) -> None:
    """`app.include_router(router, **options)`, tried first: Starlette tries routes in order,
    and the docs' routes, which come first, would otherwise be tried on every prediction."""
    app.include_router(router, **options)
    app.router.routes.insert(0, app.router.routes.pop())  # FastAPI appends it as one entry


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document, with the text limit this server enforces rather than the ceiling
    the request model allows, and the names of the models it serves as the values `model` may
    take (FastAPI's way to extend the document: replace `app.openapi`)."""
    build = app.openapi
    served = {"type": "string", "enum": list(settings.models)}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # builds and caches app.openapi_schema
            for request in ("PredictRequest", "ScoreRequest"):
                fields = schema["components"]["schemas"][request]["properties"]
                fields["text"]["maxLength"] = settings.max_text_chars
                fields["model"].update(
                    anyOf=[served, {"type": "null"}], examples=[settings.model_name]
                )
            reload = schema["paths"].get("/admin/reload", {}).get("post", {})
            for parameter in reload.get("parameters", []):
                if parameter["name"] == "model":
                    parameter["schema"]["anyOf"] = [served, {"type": "null"}]
        return app.openapi_schema or {}

    return openapi
