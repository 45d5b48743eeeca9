"""What routes are handed: the model manager, the predictor of the moment, the settings.

Everything here is set up by the lifespan. A route asks for the predictor once, and keeps that
object for the whole request: a model swapped in meanwhile does not change it, and the old one
is not closed until the request has ended (`ModelManager.lease`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import ModelNotReady, UnsupportedMediaType
from app.inference.predictor import Predictor
from app.serving.manager import ModelManager
from app.settings import Settings

_NOT_READY = "the model is not loaded yet (or any more); try again shortly"


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, and two thread hops per request cost more than the whole web
# stack (measured with benchmarks/serve_bench.py).
async def get_models(request: Request) -> ModelManager:
    manager: ModelManager | None = getattr(request.app.state, "models", None)
    if manager is None or manager.current is None:
        raise ModelNotReady(_NOT_READY)
    return manager


async def get_predictor(request: Request) -> AsyncIterator[Predictor]:
    manager = await get_models(request)
    async with manager.lease() as predictor:
        yield predictor


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_json(request: Request) -> None:
    """Refuse bodies not sent as JSON with 415 (FastAPI would only say the body is invalid)."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        shown = repr(content_type) if content_type else "none"
        raise UnsupportedMediaType(
            f"send the body as JSON with Content-Type: application/json (got {shown})"
        )


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
