"""Fixtures of the API tier: apps over the trained tiny model, an app whose backend is a fake
(the web layer alone), and every way a version folder can be broken."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.fakes import FakeBackend, FakeModels
from support.models import TinyModel

from app import store
from app.api.app import create_app
from app.api.routes import get_models
from app.settings import Settings
from app.tokenizer import Tokenizer

# --- apps over the trained tiny model ----------------------------------------------------------

SettingsFor = Callable[..., Settings]


@pytest.fixture(scope="session")
def settings_for() -> SettingsFor:
    """`settings_for(model, **more)`: settings that serve that published version."""

    def make(model: TinyModel, **more: Any) -> Settings:
        return Settings(
            model_store=model.store, model_name=model.name, model_version=model.version, **more
        )

    return make


@pytest.fixture(scope="module")
def client(tiny_model: TinyModel, settings_for: SettingsFor) -> Iterator[TestClient]:
    """The app serving the tiny model, its lifespan run (one per test module)."""
    with TestClient(create_app(settings_for(tiny_model))) as client:
        yield client


# --- the web layer alone: a fake backend -------------------------------------------------------


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


FakeClientFor = Callable[..., TestClient]


@pytest.fixture
def fake_client_for(fake_backend: FakeBackend, tmp_path: Path) -> FakeClientFor:
    """`fake_client_for(**settings)`: a client of an app whose routes get `fake_backend`
    (FastAPI's dependency override); no model is loaded. Bugs are answered, not raised."""

    def make(**settings: Any) -> TestClient:
        app = create_app(Settings(model_store=tmp_path / "no-store", **settings))
        app.dependency_overrides[get_models] = lambda: FakeModels(fake_backend)
        return TestClient(app, raise_server_exceptions=False)

    return make


@pytest.fixture
def fake_client(fake_client_for: FakeClientFor) -> TestClient:
    return fake_client_for()


# --- broken model versions ----------------------------------------------------------------------
# Each breaks a copy of a version folder and returns a regular expression for the message that
# must name the fault: at start-up (test_model_faults.py) and when the version arrives at a
# running server (test_reload.py).

ModelFault = Callable[[Path], str]


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


@pytest.fixture(
    params=[
        pytest.param(_break_remove_folder, id="missing folder"),
        pytest.param(_break_remove_weights, id="missing weights file"),
        pytest.param(_break_tokenizer_bytes, id="sha256 mismatch"),
        pytest.param(_break_truncate_weights, id="truncated weights"),
        pytest.param(_break_truncate_weights_and_fix_sha, id="truncated weights, sha256 updated"),
        pytest.param(_break_format, id="wrong format version"),
        pytest.param(_break_vocabulary_size, id="vocabulary and weights differ"),
    ]
)
def break_model(request: pytest.FixtureRequest) -> ModelFault:
    """Every way a version folder can be broken (one test each)."""
    fault: ModelFault = request.param
    return fault
