"""Unit tests of the model store: names, version numbering, atomic publishing, verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.models import TinyModel

from app import store, store_edits
from app.inference.loading import load_predictor


def _write_minimal(folder: Path) -> dict[str, Any]:
    save_file({"embedding": np.ones((3, 2), np.float32)}, folder / store.WEIGHTS)
    (folder / store.TOKENIZER).write_text("{}", encoding="utf-8")
    return {"architecture": {"type": "simple_rnn"}}


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x" * 65, "a b"])
def test_names_that_would_escape_or_hide_are_refused(name: str) -> None:
    with pytest.raises(store.ModelStoreError):
        store.check_name(name)


def test_versions_are_numbered_and_listed_in_order(tmp_path: Path) -> None:
    for expected in (1, 2, 3):
        published = store.publish(tmp_path, "m", _write_minimal)
        assert published.version == expected
    assert store.versions(tmp_path, "m") == [1, 2, 3]
    assert store.version_dir(tmp_path, "m", "latest").name == "3"
    manifest = store.read_manifest(store.version_dir(tmp_path, "m", 2))
    assert manifest["version"] == 2 and manifest["name"] == "m"
    assert set(manifest["files"]) == {store.WEIGHTS, store.TOKENIZER}


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(folder: Path) -> dict[str, Any]:
        _write_minimal(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.publish(tmp_path, "m", broken)
    assert list((tmp_path / "m").iterdir()) == []
    assert store.versions(tmp_path, "m") == []


def test_hidden_work_folders_are_not_versions(tmp_path: Path) -> None:
    (tmp_path / "m" / ".tmp-123").mkdir(parents=True)
    assert store.versions(tmp_path, "m") == []
    with pytest.raises(store.ModelStoreError, match="nextword train"):
        store.version_dir(tmp_path, "m", "latest")


def test_a_changed_file_fails_its_checksum(tmp_path: Path) -> None:
    path = store.publish(tmp_path, "m", _write_minimal).path
    (path / store.TOKENIZER).write_text("{} ", encoding="utf-8")
    with pytest.raises(store.ModelStoreError, match=r"tokenizer\.json.*sha256"):
        store.read_manifest(path)


def test_a_missing_file_or_manifest_is_named(tmp_path: Path) -> None:
    path = store.publish(tmp_path, "m", _write_minimal).path
    (path / store.WEIGHTS).unlink()
    with pytest.raises(store.ModelStoreError, match=r"weights\.safetensors is missing"):
        store.read_manifest(path)
    (path / store.MANIFEST).unlink()
    with pytest.raises(store.ModelStoreError, match=r"manifest\.json is missing"):
        store.read_manifest(path)


def test_a_future_manifest_format_is_refused(tmp_path: Path) -> None:
    path = store.publish(tmp_path, "m", _write_minimal).path
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["format"] = 99
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(store.ModelStoreError, match="format 99"):
        store.read_manifest(path)


def test_weights_load_as_float32_without_tensorflow(tmp_path: Path) -> None:
    path = store.publish(tmp_path, "m", _write_minimal).path
    weights = store.load_weights(path)
    assert weights["embedding"].dtype == np.float32
    (path / store.WEIGHTS).write_bytes((path / store.WEIGHTS).read_bytes()[:20])
    with pytest.raises(store.ModelStoreError, match="cannot be read"):
        store.load_weights(path)


def test_promote_copies_a_checked_version_under_a_new_name(tmp_path: Path) -> None:
    source = store.publish(tmp_path / "scratch", "trial", _write_minimal).path
    promoted = store_edits.promote(source, tmp_path / "serving", "prod")
    assert (promoted.name, promoted.version) == ("prod", 1)
    manifest = store.read_manifest(promoted.path)
    assert manifest["promoted_from"]["name"] == "trial"
    assert manifest["architecture"] == {"type": "simple_rnn"}


def test_promote_refuses_a_corrupt_version(tmp_path: Path) -> None:
    source = store.publish(tmp_path / "scratch", "trial", _write_minimal).path
    (source / store.TOKENIZER).write_text("tampered")
    with pytest.raises(store.ModelStoreError, match="sha256"):
        store_edits.promote(source, tmp_path / "serving", "prod")
    assert store.versions(tmp_path / "serving", "prod") == []


def test_a_serving_copy_may_leave_out_what_only_training_reads(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    copy = tmp_path / "store" / tiny_model.name / str(tiny_model.version)
    shutil.copytree(tiny_model.path, copy)
    for name in store.NOT_SERVED:
        (copy / name).unlink(missing_ok=True)
    predictor = load_predictor(tmp_path / "store", tiny_model.name, tiny_model.version)
    assert predictor.info.version == tiny_model.version
    with pytest.raises(store.ModelStoreError, match=r"model\.keras is missing"):
        store.read_manifest(copy)  # a full check (promote, evaluate) still wants every file
    weights = copy / store.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(store.ModelStoreError, match="does not match the sha256"):
        load_predictor(tmp_path / "store", tiny_model.name, tiny_model.version)
