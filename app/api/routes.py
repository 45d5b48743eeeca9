"""The endpoints: each validates, calls the predictor, and shapes the answer.

`router` holds the model routes (behind NEXTWORD_API_KEY when it is set); `probes` holds
/health and /ready, which stay open for load balancers and orchestrators.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from app.api.deps import LeaseDep, ModelsDep, PredictorDep, SettingsDep
from app.api.errors import PredictionTimedOut, TextTooLong, documented
from app.api.schemas import (
    ModelRef,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    Status,
)
from app.settings import Settings

router = APIRouter()
probes = APIRouter(tags=["operations"])


# `async def`: the predictor keeps the event loop free itself (a request alone costs a step or
# two; concurrent ones are batched onto its worker thread), with no thread-pool hop per request.
# One dependency only, the model's lease: FastAPI's dependency solving was the largest cost of
# the web stack on a prediction (profiled: ~15-20 us each), so the settings are read from the
# app state here and the content type is checked by the BodyLimits middleware.
@router.post(
    "/predict",
    summary="Predict the next word",
    tags=["prediction"],
    responses=documented(400, 413, 415, 422, 503, 504),
)
async def predict(body: PredictRequest, lease: LeaseDep, request: Request) -> PredictResponse:
    """The most likely next words after `text`, with the model's probabilities.

    The text is read as the model was trained: lower-cased and split as its tokenizer says,
    starting a fresh sentence; words outside the vocabulary become the unknown token.
    """
    settings: Settings = request.app.state.settings
    if len(body.text) > settings.max_text_chars:
        raise TextTooLong(len(body.text), settings.max_text_chars)
    # The lease keeps this predictor for the whole request, even if a new version is swapped in.
    async with lease as predictor:
        # Cancelled at the deadline: an await on a batch ends at once; work already on a
        # worker thread finishes first, and the 504 follows it.
        deadline = asyncio.timeout(settings.predict_timeout_s)
        try:
            async with deadline:
                prediction = await predictor.predict_async(
                    body.text, body.top_k, body.include_special
                )
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: a bug, reported as one
            raise PredictionTimedOut(settings.predict_timeout_s) from None
        return PredictResponse.of(prediction, predictor.info)


@probes.get("/health", summary="The process is alive")
async def health(request: Request) -> Status:
    return Status(status="ok", in_flight=request.app.state.load.in_flight)


@probes.get(
    "/ready",
    summary="The model is loaded and requests are answered",
    responses=documented(503),
)
async def ready(predictor: PredictorDep) -> ReadyResponse:
    return ReadyResponse(
        status="ready", model=ModelRef(name=predictor.info.name, version=predictor.info.version)
    )


@router.get(
    "/models",
    summary="The model being served (sizes, architecture, metrics) and the versions refused",
    tags=["models"],
    responses=documented(503),
)
async def models(models: ModelsDep, settings: SettingsDep) -> ModelsResponse:
    return ModelsResponse.of(models, settings.model_store)
