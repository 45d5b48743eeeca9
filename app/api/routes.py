"""The endpoints: each validates, calls the predictor, and shapes the answer.

`router` holds the model routes (behind NEXTWORD_API_KEY when it is set); `probes` holds
/health and /ready, which stay open for load balancers and orchestrators.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.api.deps import ModelsDep, PredictorDep, SettingsDep, require_json
from app.api.errors import TextTooLong, documented
from app.api.schemas import (
    ModelRef,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    Status,
)

router = APIRouter()
probes = APIRouter(tags=["operations"])


# `async def`: the predictor keeps the event loop free itself (a request alone costs a step or
# two; concurrent ones are batched onto its worker thread), with no thread-pool hop per request.
@router.post(
    "/predict",
    summary="Predict the next word",
    tags=["prediction"],
    dependencies=[Depends(require_json)],
    responses=documented(400, 413, 415, 422, 503, 504),
)
async def predict(
    body: PredictRequest, predictor: PredictorDep, settings: SettingsDep
) -> PredictResponse:
    """The most likely next words after `text`, with the model's probabilities.

    The text is read as the model was trained: lower-cased and split as its tokenizer says,
    starting a fresh sentence; words outside the vocabulary become the unknown token.
    """
    if len(body.text) > settings.max_text_chars:
        raise TextTooLong(len(body.text), settings.max_text_chars)
    prediction = await predictor.predict_async(body.text, body.top_k, body.include_special)
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
