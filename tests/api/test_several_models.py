"""Several models in one server (NEXTWORD_MODELS): a request names its model or gets the default;
each model is listed, reloaded, refused and polled on its own.

The store holds the trained tiny model under two names: `tiny` (v1, v2) and `twin` (v1, v2).
The server is pinned to tiny v1 (NEXTWORD_MODEL_VERSION is the default model's); twin serves
its latest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from support.models import TinyModel

from app import store
from app.api.app import create_app
from app.settings import Settings
from app.store import ModelStoreError

pytestmark = pytest.mark.slow  # the apps load the trained tiny model

ADMIN_KEY = "several-models-admin-key-0123"
ADMIN = {"X-API-Key": ADMIN_KEY}
TEXT = "our neighbour watches "


def copy_version(model: TinyModel, store_dir: Path, name: str, version: int) -> Path:
    target = store_dir / name / str(version)
    shutil.copytree(model.path, target)
    return target


@pytest.fixture
def store_dir(tiny_model: TinyModel, tmp_path: Path) -> Path:
    for name in ("tiny", "twin"):
        for version in (1, 2):
            copy_version(tiny_model, tmp_path / "store", name, version)
    return tmp_path / "store"


@pytest.fixture
def served(store_dir: Path) -> Callable[..., TestClient]:
    """`served(**settings)`: a client of both models, tiny (pinned to v1) the default."""

    def make(**settings: Any) -> TestClient:
        defaults: dict[str, Any] = dict(
            model_store=store_dir, models=("tiny", "twin"), model_name="tiny", model_version=1,
            admin_key=SecretStr(ADMIN_KEY),
        )  # fmt: skip
        return TestClient(create_app(Settings(**{**defaults, **settings})))

    return make


@pytest.fixture
def client(served: Callable[..., TestClient]) -> Iterator[TestClient]:
    with served() as client:
        yield client


def versions(client: TestClient) -> dict[str, int]:
    return {model["name"]: model["version"] for model in client.get("/ready").json()["models"]}


def wait_for(condition: Callable[[], Any], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within} s")
        time.sleep(0.05)


# --- a request names its model ------------------------------------------------------------------


def test_predict_and_score_answer_with_the_model_named_or_the_default(client: TestClient) -> None:
    default = client.post("/predict", json={"text": TEXT, "top_k": 3}).json()
    assert default["model"] == {"name": "tiny", "version": 1}
    twin = client.post("/predict", json={"text": TEXT, "top_k": 3, "model": "twin"}).json()
    assert twin["model"] == {"name": "twin", "version": 2}
    assert twin["predictions"] == default["predictions"]  # the same weights under two names
    named = client.post("/predict", json={"text": TEXT, "model": "tiny"}).json()
    assert named["model"] == {"name": "tiny", "version": 1}
    assert client.post("/predict", json={"text": TEXT, "model": None}).json()["model"]["name"] == (
        "tiny"
    )

    score = client.post("/score", json={"text": "the cat sees the ball", "model": "twin"})
    assert score.status_code == 200, score.text
    assert score.json()["model"] == {"name": "twin", "version": 2}
    assert client.post("/score", json={"text": "the cat"}).json()["model"]["name"] == "tiny"


@pytest.mark.parametrize("path", ["/predict", "/score"])
def test_an_unknown_model_is_a_422_naming_the_field_and_the_models_served(
    client: TestClient, path: str
) -> None:
    response = client.post(path, json={"text": "the cat", "model": "wikitext2"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    (field,) = body["fields"]
    assert field["field"] == "model" and field["type"] == "unknown_model"
    assert field["message"] == (
        "no model 'wikitext2' is served here; the models served are tiny, twin"
    )
    assert body["message"] == f"model: {field['message']}"


@pytest.mark.parametrize(
    ("model", "kind"),
    [(5, "string_type"), (["twin"], "string_type"), ("t" * 65, "string_too_long")],
)
def test_a_model_that_is_not_a_name_is_a_422_naming_the_field(
    client: TestClient, model: Any, kind: str
) -> None:
    response = client.post("/predict", json={"text": "the cat", "model": model})
    assert response.status_code == 422, response.text
    assert [(f["field"], f["type"]) for f in response.json()["fields"]] == [("model", kind)]


def test_the_document_lists_the_models_a_request_may_name(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for request in ("PredictRequest", "ScoreRequest"):
        named = schemas[request]["properties"]["model"]["anyOf"][0]
        assert named == {"type": "string", "enum": ["tiny", "twin"]}


# --- /ready and /models list every model --------------------------------------------------------


def test_ready_and_models_list_every_model(client: TestClient) -> None:
    assert client.get("/ready").json() == {
        "status": "ready",
        "model": {"name": "tiny", "version": 1},
        "models": [{"name": "tiny", "version": 1}, {"name": "twin", "version": 2}],
    }
    body = client.get("/models").json()
    assert [(model["name"], model["version"]) for model in body["models"]] == [
        ("tiny", 1),
        ("twin", 2),
    ]
    assert body["default"] == "tiny" and body["refused"] == []


# --- each model is reloaded and refused on its own ----------------------------------------------


def _break_weights(path: Path) -> None:
    with (path / store.WEIGHTS).open("ab") as handle:
        handle.write(b"\0")  # no longer the sha256 of the manifest


def test_a_broken_version_of_one_model_is_refused_and_the_other_is_untouched(
    client: TestClient, store_dir: Path, tiny_model: TinyModel
) -> None:
    _break_weights(copy_version(tiny_model, store_dir, "twin", 3))
    response = client.post("/admin/reload", params={"model": "twin"}, headers=ADMIN)
    assert response.status_code == 409, response.text
    assert response.json()["message"].startswith("twin/3/weights.safetensors does not match")

    assert versions(client) == {"tiny": 1, "twin": 2}  # both still serving
    assert client.post("/predict", json={"text": TEXT, "model": "twin"}).json()["model"] == {
        "name": "twin",
        "version": 2,
    }
    (refused,) = client.get("/models").json()["refused"]
    assert (refused["name"], refused["version"]) == ("twin", 3)
    assert "sha256" in refused["reason"]


def test_admin_reload_loads_a_version_of_the_model_named_or_of_the_default(
    client: TestClient,
) -> None:
    response = client.post("/admin/reload", params={"model": "twin", "version": 1}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "loaded", "model": {"name": "twin", "version": 1}}
    assert versions(client) == {"tiny": 1, "twin": 1}

    response = client.post("/admin/reload", params={"version": 2}, headers=ADMIN)
    assert response.json() == {"status": "loaded", "model": {"name": "tiny", "version": 2}}
    assert versions(client) == {"tiny": 2, "twin": 1}
    # Without a version: the default model's NEXTWORD_MODEL_VERSION (1); the others' latest.
    response = client.post("/admin/reload", headers=ADMIN)
    assert response.json() == {"status": "loaded", "model": {"name": "tiny", "version": 1}}
    response = client.post("/admin/reload", params={"model": "twin"}, headers=ADMIN)
    assert response.json() == {"status": "loaded", "model": {"name": "twin", "version": 2}}


def test_admin_reload_of_a_model_not_served_is_a_422_naming_it(client: TestClient) -> None:
    response = client.post("/admin/reload", params={"model": "../tiny"}, headers=ADMIN)
    assert response.status_code == 422, response.text
    (field,) = response.json()["fields"]
    assert field["field"] == "model"
    assert field["message"].endswith("the models served are tiny, twin")
    assert versions(client) == {"tiny": 1, "twin": 2}


def test_the_poller_serves_each_models_new_versions_and_keeps_the_pin(
    served: Callable[..., TestClient], store_dir: Path, tiny_model: TinyModel
) -> None:
    with served(reload_interval_s=0.05) as client:
        copy_version(tiny_model, store_dir, "tiny", 3)  # tiny is pinned to v1: not served
        copy_version(tiny_model, store_dir, "twin", 3)
        wait_for(lambda: versions(client)["twin"] == 3)
        time.sleep(0.3)  # several more polls
        assert versions(client) == {"tiny": 1, "twin": 3}


# --- start-up ------------------------------------------------------------------------------------


def test_a_model_that_cannot_be_loaded_stops_start_up(
    served: Callable[..., TestClient], store_dir: Path
) -> None:
    _break_weights(store_dir / "twin" / "2")
    with (
        pytest.raises(ModelStoreError, match=r"twin/2/weights\.safetensors does not match"),
        served(),
    ):
        pass


def test_without_models_given_every_model_of_the_store_is_served(store_dir: Path) -> None:
    (store_dir / "in-training" / ".tmp-0123").mkdir(parents=True)  # no version yet: not a model
    settings = Settings(model_store=store_dir)
    assert settings.models == ("tiny", "twin")
    assert settings.model_name == "tiny"  # no `ptb` here: the first
    with TestClient(create_app(settings)) as client:
        assert versions(client) == {"tiny": 2, "twin": 2}
