"""What routes are handed: the loaded predictor and the settings, both set up by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.errors import ModelNotReady, UnsupportedMediaType
from app.inference.predictor import Predictor
from app.settings import Settings


def get_predictor(request: Request) -> Predictor:
    predictor: Predictor | None = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise ModelNotReady("the model is not loaded yet (or any more); try again shortly")
    return predictor


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require_json(request: Request) -> None:
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
SettingsDep = Annotated[Settings, Depends(get_settings)]
