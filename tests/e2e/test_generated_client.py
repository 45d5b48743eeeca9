"""A typed client generated from the served OpenAPI document, as a new user would make one:

    openapi-python-client generate --path openapi.json --output-path nextword_client --meta none

then /predict called through it over real HTTP. Offline: the document is fetched from the
server into a file first. Its functions are named after the operation ids (`predict`, not
`predict_predict_post`)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from support.models import TinyModel
from support.server import Server, serving

pytestmark = pytest.mark.slow  # serves the tiny model and generates a package

PACKAGE = "nextword_client"


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tiny_model, tmp_path_factory.mktemp("client-server")) as server:
        yield server


@pytest.fixture(scope="module")
def generated(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The generated package's folder, importable while the module's tests run."""
    folder = tmp_path_factory.mktemp("generated")
    document = folder / "openapi.json"
    document.write_bytes(httpx.get(server.url + "/openapi.json", timeout=10).content)
    # No post hooks: the generator would otherwise run ruff over the code it wrote.
    config = folder / "config.yaml"
    config.write_text(f"post_hooks: []\npackage_name_override: {PACKAGE}\n", encoding="utf-8")
    command = [
        sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document),
        "--output-path", str(folder / PACKAGE), "--meta", "none", "--config", str(config),
        "--fail-on-warning",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(folder))
    try:
        yield folder / PACKAGE
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def client_modules() -> SimpleNamespace:
    def load(name: str) -> object:
        return importlib.import_module(f"{PACKAGE}.{name}")

    return SimpleNamespace(
        client=load("client"), predict=load("api.prediction.predict"), models=load("models")
    )


def test_the_functions_are_named_after_the_operations(generated: Path) -> None:
    functions = {path.stem for path in (generated / "api").glob("*/*.py")} - {"__init__"}
    assert {"predict", "score", "models", "health", "ready"} <= functions, functions


def test_predict_through_the_generated_client(generated: Path, server: Server) -> None:
    generated_client = client_modules()
    client = generated_client.client.Client(base_url=server.url, timeout=httpx.Timeout(10))
    request = generated_client.models.PredictRequest
    answer = generated_client.predict.sync_detailed(
        client=client, body=request(text="the cat ", top_k=3)
    )
    assert answer.status_code == 200
    assert isinstance(answer.parsed, generated_client.models.PredictResponse)
    plain = httpx.post(server.url + "/predict", json={"text": "the cat ", "top_k": 3}).json()
    assert [p.word for p in answer.parsed.predictions] == [p["word"] for p in plain["predictions"]]
    assert (answer.parsed.model.name, answer.parsed.completing) == ("tiny", None)


def test_a_bad_request_is_the_generated_error_type(generated: Path, server: Server) -> None:
    generated_client = client_modules()
    client = generated_client.client.Client(base_url=server.url, timeout=httpx.Timeout(10))
    request = generated_client.models.PredictRequest
    refused = generated_client.predict.sync_detailed(
        client=client, body=request(text="the cat ", top_k=0)
    )
    assert refused.status_code == 422
    error = refused.parsed
    assert isinstance(error, generated_client.models.ErrorResponse)
    assert error.error == "invalid_request"
    assert [field.field for field in error.fields] == ["top_k"]
