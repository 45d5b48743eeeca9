"""API keys, admin routes, CORS, and secrets kept out of logs and messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support.models import TinyModel
from support.server import serving

from app.api.app import create_app
from app.settings import Settings, SettingsError, load_settings
from app.store import ModelStoreError

pytestmark = pytest.mark.slow  # the app loads the trained tiny model

API_KEY = "api-key-with-enough-characters-1"
ADMIN_KEY = "admin-key-with-enough-characters-2"
TEXT = {"text": "the cat"}


@pytest.fixture(scope="module")
def app_for(
    tiny_model: TinyModel, settings_for: Callable[..., Settings]
) -> Callable[..., TestClient]:
    """`app_for(**settings)`: a client of the app serving the tiny model with these settings."""

    def make(**settings: Any) -> TestClient:
        return TestClient(create_app(settings_for(tiny_model, **settings)))

    return make


@pytest.fixture(scope="module")
def keyed(app_for: Callable[..., TestClient]) -> Iterator[TestClient]:
    with app_for(api_key=API_KEY, admin_key=ADMIN_KEY) as client:
        yield client


# --- the API key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-API-Key": API_KEY}, 200),
        ({"Authorization": f"Bearer {API_KEY}"}, 200),
        ({"Authorization": f"bearer {API_KEY}"}, 200),  # the scheme is case-insensitive
        ({"X-API-Key": "wrong", "Authorization": f"Bearer {API_KEY}"}, 200),  # either may carry it
        ({}, 401),
        ({"X-API-Key": ""}, 401),
        ({"X-API-Key": API_KEY[:-1]}, 401),
        ({"X-API-Key": API_KEY + "x"}, 401),
        ({"X-API-Key": API_KEY.upper()}, 401),
        ({"Authorization": f"Basic {API_KEY}"}, 401),
        ({"X-API-Key": ADMIN_KEY}, 401),  # the admin key is not a prediction key
        ({"X-API-Key": "ключ-ключ-ключ-ключ".encode()}, 401),  # UTF-8 bytes on the wire
    ],
    ids=["header", "bearer", "bearer lower-case", "one of two", "none", "empty", "prefix",
         "longer", "other case", "basic auth", "admin key", "non-ASCII"],
)  # fmt: skip
def test_model_routes_need_the_api_key(
    keyed: TestClient, headers: dict[str, Any], status: int
) -> None:
    for response in (
        keyed.post("/predict", json=TEXT, headers=headers),
        keyed.get("/models", headers=headers),
    ):
        assert response.status_code == status, response.text
        if status == 401:
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert API_KEY not in response.text


def test_probes_and_docs_need_no_key(keyed: TestClient) -> None:
    for path in ("/health", "/ready", "/docs", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path


def test_the_documented_security_is_what_is_enforced(
    keyed: TestClient, app_for: Callable[..., TestClient]
) -> None:
    spec = keyed.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert spec["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "401" in spec["paths"]["/predict"]["post"]["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]
    with app_for() as open_client:  # no key set: nothing declared, nothing required
        open_spec = open_client.get("/openapi.json").json()
        assert "securitySchemes" not in open_spec.get("components", {})
        assert open_client.post("/predict", json=TEXT).status_code == 200


# --- admin routes --------------------------------------------------------------------------------


def test_admin_routes_do_not_exist_without_an_admin_key(
    app_for: Callable[..., TestClient],
) -> None:
    with app_for(api_key=API_KEY) as client:
        response = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"
        assert not any(p.startswith("/admin") for p in client.get("/openapi.json").json()["paths"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"X-API-Key": API_KEY}, 401), ({"X-API-Key": "x" * 40}, 401),
     ({"X-API-Key": ADMIN_KEY}, 200), ({"Authorization": f"Bearer {ADMIN_KEY}"}, 200)],
    ids=["no key", "api key", "wrong key", "admin key", "admin key as bearer"],
)  # fmt: skip
def test_admin_routes_always_need_the_admin_key(
    keyed: TestClient, headers: dict[str, str], status: int
) -> None:
    response = keyed.post("/admin/reload", headers=headers)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"status": "unchanged", "model": {"name": "tiny", "version": 1}}


@pytest.mark.parametrize(
    "version", ["0", "-1", "../1", "1/../../etc", "%2e%2e", "1e3", "2147483648"]
)
def test_admin_versions_are_numbers_never_paths(keyed: TestClient, version: str) -> None:
    response = keyed.post(
        "/admin/reload", params={"version": version}, headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"] == "version"


@pytest.mark.parametrize("name", ["../ptb", "/etc", "a/b", ".hidden", "..", ""])
def test_model_names_from_settings_stay_in_the_store(name: str) -> None:
    with pytest.raises(SettingsError, match="NEXTWORD_MODEL_NAME"):
        load_settings(model_name=name)


@pytest.mark.parametrize("version", ["²", "٣", "0", "-1", "v2"])
def test_a_version_that_is_not_ascii_digits_is_refused_in_one_clear_line(version: str) -> None:
    # "²" and "٣" are digits to str.isdigit() that int() cannot read.
    with pytest.raises(SettingsError, match=r"NEXTWORD_MODEL_VERSION.*'latest' or a version"):
        load_settings(model_version=version)


def test_keys_are_checked_when_the_settings_are_made() -> None:
    with pytest.raises(SettingsError, match="at least 16 characters") as short:
        load_settings(api_key="short-secret")
    assert "short-secret" not in str(short.value)
    with pytest.raises(SettingsError, match="must differ"):
        load_settings(api_key=API_KEY, admin_key=API_KEY)
    settings = load_settings(api_key=API_KEY, admin_key=ADMIN_KEY)
    assert API_KEY not in repr(settings) and ADMIN_KEY not in str(settings)


def test_an_unusable_store_never_reaches_outside(tmp_path: Path) -> None:
    # The store check itself (app.store.version_dir), whatever a caller passes.
    from app.store import version_dir

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "1").symlink_to("/", target_is_directory=True)
    with pytest.raises(ModelStoreError, match="outside the model store"):
        version_dir(tmp_path, "m", 1)


# --- CORS ----------------------------------------------------------------------------------------


def test_cors_is_off_unless_origins_are_set(
    app_for: Callable[..., TestClient], keyed: TestClient
) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    assert "access-control-allow-origin" not in keyed.options("/predict", headers=preflight).headers
    with app_for(cors_origins=["https://app.example"]) as client:
        allowed = client.options("/predict", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        answer = client.post("/predict", json=TEXT, headers={"Origin": "https://app.example"})
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


# --- keys never in the logs ----------------------------------------------------------------------


def test_the_server_log_never_shows_a_key(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_API_KEY", API_KEY)
    monkeypatch.setenv("NEXTWORD_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("NEXTWORD_LOG_LEVEL", "trace")  # the most uvicorn ever logs
    wrong = "a-wrong-key-that-must-not-be-logged"
    with serving(tiny_model, tmp_path, ready_within=60) as server:
        calls = [
            ("/predict", {"X-API-Key": API_KEY}, 200),
            ("/predict", {"Authorization": f"Bearer {API_KEY}"}, 200),
            ("/predict", {"X-API-Key": wrong}, 401),
            ("/admin/reload", {"X-API-Key": ADMIN_KEY}, 200),
            ("/admin/reload", {"Authorization": f"Bearer {wrong}"}, 401),
        ]
        for path, headers, status in calls:
            response = httpx.post(server.url + path, json=TEXT, headers=headers, timeout=10)
            assert response.status_code == status, response.text
    log = server.output()
    assert "POST /predict" in log and "401" in log  # the requests were logged ...
    for secret in (API_KEY, ADMIN_KEY, wrong):
        assert secret not in log  # ... their keys were not
