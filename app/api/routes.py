"""The endpoints, and the dependencies that hand them what the lifespan set up.

Each route validates, calls one object, and shapes the answer. `/predict` and `/models` are in
`model_routes(settings)` (behind NEXTWORD_API_KEY when it is set); `probes` holds /health and
/ready, which stay open for load balancers and orchestrators.

    POST /predict   body ─ PredictRequest ─> the backend of body.model (default: the default
                    model) ─> Query ─> backend.predict ─> Prediction ─> JSON
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from app.api.documented import documented
from app.api.errors import ModelNotReady, PredictionTimedOut, TextTooLong
from app.api.model_schemas import ModelsResponse, ReadyResponse
from app.api.schemas import PredictRequest, PredictResponse, Status, predict_body
from app.inference.backend import Backend
from app.inference.predictor import Query
from app.serving.registry import ModelRegistry
from app.settings import Settings

# --- dependencies -------------------------------------------------------------------------------
# `async def` although they never await: FastAPI runs a plain `def` dependency in its thread
# pool, and a thread hop per request would cost more than the whole web stack.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


NOT_READY = "the model is not loaded yet (or any more); try again shortly"


async def get_models(request: Request) -> ModelRegistry:
    """The served models, once they are loaded (else a 503)."""
    models: ModelRegistry | None = request.app.state.models
    if models is None:
        raise ModelNotReady(NOT_READY)
    return models


def backend_of(models: ModelRegistry, name: str | None) -> Backend:
    """The backend serving model `name` now (None: the default model); a 422 naming the field
    `model` if it is not served. A request keeps this backend to the end, even if another
    version is swapped in meanwhile: the old one is closed once its last request has ended."""
    backend = models.backend(name)
    if backend is None:  # the server is stopping
        raise ModelNotReady(NOT_READY)
    return backend


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]

T = TypeVar("T")


async def within(timeout_s: float, answer: Awaitable[T]) -> T:
    """`await answer`, or a 504 (PredictionTimedOut) when it takes over `timeout_s`."""
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await answer
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours: a bug, reported as one
        raise PredictionTimedOut(timeout_s) from None


# --- routes -------------------------------------------------------------------------------------

probes = APIRouter(tags=["operations"])


def model_routes(settings: Settings) -> APIRouter:
    """/predict and /models. /predict's limits come from `settings` when the app is made, so
    that its one dependency is the served models (the body names which one): FastAPI solves
    dependencies in Python on every request, and each costs about as much as the rest of the
    route."""
    router = APIRouter()

    @router.post(
        "/predict",
        summary="Predict the next word",
        tags=["prediction"],
        response_model=PredictResponse,  # what the body is; predict_body writes it
        responses=documented(400, 408, 413, 415, 422, 431, 503, 504),
    )
    async def predict(body: PredictRequest, models: ModelsDep) -> Response:
        """The most likely next words after `text`, or completions of the word being typed at
        its end, with the model's probabilities; with `phrase_words`, phrases too.

        The text is read as the model was trained: standardised as its tokenizer says, starting
        a fresh sentence; words outside the vocabulary become the unknown token. Blocked words
        (a shipped list of offensive words, and NEXTWORD_BLOCKLIST) are never offered.
        """
        if len(body.text) > settings.max_text_chars:
            raise TextTooLong(len(body.text), settings.max_text_chars)
        backend = backend_of(models, body.model)
        query = Query(
            body.text,
            body.top_k,
            body.include_special,
            body.phrase_words,
            tuple(body.exclude),
            body.continuous_cache,
        )
        # Cancelled at the deadline: a query still queued is dropped; one already computing
        # finishes there, and the 504 follows it.
        prediction = await within(settings.predict_timeout_s, backend.predict(query))
        return Response(
            predict_body(prediction, backend.info, phrases=body.phrase_words > 1),
            media_type="application/json",
        )

    router.get(
        "/models",
        summary="The models being served (sizes, architecture, metrics) and the versions refused",
        tags=["models"],
        responses=documented(503),
    )(models)
    return router


async def models(models: ModelsDep, settings: SettingsDep) -> ModelsResponse:
    served = models.backends()
    if served is None:
        raise ModelNotReady(NOT_READY)
    return ModelsResponse.of(served, models.default, models.refusals(), settings.model_store)


@probes.get("/health", summary="The process is alive")
async def health(request: Request) -> Status:
    return Status(status="ok", in_flight=request.app.state.load.in_flight)


@probes.get(
    "/ready",
    summary="Every model is loaded and requests are answered",
    responses=documented(503),
)
async def ready(models: ModelsDep) -> ReadyResponse:
    served = models.backends()
    if served is None:
        raise ModelNotReady(NOT_READY)
    return ReadyResponse.of(served, models.default)
