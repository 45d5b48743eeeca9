"""One model version from the store to a checked `Predictor`.

Every check that can fail does so here, as a ModelStoreError naming the file and the fix:
the manifest's format and the sha256 of every file (app.store), the architecture, the
tokenizer, the arrays' shapes and values, and the vocabulary against the weights; `probe`
then makes one prediction, whose probabilities must be finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from app import store
from app.inference.predictor import ModelInfo, Predictor
from app.inference.weights import Architecture, weights_from_arrays
from app.store import ModelStoreError
from app.tokenizer import Tokenizer, TokenizerError


def load_predictor(
    model_store: Path, name: str, version: int | str = "latest", cache_size: int = 4096
) -> Predictor:
    """Load and check one version (blocking: reads and hashes every file)."""
    path = store.version_dir(model_store, name, version)
    if not path.is_dir():
        raise ModelStoreError(
            f"model folder {path} does not exist: train it with `nextword train --name "
            f"{name}` or choose another (NEXTWORD_MODEL_STORE / _NAME / _VERSION)"
        )
    try:
        return _read(path, cache_size)
    except OSError as error:  # e.g. a file the server's user may not read
        raise ModelStoreError(
            f"cannot read the model in {path} ({error}): check the files and permissions"
        ) from None


def _read(path: Path, cache_size: int) -> Predictor:
    manifest = store.read_manifest(path)  # format and sha256 of every file
    try:
        architecture = Architecture.from_manifest(manifest.get("architecture"))
    except ValueError as error:
        raise ModelStoreError(
            f"{path / store.MANIFEST}: {error}: retrain the model or upgrade nextword"
        ) from None
    try:
        tokenizer = Tokenizer.load(path / store.TOKENIZER)
    except (TokenizerError, UnicodeDecodeError) as error:
        raise ModelStoreError(
            f"{path / store.TOKENIZER} cannot be used ({error}): copy the version folder "
            "again or retrain"
        ) from None
    arrays = store.load_weights(path)  # a file safetensors cannot read: ModelStoreError
    try:
        weights = weights_from_arrays(arrays, architecture)
    except ValueError as error:
        raise ModelStoreError(
            f"{path / store.WEIGHTS} does not fit the architecture in its manifest ({error}): "
            "copy the version folder again or retrain"
        ) from None
    if weights.vocab_size != tokenizer.size:
        raise ModelStoreError(
            f"{path / store.TOKENIZER} has {tokenizer.size} words but the weights have "
            f"{weights.vocab_size}: the files come from different models; copy the version "
            "folder again or retrain"
        )
    info = ModelInfo(
        name=path.parent.name,
        version=int(path.name),
        path=path,
        vocabulary_size=tokenizer.size,
        architecture=dict(manifest["architecture"]),
        metrics=_mapping(manifest.get("metrics")),
        created=str(manifest.get("created") or "") or None,
    )
    return Predictor(weights, tokenizer, info, cache_size)


def probe(predictor: Predictor) -> None:
    """One real prediction; a model whose weights load but compute nonsense is refused here."""
    probabilities = predictor.predict("", top_k=1, include_special=True).probabilities
    top = probabilities[0] if probabilities else math.nan
    if not (math.isfinite(top) and 0.0 < top <= 1.0):
        raise ModelStoreError(
            f"{predictor.info.path / store.WEIGHTS}: the probe prediction gave a probability of "
            f"{top!r} (weights not finite?): copy the version folder again or retrain"
        )


def _mapping(value: Any) -> dict[str, Any]:
    # Metrics are for people to read; a manifest without them still serves.
    return dict(value) if isinstance(value, dict) else {}
