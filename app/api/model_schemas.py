"""The bodies of the routes about the served models: GET /models, GET /ready and POST
/admin/reload (a prediction's bodies are in app.api.schemas)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import ModelRef
from app.inference.backend import Backend
from app.inference.predictor import ModelInfo
from app.serving.manager import Refusal, ReloadOutcome


class ModelDescription(BaseModel):
    name: str
    version: int
    vocabulary_size: int
    architecture: dict[str, Any] = Field(
        description="From the manifest: type, vocab_size, embedding_dim, hidden_units, dropout, "
        "tied, init_scale"
    )
    metrics: dict[str, Any] = Field(
        description="From the manifest: perplexity and top-k accuracy per split"
    )
    created: str | None = None
    continuous_cache: dict[str, Any] | None = Field(
        default=None,
        description="The continuous cache /predict mixes in (size: the memory's pairs, theta, "
        "weight: its share); null when the model has none",
        examples=[{"size": 2000, "theta": 0.2, "weight": 0.15}],
    )

    @classmethod
    def of(cls, info: ModelInfo) -> ModelDescription:
        cache = info.continuous_cache
        return cls(
            name=info.name,
            version=info.version,
            vocabulary_size=info.vocabulary_size,
            architecture=info.architecture,
            metrics=info.metrics,
            created=info.created,
            continuous_cache=cache.to_dict() if cache is not None else None,
        )


def _refs(served: Mapping[str, Backend]) -> list[ModelRef]:
    return [ModelRef(name=name, version=backend.info.version) for name, backend in served.items()]


class ReadyResponse(BaseModel):
    status: str = Field(examples=["ready"])
    model: ModelRef = Field(description="The default model: a request naming none gets it")
    models: list[ModelRef] = Field(description="Every model served, each with its version")

    @classmethod
    def of(cls, served: Mapping[str, Backend], default: str) -> ReadyResponse:
        return cls(status="ready", model=_refs({default: served[default]})[0], models=_refs(served))


class RefusedVersion(BaseModel):
    name: str = Field(description="The model it is a version of")
    version: int | None = Field(description="None when no version could be chosen at all")
    reason: str = Field(description="Why it is not served (paths shown inside the store)")
    refused_at: datetime

    @classmethod
    def of(cls, name: str, refusal: Refusal, store: Path) -> RefusedVersion:
        return cls(
            name=name,
            version=refusal.version,
            reason=inside_store(refusal.reason, store),
            refused_at=datetime.fromtimestamp(refusal.at, UTC),
        )


class ModelsResponse(BaseModel):
    models: list[ModelDescription] = Field(
        description="Every model served: the version serving now"
    )
    default: str = Field(description="The model a request naming none gets", examples=["ptb"])
    refused: list[RefusedVersion] = Field(
        default_factory=list,
        description="Versions that failed their checks, of any model, most recent first; a "
        "refused version is tried again when its folder changes",
    )

    @classmethod
    def of(
        cls,
        served: Mapping[str, Backend],
        default: str,
        refused: Sequence[tuple[str, Refusal]],
        store: Path,
    ) -> ModelsResponse:
        return cls(
            models=[ModelDescription.of(backend.info) for backend in served.values()],
            default=default,
            refused=[RefusedVersion.of(name, refusal, store) for name, refusal in refused],
        )


def inside_store(reason: str, store: Path) -> str:
    # The server's own folders are not the client's business: show paths from the store down.
    # (Messages name resolved paths: app.store.version_dir resolves them.)
    root = store.resolve()
    return reason if root == root.parent else reason.replace(f"{root}/", "")


class ReloadResponse(BaseModel):
    status: Literal["loaded", "unchanged"] = Field(
        description="`loaded`: the version is now served; `unchanged`: it already was"
    )
    model: ModelRef

    @classmethod
    def of(cls, outcome: ReloadOutcome, info: ModelInfo) -> ReloadResponse:
        status: Literal["loaded", "unchanged"] = (
            "loaded" if outcome.status == "loaded" else "unchanged"
        )
        return cls(status=status, model=ModelRef(name=info.name, version=info.version))
