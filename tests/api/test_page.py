"""The type-ahead page's files as the app serves them (the page in a browser:
tests/e2e/test_typeahead_page.py), and the operation ids a generated client names its
functions after (a client generated and called: tests/e2e/test_generated_client.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.page import WEB

API_KEY = "page-test-key-with-enough-chars"


@pytest.fixture
def keyed(fake_client_for: Callable[..., TestClient]) -> TestClient:
    return fake_client_for(api_key=API_KEY, admin_key="page-test-admin-key-0123456")


def test_the_page_is_open_when_the_api_needs_a_key(keyed: TestClient) -> None:
    page = keyed.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<textarea id="text"' in page.text
    assert keyed.post("/predict", json={"text": "the "}).status_code == 401


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/web/typeahead.js", "text/javascript"), ("/web/typeahead.css", "text/css")],
)
def test_the_script_and_style_sheet_are_served_from_the_package(
    keyed: TestClient, path: str, media_type: str
) -> None:
    answer = keyed.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media_type)
    assert answer.content == (WEB / Path(path).name).read_bytes()


def test_the_browser_may_load_and_call_this_server_only(keyed: TestClient) -> None:
    policy = keyed.get("/").headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    for kind in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives[kind] == "'self'", kind
    # Nothing in the page's files names another host.
    for path in WEB.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "://" not in text and '"//' not in text, path


def test_the_page_is_not_an_operation(keyed: TestClient) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/web") for path in paths)


def test_every_operation_has_a_short_id(keyed: TestClient) -> None:
    paths = keyed.get("/openapi.json").json()["paths"]
    ids = {
        (method.upper(), path): operation["operationId"]
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    expected = {
        ("POST", "/predict"): "predict",
        ("POST", "/score"): "score",
        ("GET", "/models"): "models",
        ("GET", "/health"): "health",
        ("GET", "/ready"): "ready",
        ("POST", "/admin/reload"): "reload_model",
    }
    assert {route: ids[route] for route in expected} == expected
    # Routes added later get their function's name too: ids stay unique, words only.
    assert len(set(ids.values())) == len(ids)
    assert all(name.replace("_", "").isalpha() for name in ids.values()), ids
