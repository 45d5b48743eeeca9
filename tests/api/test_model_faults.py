"""A model that cannot be served: no model, a broken file, a wrong format or size: start-up stops
with one clear message naming the file (at reload: tests/test_reload.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.models import TinyModel

from app import store
from app.api.app import create_app
from app.settings import Settings
from app.store import ModelStoreError
from app.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # every test here starts from the trained tiny model


def test_without_a_model_ready_and_predict_answer_503(tmp_path: Path) -> None:
    # No lifespan (no `with`): the app is created but nothing is loaded, as before start-up.
    app = create_app(Settings(model_store=tmp_path))  # creating the app loads nothing
    client = TestClient(app)
    assert client.get("/health").status_code == 200
    for response in (client.get("/ready"), client.post("/predict", json={"text": "a"})):
        assert response.status_code == 503
        assert response.json()["error"] == "model_not_ready"


def _break_truncate_weights(path: Path) -> str:
    weights = path / store.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    return r"weights\.safetensors does not match the sha256 .*corrupt or truncated"


def _break_truncate_weights_and_fix_sha(path: Path) -> str:
    _break_truncate_weights(path)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"][store.WEIGHTS] = store.sha256_file(path / store.WEIGHTS)
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    return r"weights\.safetensors cannot be read"


def _break_tokenizer_bytes(path: Path) -> str:
    with (path / store.TOKENIZER).open("ab") as handle:
        handle.write(b" ")
    return r"tokenizer\.json does not match the sha256"


def _break_format(path: Path) -> str:
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["format"] = 99
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    return r"manifest\.json has format 99; .*retrain the model or upgrade"


def _break_remove_folder(path: Path) -> str:
    shutil.rmtree(path)
    return rf"tiny/{path.name} does not exist: train it"


def _break_remove_weights(path: Path) -> str:
    (path / store.WEIGHTS).unlink()
    return r"weights\.safetensors is missing: copy the whole version folder again"


def _break_vocabulary_size(path: Path) -> str:
    # A tokenizer from another model, its sha256 updated as a careless copy might.
    tokenizer = Tokenizer.load(path / store.TOKENIZER)
    (path / store.TOKENIZER).write_text(
        Tokenizer(tokenizer.config, tokenizer.vocabulary[:-1]).to_json(), encoding="utf-8"
    )
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"][store.TOKENIZER] = store.sha256_file(path / store.TOKENIZER)
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    return r"tokenizer\.json has \d+ words but the weights have \d+"


# Every way a version folder can be broken, with the message that must name it. Shared with
# tests/test_reload.py, where the same faults arrive as new versions of a running server.
ModelFault = Callable[[Path], str]
MODEL_FAULTS: list[Any] = [
    pytest.param(_break_remove_folder, id="missing folder"),
    pytest.param(_break_remove_weights, id="missing weights file"),
    pytest.param(_break_tokenizer_bytes, id="sha256 mismatch"),
    pytest.param(_break_truncate_weights, id="truncated weights"),
    pytest.param(_break_truncate_weights_and_fix_sha, id="truncated weights, sha256 updated"),
    pytest.param(_break_format, id="wrong format version"),
    pytest.param(_break_vocabulary_size, id="vocabulary and weights differ"),
]


@pytest.mark.parametrize("break_model", MODEL_FAULTS)
def test_a_bad_model_stops_start_up_with_a_clear_message(
    tiny_model: TinyModel, tmp_path: Path, break_model: ModelFault
) -> None:
    path = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_model.path, path)
    expected = break_model(path)
    app = create_app(Settings(model_store=tmp_path, model_name="tiny", model_version=1))
    with pytest.raises(ModelStoreError, match=expected), TestClient(app):
        pass


def test_an_empty_store_stops_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model_store=tmp_path / "nothing", model_name="ptb"))
    with pytest.raises(ModelStoreError, match="no versions of model 'ptb'"), TestClient(app):
        pass
