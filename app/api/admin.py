"""Admin routes, mounted only when NEXTWORD_ADMIN_KEY is set (otherwise they answer 404)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.documented import documented
from app.api.errors import ModelNotReady, ModelRefused
from app.api.model_schemas import ReloadResponse, inside_store
from app.api.routes import ModelsDep, SettingsDep

router = APIRouter(prefix="/admin", tags=["admin"])

# Versions are folder names under the store: a whole number, so never a path.
MAX_VERSION = 2**31 - 1


@router.post(
    "/reload",
    summary="Load a version of a model now, check it, and swap it in",
    responses=documented(409, 422, 503),
)
async def reload_model(
    models: ModelsDep,
    settings: SettingsDep,
    model: Annotated[
        str | None,
        Query(
            max_length=64,
            description="The model (GET /models lists those served); default: the default model "
            "(NEXTWORD_MODEL_NAME).",
        ),
    ] = None,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_VERSION,
            description="The version to serve; default: NEXTWORD_MODEL_VERSION for the default "
            "model, the newest in the store for the others.",
        ),
    ] = None,
) -> ReloadResponse:
    """Load the version aside, check its manifest, sha256 sums and a probe prediction, then
    serve it. Requests in flight finish on the model they started with. A version that fails a
    check is refused (409, with the reason) and the model served before keeps serving. The
    other models are not touched."""
    manager = models.manager(model)
    outcome = await manager.reload(version)
    if outcome.status == "refused":
        raise ModelRefused(inside_store(outcome.reason, settings.model_store))
    current = manager.current
    if current is None:  # the server is stopping
        raise ModelNotReady("the server is stopping")
    return ReloadResponse.of(outcome, current.info)
