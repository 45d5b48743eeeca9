"""Changes to a store after training: a checked copy of a version published as another
model's (`promote`), and a file added to a published version (`attach`: say, the continuous
cache's settings, tuned after training), which no reader ever sees disagree with the
manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from app import store


def attach(
    path: Path,
    file_name: str,
    content: bytes,
    metrics: Mapping[str, Any],
    retired: Iterable[str] = (),
) -> None:
    """Add, or replace, one optional file of a published version (not its weights, tokenizer,
    Keras model or manifest), with its sha256 and `metrics` in the manifest.

    The manifest says what the version is: a file it does not list is not part of it. Each step
    below renames a complete file into place, so a reader sees the version before or after, or
    without the file, never a file its manifest disagrees with: the file is first struck from
    the manifest with the metric keys `retired` (they described it), then renamed into place,
    then listed again. The version's other files are verified first and not touched.
    """
    core = (store.MANIFEST, store.TOKENIZER, store.WEIGHTS, store.KERAS_MODEL)
    if file_name in (*core, "", ".", "..") or "/" in file_name or "\0" in file_name:
        raise store.ModelStoreError(f"{file_name!r} cannot be added to a version")
    manifest = store.read_manifest(path)
    now = manifest.get("metrics")
    gone = set(retired) | set(metrics)
    kept = {k: v for k, v in now.items() if k not in gone} if isinstance(now, dict) else {}
    if file_name in manifest["files"]:
        struck = {k: v for k, v in manifest["files"].items() if k != file_name}
        _replace_json(path / store.MANIFEST, {**manifest, "metrics": kept, "files": struck})
    _replace_file(path / file_name, content)
    files = {**manifest["files"], file_name: hashlib.sha256(content).hexdigest()}
    manifest.update(metrics={**kept, **metrics}, files=dict(sorted(files.items())))
    _replace_json(path / store.MANIFEST, manifest)


def _replace_file(path: Path, content: bytes) -> None:
    """Write a file beside `path`, then rename it over `path`: never half written."""
    work = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with work.open("wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        work.chmod(0o644)
        os.replace(work, path)
    except BaseException:
        work.unlink(missing_ok=True)
        raise
    store.fsync_dir(path.parent)


def _replace_json(path: Path, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False) + "\n"  # as store.publish writes it
    _replace_file(path, text.encode("utf-8"))


def promote(source: Path, store_dir: Path, name: str) -> store.Published:
    """Publish a checked copy of an existing version (e.g. from a scratch store) as `name`.

    The files are verified against their manifest first; the manifest keeps everything it
    said about training and records where the copy came from.
    """
    manifest = store.read_manifest(source)
    origin = {"path": str(source), "name": manifest.get("name"), "version": manifest.get("version")}

    def write(folder: Path) -> dict[str, Any]:
        for file_name in manifest["files"]:
            shutil.copy2(source / file_name, folder / file_name)
        kept = {k: v for k, v in manifest.items() if k not in ("files", "name", "version")}
        return {**kept, "promoted_from": origin}

    return store.publish(store_dir, name, write)
