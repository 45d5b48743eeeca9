"""The endpoints: each validates, calls the predictor, and shapes the answer.

`add_model_routes(app)` adds /predict and /models to an app (behind NEXTWORD_API_KEY when it is
set); `probes` holds /health and /ready, which stay open for load balancers and orchestrators.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.params import Depends

from app.api.deps import ModelsDep, PredictorDep, SettingsDep, models_in
from app.api.errors import PredictionTimedOut, TextTooLong, documented
from app.api.schemas import (
    ModelRef,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    Status,
    predict_response_body,
)
from app.settings import Settings

probes = APIRouter(tags=["operations"])


def add_model_routes(
    app: FastAPI,
    dependencies: Sequence[Depends] = (),
    responses: dict[int | str, Any] | None = None,
) -> None:
    """/predict and /models, on the app itself (with `dependencies` and `responses` added).

    On the app, not in a router it includes: FastAPI keeps an included router as one entry that
    is searched in turn, after the app's own routes (the docs), on every request.
    """
    state = app.state
    guards, refusals = list(dependencies), responses or {}

    # `async def`: the predictor keeps the event loop free itself (a request alone costs a step
    # or two; concurrent ones are batched off the loop), with no thread-pool hop per request.
    # No dependencies (but the API key's) and no `Request`: the app's state is this closure's.
    # Profiled in process, FastAPI's dependency solving cost ~30 us a dependency and ~13 us for
    # a `Request` parameter, on a route whose whole web stack costs ~70 us.
    @app.post(
        "/predict",
        summary="Predict the next word",
        tags=["prediction"],
        dependencies=guards,
        response_model=PredictResponse,  # what the body is: it comes already written
        responses={**documented(400, 413, 415, 422, 503, 504), **refusals},
    )
    async def predict(body: PredictRequest) -> Response:
        """The most likely next words after `text`, with the model's probabilities.

        The text is read as the model was trained: lower-cased and split as its tokenizer says,
        starting a fresh sentence; words outside the vocabulary become the unknown token.
        """
        settings: Settings = state.settings
        if len(body.text) > settings.max_text_chars:
            raise TextTooLong(len(body.text), settings.max_text_chars)
        # The lease keeps this predictor for the whole request, even if a new version is
        # swapped in meanwhile.
        async with models_in(state).lease() as predictor:
            # Cancelled at the deadline: an await on a batch ends at once; work already off the
            # loop finishes there, and the 504 follows it.
            deadline = asyncio.timeout(settings.predict_timeout_s)
            try:
                async with deadline:
                    content = await predictor.predict_shaped_async(
                        body.text, body.top_k, body.include_special, predict_response_body
                    )
            except TimeoutError:
                if not deadline.expired():
                    raise  # not ours: a bug, reported as one
                raise PredictionTimedOut(settings.predict_timeout_s) from None
            return Response(content, media_type="application/json")

    app.get(
        "/models",
        summary="The model being served (sizes, architecture, metrics) and the versions refused",
        tags=["models"],
        dependencies=guards,
        responses={**documented(503), **refusals},
    )(models)


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


async def models(models: ModelsDep, settings: SettingsDep) -> ModelsResponse:
    return ModelsResponse.of(models, settings.model_store)
