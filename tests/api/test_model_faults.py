"""A model that cannot be served: no model, a broken file, a wrong format or size: start-up stops
with one clear message naming the file (at reload: test_reload.py; the faults: conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.models import TinyModel

from app.api.app import create_app
from app.settings import Settings
from app.store import ModelStoreError


def test_without_a_model_the_model_routes_answer_503(tmp_path: Path) -> None:
    # No lifespan (no `with`): the app is created but nothing is loaded, as before start-up.
    app = create_app(Settings(model_store=tmp_path))  # creating the app loads nothing
    client = TestClient(app)
    assert client.get("/health").json() == {"status": "ok", "in_flight": 0}
    for response in (
        client.get("/ready"),
        client.get("/models"),
        client.post("/predict", json={"text": "a"}),
    ):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == {
            "error": "model_not_ready",
            "message": "the model is not loaded yet (or any more); try again shortly",
            "fields": [],
        }


@pytest.mark.slow  # from the trained tiny model
def test_a_bad_model_stops_start_up_with_a_clear_message(
    tiny_model: TinyModel, tmp_path: Path, break_model: Callable[[Path], str]
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
