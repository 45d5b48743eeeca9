"""The endpoints: each validates, calls the predictor, and shapes the answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import PredictorDep, SettingsDep, require_json
from app.api.errors import TextTooLong, documented
from app.api.schemas import (
    ModelDescription,
    ModelRef,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    Status,
)

router = APIRouter()


# A plain `def`: the forward pass is CPU work, so FastAPI runs it in its thread pool and the
# event loop stays free (NumPy releases the GIL in the matrix products).
@router.post(
    "/predict",
    summary="Predict the next word",
    tags=["prediction"],
    dependencies=[Depends(require_json)],
    responses=documented(400, 413, 415, 422, 503),
)
def predict(
    body: PredictRequest, predictor: PredictorDep, settings: SettingsDep
) -> PredictResponse:
    """The most likely next words after `text`, with the model's probabilities.

    The text is read as the model was trained: lower-cased and split as its tokenizer says,
    starting a fresh sentence; words outside the vocabulary become the unknown token.
    """
    if len(body.text) > settings.max_text_chars:
        raise TextTooLong(len(body.text), settings.max_text_chars)
    prediction = predictor.predict(body.text, body.top_k, body.include_special)
    return PredictResponse.of(prediction, predictor.info)


@router.get("/health", summary="The process is alive", tags=["operations"])
async def health() -> Status:
    return Status(status="ok")


@router.get(
    "/ready",
    summary="The model is loaded and requests are answered",
    tags=["operations"],
    responses=documented(503),
)
async def ready(predictor: PredictorDep) -> ReadyResponse:
    return ReadyResponse(
        status="ready", model=ModelRef(name=predictor.info.name, version=predictor.info.version)
    )


@router.get(
    "/models",
    summary="The model being served: sizes, architecture and metrics",
    tags=["models"],
    responses=documented(503),
)
async def models(predictor: PredictorDep) -> ModelsResponse:
    return ModelsResponse(models=[ModelDescription.of(predictor.info)])
