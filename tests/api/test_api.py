"""The HTTP API through its lifespan: answers, every kind of bad input, start-up failures, docs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message
from support.models import TinyModel

from app import store
from app.api.app import create_app
from app.api.middleware import BodyLimits
from app.api.schemas import PredictResponse
from app.inference.predictor import ModelInfo, Prediction, Prefix, WordProbability
from app.settings import Settings

T = TypeVar("T")

pytestmark = pytest.mark.slow  # every test here starts from the trained tiny model

JSON = {"content-type": "application/json"}
PLAIN = {"content-type": "text/plain"}


def settings_for(model: TinyModel, **more: Any) -> Settings:
    return Settings(
        model_store=model.store, model_name=model.name, model_version=model.version, **more
    )


@pytest.fixture(scope="module")
def client(tiny_model: TinyModel) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tiny_model))) as client:
        yield client


# --- answers -----------------------------------------------------------------------------------


def test_predict(client: TestClient) -> None:
    response = client.post("/predict", json={"text": "My friend likes a dragon", "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokens"] == ["<eos>", "my", "friend", "likes", "a", "<unk>"]
    assert body["unknown_words"] == ["dragon"]
    assert body["model"] == {"name": "tiny", "version": 1}
    predictions = body["predictions"]
    assert len(predictions) == 3
    assert body["next_word"] == predictions[0]["word"]
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1


def test_special_tokens_only_on_request(client: TestClient) -> None:
    # Every training sentence ends after its place ("... in the morning"): <eos> comes next.
    text = "the cat sees the ball in the morning"
    plain = client.post("/predict", json={"text": text, "top_k": 100}).json()
    assert not {"<eos>", "<unk>"} & {p["word"] for p in plain["predictions"]}
    special = client.post("/predict", json={"text": text, "include_special": True}).json()
    assert special["next_word"] == "<eos>"


def test_health_ready_and_models(client: TestClient, tiny_model: TinyModel) -> None:
    assert client.get("/health").json() == {"status": "ok", "in_flight": 0}
    assert client.get("/ready").json() == {
        "status": "ready",
        "model": {"name": "tiny", "version": tiny_model.version},
    }
    (model,) = client.get("/models").json()["models"]
    manifest = json.loads((tiny_model.path / store.MANIFEST).read_text())
    assert model["vocabulary_size"] == manifest["architecture"]["vocab_size"]
    assert model["architecture"] == manifest["architecture"]
    assert model["metrics"]["valid"]["perplexity"] == manifest["metrics"]["valid"]["perplexity"]


class FakePredictor:
    """Stands in for the model where only the web layer is under test."""

    info = ModelInfo("fake", 7, Path("."), 3, {}, {})

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        self.calls.append((text, top_k, include_special))
        if text == "boom":
            raise RuntimeError("a bug, with internals the client must not see")
        return Prediction(
            [WordProbability("b", 0.75), WordProbability("c", 0.25)],
            Prefix([1, 0], ["<eos>", "<unk>"], [text]),
        )

    async def predict_async(
        self, text: str, top_k: int = 5, include_special: bool = False
    ) -> Prediction:
        return self.predict(text, top_k, include_special)

    async def predict_shaped_async(
        self, text: str, top_k: int, include_special: bool, shape: Callable[..., T]
    ) -> T:
        return shape(await self.predict_async(text, top_k, include_special), self.info)


class FixedModels:
    """Stands in for the ModelManager on `app.state.models`: always the same predictor."""

    def __init__(self, predictor: FakePredictor) -> None:
        self.current = predictor

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[FakePredictor]:
        yield self.current


def test_route_hands_the_request_to_the_predictor(tiny_model: TinyModel) -> None:
    app = create_app(settings_for(tiny_model))
    fake = FakePredictor()
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.models = FixedModels(fake)  # after the lifespan has loaded the real one
        body = {"text": "anything", "top_k": 2, "include_special": True}
        assert client.post("/predict", json=body).json() == {
            "next_word": "b",
            "predictions": [{"word": "b", "probability": 0.75}, {"word": "c", "probability": 0.25}],
            "tokens": ["<eos>", "<unk>"],
            "unknown_words": ["anything"],
            "model": {"name": "fake", "version": 7},
        }
        assert fake.calls == [("anything", 2, True)]
        # A bug is a 500 with the usual error body, and no internals.
        crash = client.post("/predict", json={"text": "boom"})
        assert crash.status_code == 500
        assert crash.json() == {
            "error": "internal_error", "message": "internal server error", "fields": []
        }  # fmt: skip


# --- bad input: always a clean 4xx with the error body, never a 500 -----------------------------

BAD_INPUT: list[tuple[str, dict[str, Any], int, str | None]] = [
    # (id, request, status, field named in the answer)
    ("missing text", {"json": {"top_k": 3}}, 422, "text"),
    ("unknown field", {"json": {"text": "a", "temperature": 2}}, 422, "temperature"),
    ("top_k 0", {"json": {"text": "a", "top_k": 0}}, 422, "top_k"),
    ("top_k 101", {"json": {"text": "a", "top_k": 101}}, 422, "top_k"),
    ("top_k string", {"json": {"text": "a", "top_k": "5"}}, 422, "top_k"),
    ("top_k huge", {"json": {"text": "a", "top_k": 10**30}}, 422, "top_k"),
    ("top_k -1", {"json": {"text": "a", "top_k": -1}}, 422, "top_k"),
    ("top_k fraction", {"json": {"text": "a", "top_k": 2.5}}, 422, "top_k"),
    ("top_k true", {"json": {"text": "a", "top_k": True}}, 422, "top_k"),
    ("top_k NaN", {"content": b'{"text": "a", "top_k": NaN}', "headers": JSON}, 422, "top_k"),
    ("special a string", {"json": {"text": "a", "include_special": "true"}}, 422,
     "include_special"),
    ("text a number", {"json": {"text": 5}}, 422, "text"),
    ("text an object", {"json": {"text": {"text": "a"}}}, 422, "text"),
    ("deep nesting in a field", {"content": b'{"text": ' + b"[" * 500 + b"]" * 500 + b"}",
     "headers": JSON}, 422, "text"),
    ("huge array in a field", {"json": {"text": "a", "x": list(range(10_000))}}, 422, "x"),
    ("text not a string", {"json": {"text": ["a"]}}, 422, "text"),
    ("text null", {"json": {"text": None}}, 422, "text"),
    ("text too long", {"json": {"text": "a" * 10_001}}, 422, "text"),
    ("body a list", {"json": ["text"]}, 422, "body"),
    ("body null", {"content": b"null", "headers": JSON}, 422, "body"),
    ("empty body", {"content": b"", "headers": JSON}, 422, "body"),
    ("NUL byte outside a string", {"content": b'{"text": "a"}\x00', "headers": JSON}, 422,
     "body"),
    ("truncated JSON", {"content": b'{"text": "a', "headers": JSON}, 422, "body"),
    ("not JSON", {"content": b"text=hello", "headers": JSON}, 422, "body"),
    ("lone surrogate", {"content": b'{"text": "a \\ud800"}', "headers": JSON}, 422, "text"),
    ("invalid UTF-8", {"content": b'{"text": "\xff\xfe"}', "headers": JSON}, 400, None),
    ("deep nesting", {"content": b"[" * 20_000 + b"]" * 20_000, "headers": JSON}, 400, None),
    ("plain text", {"content": b'{"text": "a"}', "headers": PLAIN}, 415, None),
    ("no content type", {"content": b'{"text": "a"}'}, 415, None),
    ("form", {"data": {"text": "a"}}, 415, None),
    ("too large", {"content": b" " * 70_000, "headers": JSON}, 413, None),
    ("too large, chunked", {"content": iter([b" " * 40_000] * 2), "headers": JSON}, 413, None),
    ("bad length", {"content": b"{}", "headers": {**JSON, "content-length": "x"}}, 400, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [pytest.param(request, status, field, id=name) for name, request, status, field in BAD_INPUT],
)
def test_bad_input_is_a_clean_client_error(
    client: TestClient, request_: dict[str, Any], status: int, field: str | None
) -> None:
    response = client.post("/predict", **request_)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "fields"} and body["message"]
    if field is not None:
        assert field in [f["field"] for f in body["fields"]]
        assert body["message"].startswith(f"{field}:")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\x00\x01\x1b[31m", "emoji 😀🚀 and ünïcödé", "<eos> <unk> <EOS>", "\n" * 5000,
     "the " * 2500, "\u2028\u2029\x85 the", "x" * 10_000, "?!...,;:-- ''", "\x00",
     "the кот 猫 sees \ufeffa ball", "\u0301\u200b\u200d\ufffd"],
    ids=["empty", "spaces", "control", "emoji", "specials", "newlines", "longest", "separators",
         "one long word", "punctuation only", "NUL", "mixed scripts", "combining, zero-width"],
)  # fmt: skip
def test_odd_but_valid_text_is_answered(client: TestClient, text: str) -> None:
    response = client.post("/predict", json={"text": text})
    assert response.status_code == 200, response.text
    assert response.json()["tokens"][0] == "<eos>"


@pytest.mark.parametrize("top_k", [1, 100, 7.0])
def test_top_k_at_its_bounds_is_answered(client: TestClient, top_k: float) -> None:
    response = client.post("/predict", json={"text": "the cat", "top_k": top_k})
    assert response.status_code == 200, response.text
    # The tiny model knows fewer than 100 words: it answers with all of them.
    assert 1 <= len(response.json()["predictions"]) <= top_k


def test_duplicate_keys_last_one_wins(client: TestClient) -> None:
    # As in JavaScript and Python's json module; the answer shows which text was read.
    body = b'{"text": "the dog", "text": "the cat", "top_k": 1}'
    response = client.post("/predict", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == ["<eos>", "the", "cat"]


def test_wrong_method_and_path(client: TestClient) -> None:
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert client.get("/nothing").json()["error"] == "not_found"


def test_body_limit_counts_a_stream_and_stops_reading() -> None:
    chunks = [b"x" * 600] * 5
    read: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:  # like FastAPI: read the whole body, whatever it costs
            message = await receive()
            read.append(len(message["body"]))
            if not message.get("more_body"):
                break

    async def receive() -> Message:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(BodyLimits(app, max_bytes=1_024)(scope, receive, send))
    assert sent[0]["status"] == 413
    assert sum(read) <= 1_024  # the app never saw the chunk that went over
    assert len(chunks) == 3  # and the rest was never read


@pytest.mark.parametrize(
    ("headers", "status", "closes"),
    [
        ([(b"content-type", b"application/json"), (b"content-length", b"70000")], 413, False),
        ([(b"content-type", b"application/json"), (b"content-length", b"2000000")], 413, True),
        ([(b"content-type", b"text/plain"), (b"content-length", b"100")], 415, False),
        ([(b"content-type", b"text/plain"), (b"content-length", b"2000000")], 415, True),
        ([(b"content-type", b"text/plain")], 415, True),  # chunked: length unknown
    ],
)
def test_a_refused_body_keeps_the_connection_only_when_it_is_small_enough_to_drain(
    headers: list[tuple[bytes, bytes]], status: int, closes: bool
) -> None:
    # Up to DRAIN_BYTES the server reads the rest of the body and keeps the connection (see
    # tests/test_serve_e2e.py for a real socket); past it, or unknown, it closes.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app is not reached")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    asyncio.run(BodyLimits(app, max_bytes=65_536, json_paths=["/predict"])(scope, receive, send))
    assert sent[0]["status"] == status
    assert ((b"connection", b"close") in sent[0]["headers"]) is closes


# --- docs ---------------------------------------------------------------------------------------


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "nextword" and spec["info"]["description"]
    operation = spec["paths"]["/predict"]["post"]
    for status in ("400", "413", "415", "422", "503"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorResponse")
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["examples"][0]["text"]
    assert schemas["PredictResponse"]["examples"][0]["next_word"]
    assert schemas["PredictRequest"]["additionalProperties"] is False
    assert {"/health", "/ready", "/models"} <= set(spec["paths"])


def test_the_predict_body_is_the_documented_response_model_as_fastapi_writes_it(
    client: TestClient,
) -> None:
    body = {"text": "The cat, the dog", "top_k": 4}
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    predictor = client.app.state.models.current  # type: ignore[attr-defined]
    expected = PredictResponse.of(predictor.predict("The cat, the dog", 4), predictor.info)
    assert response.content == expected.model_dump_json().encode()
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/PredictResponse"}


def test_docs_pages_use_no_cdn(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn" not in html and "fonts.googleapis" not in html
        # Every script, style sheet and icon comes from the app itself.
        assets = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', html)
        assert assets
        for asset in assets:
            assert client.get(asset).status_code == 200
