"""The model store: `model_store/<name>/<version>/`, versions numbered 1, 2, 3...

Each version folder holds

    manifest.json          what the model is, how it was trained, its metrics, sha256 of each file
    tokenizer.json         the tokenizer (standardisation settings + vocabulary)
    weights.safetensors    the weights, readable without TensorFlow and without pickle
    model.keras            the Keras model, for evaluation and further training
    training_curve.png     loss / perplexity per epoch (when matplotlib was there to draw it)
    continuous_cache.json  optional: the continuous cache's settings, added by `nextword tune-cache`

A version is written into a hidden folder beside the others and renamed into place only when
complete, so a reader never sees a half-written version. This module needs NumPy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = "weights.safetensors"
KERAS_MODEL = "model.keras"
TRAINING_CURVE = "training_curve.png"
# Files of a version that only training and evaluation read: a serving copy (the Docker image)
# may leave them out, and the server neither needs nor hashes them.
NOT_SERVED = (KERAS_MODEL, TRAINING_CURVE)
CONTINUOUS_CACHE = "continuous_cache.json"
MAX_MANIFEST_BYTES = 1 << 20  # a trained manifest is about 12 KB, its history included

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# ASCII digits ([0-9], not \d, which matches any Unicode digit), without a leading zero.
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
# The largest version number, as POST /admin/reload?version= accepts it.
MAX_VERSION = 2**31 - 1


class ModelStoreError(ValueError):
    """A model name, version or folder that cannot be used; the message says what to do."""


def check_name(name: str) -> str:
    """A model name is one path segment: letters, digits, '_', '.', '-' (no '..', no '/')."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ModelStoreError(
            f"model name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def is_model_name(name: str) -> bool:
    """Whether `name` may name a model (see check_name)."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


def is_version_name(name: str) -> bool:
    """A version folder's name: ASCII digits without a leading zero (`1`, `2`, `10`...), as
    `str(number)` writes it. Not `01` (version_dir(1) would never find it), not `²` (a digit
    for str.isdigit(), which int() refuses)."""
    return _VERSION.fullmatch(name) is not None and int(name) <= MAX_VERSION


def versions(store: Path, name: str) -> list[int]:
    """Published versions of a model, oldest first.

    Only folders named as `is_version_name` says count; anything else in the model's folder
    (hidden work folders `.tmp-*`, files, other names) is not a version (see `unrecognised`).
    """
    folder = store / check_name(name)
    try:
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name) for p in folder.iterdir() if is_version_name(p.name) and p.is_dir()
        )
    except OSError as error:  # e.g. a model folder the server's user may not read
        raise ModelStoreError(
            f"cannot list the versions in {folder} ({error.strerror or error}): check its "
            "permissions"
        ) from None


def unrecognised(store: Path, name: str) -> list[str]:
    """Names in a model's folder that are neither versions nor hidden (a `.tmp-*` work folder
    of a trainer is expected and not listed): `01`, `²`, `v3`, a file named `2`...; sorted."""
    folder = store / check_name(name)
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
        return sorted(
            p.name
            for p in entries
            if not p.name.startswith(".") and not (is_version_name(p.name) and p.is_dir())
        )
    except OSError:
        return []  # versions() says why, when it is asked


def describe_unrecognised(folder: Path, names: Iterable[str], most: int = 10) -> str:
    """One log line for entries of a model folder that are not versions (names quoted with
    repr, so that a name with a line break or an escape sequence cannot forge a log line)."""
    ordered = sorted(names)
    shown = ", ".join(repr(n) for n in ordered[:most])
    if len(ordered) > most:
        shown += f" and {len(ordered) - most} more"
    return (
        f"ignoring {shown} in {folder}: not a version (a version is a folder named by a whole "
        "number without a leading zero: 1, 2, 3...)"
    )


def version_dir(store: Path, name: str, version: int | str) -> Path:
    """The folder of one version; `version` may be a number or 'latest'."""
    if version == "latest":
        found = versions(store, name)
        if not found:
            raise ModelStoreError(
                f"no versions of model {name!r} in {store}: train one with `nextword train`"
            )
        number = found[-1]
    else:
        if isinstance(version, str) and not is_version_name(version):
            raise ModelStoreError(
                f"model version must be 'latest' or a number from 1 to {MAX_VERSION}, "
                f"not {version!r}"
            )
        number = int(version)
        if number < 1:
            raise ModelStoreError(f"model version must be 1 or more, not {number}")
    path = (store / check_name(name) / str(number)).resolve()
    if not path.is_relative_to(store.resolve()):
        raise ModelStoreError(f"model path {path} is outside the model store {store}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_writable(store: Path, name: str) -> None:
    """Fail before a long training run, not after it, when the version could not be saved."""
    folder = store / check_name(name)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ModelStoreError(
            f"cannot write to {existing}: the model store must be a writable folder "
            "(in a container, run as a user that owns the mounted store)"
        )


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    path: Path


def publish(store: Path, name: str, write: Callable[[Path], dict[str, Any]]) -> Published:
    """Write a new version atomically.

    `write(folder)` fills a hidden work folder and returns the manifest (without `files`,
    `name`, `version`); the sha256 of every file is added here, then the folder is renamed to
    the next free version number. On any error the work folder is removed and nothing appears.
    """
    model_dir = store / check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    work = model_dir / f".tmp-{uuid.uuid4().hex}"
    work.mkdir()
    try:
        manifest = write(work)
        for item in work.iterdir():
            # Readable by a server running as another user (some writers create 0600 files).
            item.chmod(0o644)
        manifest["files"] = {
            p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.name != MANIFEST
        }
        # Another trainer may publish at the same time: rename fails if the number is taken,
        # and we try the next one (also past a name taken by something that is not a version,
        # such as a file named `2`).
        number = 0
        for _ in range(1000):
            number = max(number, (versions(store, name) or [0])[-1]) + 1
            manifest.update(format=MANIFEST_FORMAT, name=name, version=number)
            _write_json(work / MANIFEST, manifest)
            try:
                os.rename(work, model_dir / str(number))
            except OSError:
                if (model_dir / str(number)).exists():
                    continue
                raise
            fsync_dir(model_dir)
            return Published(name, number, model_dir / str(number))
        raise ModelStoreError(f"could not find a free version number under {model_dir}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path, serving: bool = False) -> dict[str, Any]:
    """Read and check a version's manifest and the sha256 of every file it lists; with
    `serving`, of every file the server reads (NOT_SERVED may be left out of a copy)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelStoreError(f"{manifest_path} is missing: this is not a complete model version")
    check_size(manifest_path, MAX_MANIFEST_BYTES, "a manifest may have: not one nextword wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelStoreError(f"{manifest_path} is not valid JSON ({error})") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise ModelStoreError(f"{manifest_path} is not a manifest (nested too deep)") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if type(found) is not int or found != MANIFEST_FORMAT:  # true and 1.0 are == 1 in Python
        raise ModelStoreError(
            f"{manifest_path} has format {found!r}; this nextword reads format "
            f"{MANIFEST_FORMAT}: retrain the model or upgrade nextword"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or TOKENIZER not in files:
        raise ModelStoreError(f"{manifest_path} does not list the weights and tokenizer files")
    for file_name, expected in files.items():
        if serving and file_name in NOT_SERVED:
            continue
        if not isinstance(expected, str):
            raise ModelStoreError(
                f"{manifest_path} gives {file_name!r} a sha256 that is not a string "
                f"({type(expected).__name__}): copy the version folder again or retrain"
            )
        # One file name in the folder: not a path, not empty, no NUL (which the OS refuses).
        if file_name in ("", ".", "..") or "/" in file_name or "\0" in file_name:
            raise ModelStoreError(f"{manifest_path} lists a file outside its folder: {file_name!r}")
        file_path = path / file_name
        if not file_path.resolve().is_relative_to(path.resolve()):
            raise ModelStoreError(f"{manifest_path} lists a file outside its folder: {file_name!r}")
        if not file_path.is_file():
            raise ModelStoreError(f"{file_path} is missing: copy the whole version folder again")
        if sha256_file(file_path) != expected:
            raise ModelStoreError(
                f"{file_path} does not match the sha256 in its manifest (corrupt or truncated): "
                "copy the version folder again or retrain"
            )
    return manifest


def check_size(file: Path, limit: int, allowed: str) -> None:
    """Refuse a file larger than `limit` bytes before anything reads it whole."""
    size = file.stat().st_size if file.is_file() else 0
    if size > limit:
        raise ModelStoreError(f"{file} is {size} bytes, more than the {limit} bytes {allowed}")


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """The weights of a version as float32 arrays (safetensors: no pickle, no TensorFlow)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return {key: np.asarray(value) for key, value in load_file(path / WEIGHTS).items()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelStoreError(f"{path / WEIGHTS} cannot be read ({error})") from error
