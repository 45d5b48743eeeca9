"""What routes are handed: the model manager, the predictor of the moment, the settings.

Everything here is set up by the lifespan. A route asks for the predictor once, and keeps that
object for the whole request: a model swapped in meanwhile does not change it, and the old one
is not closed until the request has ended (`ModelManager.lease`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import State

from app.api.errors import ModelNotReady
from app.inference.predictor import Predictor
from app.serving.manager import ModelManager
from app.settings import Settings

_NOT_READY = "the model is not loaded yet (or any more); try again shortly"


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, and two thread hops per request cost more than the whole web
# stack (measured with benchmarks/serve_bench.py).
async def get_models(request: Request) -> ModelManager:
    return models_of(request)


def models_of(request: Request) -> ModelManager:
    """The model manager, once a model is being served (else a 503)."""
    return models_in(request.app.state)


def models_in(state: State) -> ModelManager:
    """`models_of` from the app's state, for a route that holds it (see routes.add_model_routes)."""
    manager: ModelManager | None = state.models
    if manager is None or manager.current is None:
        raise ModelNotReady(_NOT_READY)
    return manager


async def get_predictor(request: Request) -> AsyncIterator[Predictor]:
    async with models_of(request).lease() as predictor:
        yield predictor


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
