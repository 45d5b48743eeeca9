"""One model version from the store to a checked `Predictor`.

Every check that can fail does so here, as a ModelStoreError naming the file and the fix:
the manifest's format and the sha256 of every file (app.store), the architecture, the
tokenizer, the arrays' shapes and values, the vocabulary against the weights, and the
continuous cache's settings when the version has them; `probe` then makes one prediction,
whose probabilities must be finite.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

from app import store
from app.inference.blocklist import Blocklist
from app.inference.distribution import CacheSettings
from app.inference.predictor import ModelInfo, Predictor
from app.inference.weights import Architecture, weights_from_arrays
from app.store import ModelStoreError
from app.tokenizer import Tokenizer, TokenizerError

# A tokenizer file's size allowed per word of the architecture's vocabulary (PTB's: 13 bytes a
# word; a word of 14 four-byte characters, quoted and indented: 62), plus its settings.
TOKENIZER_BYTES_PER_WORD = 64
TOKENIZER_SLACK_BYTES = 64 << 10
# A safetensors header names each array's type, shape and offsets: a few hundred bytes here.
MAX_HEADER_BYTES = 1 << 20
# continuous_cache.json: three settings and what they were tuned on, a few hundred bytes.
MAX_CACHE_SETTINGS_BYTES = 64 << 10


def load_predictor(
    model_store: Path,
    name: str,
    version: int | str = "latest",
    cache_size: int = 4096,
    blocklist: Blocklist | None = None,
) -> Predictor:
    """Load and check one version (blocking: reads and hashes every file). The words of
    `blocklist` are never offered."""
    path = store.version_dir(model_store, name, version)
    if not path.is_dir():
        raise ModelStoreError(
            f"model folder {path} does not exist: train it with `nextword train --name "
            f"{name}` or choose another (NEXTWORD_MODEL_STORE / _NAME / _VERSION)"
        )
    try:
        return _read(path, cache_size, blocklist)
    except OSError as error:  # e.g. a file the server's user may not read
        raise ModelStoreError(
            f"cannot read the model in {path} ({error}): check the files and permissions"
        ) from None


def _read(path: Path, cache_size: int, blocklist: Blocklist | None) -> Predictor:
    manifest = store.read_manifest(path, serving=True)  # format, sha256 of each file read
    try:
        architecture = Architecture.from_manifest(manifest.get("architecture"))
    except (ValueError, OverflowError) as error:  # OverflowError: a size of 1e999 (infinity)
        raise ModelStoreError(
            f"{path / store.MANIFEST}: {error}: retrain the model or upgrade nextword"
        ) from None
    vocab = architecture.vocab_size
    # Nothing is read whole before its size fits the architecture: a refused version costs
    # bounded memory (a 1,000,000-word tokenizer for weights of 10,000 words is never parsed).
    store.check_size(
        path / store.TOKENIZER,
        TOKENIZER_BYTES_PER_WORD * vocab + TOKENIZER_SLACK_BYTES,
        f"a tokenizer of {vocab} words (the manifest's architecture) may have",
    )
    _check_weights_header(path / store.WEIGHTS, architecture.shapes())
    try:
        tokenizer = _load_tokenizer(path / store.TOKENIZER, vocab)
    except (TokenizerError, UnicodeDecodeError, RecursionError) as error:
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
        continuous_cache=_continuous_cache(path, manifest["files"]),
    )
    return Predictor(weights, tokenizer, info, cache_size, blocklist)


def _continuous_cache(path: Path, files: dict[str, str]) -> CacheSettings | None:
    """The continuous cache's settings when the manifest lists them (a file it does not list
    is not part of the version: `store_edits.attach` leaves one there while it replaces it)."""
    expected = files.get(store.CONTINUOUS_CACHE)
    if expected is None:
        return None
    file = path / store.CONTINUOUS_CACHE
    store.check_size(file, MAX_CACHE_SETTINGS_BYTES, "continuous cache settings may have")
    data = file.read_bytes()
    # read_manifest hashed the file a moment ago; these bytes are the ones parsed.
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelStoreError(
            f"{file} does not match the sha256 in its manifest (replaced while loading?): "
            "load the version again"
        )
    try:
        return CacheSettings.from_dict(json.loads(data.decode("utf-8")))
    except (ValueError, RecursionError) as error:  # ValueError: also bad UTF-8 and JSON
        raise ModelStoreError(
            f"{file} cannot be used ({error}): tune it again with `nextword tune-cache`"
        ) from None


def _load_tokenizer(file: Path, vocab: int) -> Tokenizer:
    """The tokenizer, once its word count is the architecture's (before the index is built)."""
    text = file.read_text(encoding="utf-8")
    payload = json.loads(text) if text.strip() else None
    words = payload.get("vocabulary") if isinstance(payload, dict) else None
    if isinstance(words, list) and len(words) != vocab:
        raise ModelStoreError(
            f"{file} has {len(words)} words but the weights have {vocab}: the files come from "
            "different models; copy the version folder again or retrain"
        )
    del payload, words
    return Tokenizer.from_json(text)


def _check_weights_header(file: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The weights file's size and its safetensors header against the architecture, reading
    only the header: a file of other arrays, or with bytes beyond them, is not loaded."""
    largest = 8 + MAX_HEADER_BYTES + 8 * sum(math.prod(shape) for shape in shapes.values())
    store.check_size(file, largest, "the weights of the manifest's architecture may have")
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"a header of {length} bytes")
            header = json.loads(handle.read(length))
        found = {k: v for k, v in header.items() if k != "__metadata__"}
        described = {name: tuple(int(n) for n in entry["shape"]) for name, entry in found.items()}
        end = max((int(entry["data_offsets"][1]) for entry in found.values()), default=0)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        raise ModelStoreError(f"{file} cannot be read ({error})") from None
    size = file.stat().st_size
    if size != 8 + length + end:
        raise ModelStoreError(
            f"{file} cannot be read (it is {size} bytes; its header describes {8 + length + end})"
        )
    problem = ""
    if unexpected := sorted(set(described) - set(shapes)):
        problem = f"unexpected arrays {unexpected} for this architecture"
    for name, shape in shapes.items():
        if problem:
            break
        if name not in described:
            problem = f"array {name!r} is missing"
        elif described[name] != shape:
            problem = f"array {name!r} has shape {described[name]}, expected {shape}"
    if problem:
        raise ModelStoreError(
            f"{file} does not fit the architecture in its manifest ({problem}): copy the "
            "version folder again or retrain"
        )


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
