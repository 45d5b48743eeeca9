"""One error contract (README, "Errors a client may see"): every odd body gets the answer the
README gives for it, with the one error body, and never reaches the model."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message
from support.fakes import FakeBackend, FakeModels

from app.api.app import create_app
from app.api.deadlines import BodyDeadline
from app.api.documented import documented
from app.api.routes import get_models
from app.settings import Settings

JSON = {"content-type": "application/json"}
TEXT = '{"text": "a", "top_k": 3}'


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


def _app(backend: FakeBackend, tmp_path: Path, **settings: Any) -> Any:
    app = create_app(Settings(model_store=tmp_path / "no-store", **settings))
    app.dependency_overrides[get_models] = lambda: FakeModels(backend)
    return app


@pytest.fixture
def client(backend: FakeBackend, tmp_path: Path) -> TestClient:
    return TestClient(_app(backend, tmp_path), raise_server_exceptions=False)


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "fields"} and body["message"]
    assert body["error"] == code
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"text": "a", "top_k": ' + b"9" * 5000 + b"}", "top_k"),
        (b'{"text": "a", "top_k": -' + b"1" * 5000 + b"}", "top_k"),
        (b'{"text": "a", "extra": {"deep": ' + b"7" * 4301 + b"}}", "extra.deep"),
        (b'{"text": ' + b"5" * 6000 + b"}", "text"),
    ],
    ids=["top_k 5000 digits", "top_k negative", "nested unknown field", "text a long number"],
)
def test_a_number_too_long_to_read_is_422_naming_its_field(
    client: TestClient, backend: FakeBackend, body: bytes, field: str
) -> None:
    answer = _error(client.post("/predict", content=body, headers=JSON), 422, "invalid_request")
    assert [item["field"] for item in answer["fields"]] == [field]
    assert answer["fields"][0]["type"] == "number_too_long"
    assert answer["message"].startswith(f"{field}: ")
    assert backend.queries == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_utf16_and_utf32_bodies_are_400_like_any_body_not_utf8(
    client: TestClient, backend: FakeBackend, encoding: str
) -> None:
    response = client.post("/predict", content=TEXT.encode(encoding), headers=JSON)
    assert "UTF-8" in _error(response, 400, "bad_request")["message"]
    not_utf8 = client.post("/predict", content=b'{"text": "\xff"}', headers=JSON)
    _error(not_utf8, 400, "bad_request")
    assert backend.queries == []


def test_a_utf8_byte_order_mark_is_still_utf8(client: TestClient) -> None:
    response = client.post("/predict", content=TEXT.encode("utf-8-sig"), headers=JSON)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "a"} garbage',
        b'{"text": "a"}{"text": "b"}',
        b'{"text": "a"}\x00',
        b'{"text": "a\x01"}',
        b'{"text": "line\nbreak"}',
        b'{"text": "a"',
        b"text=a",
    ],
    ids=["trailing word", "two values", "trailing NUL", "raw control", "newline", "cut", "form"],
)
def test_text_that_is_not_one_json_value_is_422_body_json_invalid(
    client: TestClient, backend: FakeBackend, body: bytes
) -> None:
    answer = _error(client.post("/predict", content=body, headers=JSON), 422, "invalid_request")
    assert answer["fields"][0]["field"] == "body"
    assert answer["fields"][0]["type"] == "json_invalid"
    assert "not valid JSON" in answer["message"]
    assert backend.queries == []


def test_too_many_or_too_large_headers_are_431(client: TestClient) -> None:
    many = {f"x-header-{n}": "v" for n in range(101)}
    _error(client.get("/health", headers=many), 431, "request_header_fields_too_large")
    large = {"x-large": "v" * 16_500}
    answer = _error(client.post("/predict", content=TEXT, headers={**JSON, **large}), 431,
                    "request_header_fields_too_large")  # fmt: skip
    assert "16384 bytes" in answer["message"]
    fine = {f"x-header-{n}": "v" for n in range(80)}
    assert client.post("/predict", content=TEXT, headers={**JSON, **fine}).status_code == 200


def test_the_new_statuses_are_documented() -> None:
    responses = documented(408, 431)
    assert responses[408]["content"]["application/json"]["example"]["error"] == "request_timeout"
    example = responses[431]["content"]["application/json"]["example"]
    assert example["error"] == "request_header_fields_too_large"


# --- the body deadline: 408, and no in-flight slot while a body is awaited -------------------


def _call(app: Any, scope_headers: list[tuple[bytes, bytes]], receive: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/predict",
        "raw_path": b"/predict", "query_string": b"", "headers": scope_headers,
        "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": "",
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent


HEADERS_100 = [(b"content-type", b"application/json"), (b"content-length", b"100")]


async def _never() -> Message:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def test_a_body_that_does_not_arrive_in_time_is_408_and_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app is not reached")

    sent = _call(BodyDeadline(app, timeout_s=0.2), HEADERS_100, _never)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"request_timeout"' in sent[1]["body"]


def test_a_slow_body_holds_no_in_flight_slot(backend: FakeBackend, tmp_path: Path) -> None:
    app = _app(backend, tmp_path, max_in_flight=1, body_timeout_s=0.5)
    seen: list[int] = []

    async def slow() -> Message:
        seen.append(app.state.load.in_flight)
        await asyncio.sleep(1)  # past the deadline
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent = _call(app, HEADERS_100, slow)
    assert sent[0]["status"] == 408 and seen == [0]
    assert app.state.load.in_flight == 0
    body = b'{"text": "a"}'
    chunks = [body[:5], body[5:]]

    async def chunked() -> Message:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    headers = [(b"content-type", b"application/json"), (b"content-length", b"13")]
    assert _call(app, headers, chunked)[0]["status"] == 200
    assert backend.queries and app.state.load.in_flight == 0
