"""The FastAPI application: `create_app(settings)`.

The model is loaded by the lifespan, once, when the server starts (never at import), and handed
to the routes through `PredictorDep`. A model that cannot be loaded stops the start-up with a
one-line message naming the file and the fix. Run it with `nextword serve`, or with
`uvicorn --factory app.api.app:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from app.api.errors import install_error_handlers
from app.api.middleware import BodySizeLimit, OneLineStartupError
from app.api.routes import router
from app.inference.predictor import Predictor
from app.settings import Settings, load_settings

logger = logging.getLogger("nextword")

DESCRIPTION = """
Next-word prediction with a word-level recurrent language model (a SimpleRNN trained with
Keras, run here in NumPy).

`POST /predict` with the text so far; the answer is the most likely next words with their
probabilities, and the words the model actually read (unknown words shown as `<unk>`).
Every error has the same body: `{"error": code, "message": text, "fields": [...]}`.
"""


def _package_version() -> str:
    try:
        return version("nextword")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Reading and checking the files takes a moment: off the event loop, like any blocking work.
    predictor = await run_in_threadpool(
        Predictor.load, settings.model_store, settings.model_name, settings.model_version
    )
    info = predictor.info
    logger.info(
        "serving model %s v%d from %s (vocabulary %d)",
        info.name, info.version, info.path, info.vocabulary_size,
    )  # fmt: skip
    app.state.predictor = predictor
    try:
        yield
    finally:
        app.state.predictor = None  # /ready answers 503 while shutting down


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
    )
    app.state.settings = settings
    app.state.predictor = None
    app.include_router(router)
    install_error_handlers(app)
    # Added last = outermost: an oversized body is refused before anything else runs.
    app.add_middleware(OneLineStartupError)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
