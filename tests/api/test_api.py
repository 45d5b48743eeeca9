"""The HTTP API as a client sees it: answers, every kind of bad input, errors, docs.

Two apps: the tiny trained model served through its lifespan (the answers a user gets), and
an app whose routes are handed a fake backend (`fake_client`, conftest.py): the web layer
alone, to check exactly what reaches the model and what a failure below it looks like.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import Message
from support.errors import assert_client_error
from support.fakes import FakeBackend
from support.models import TinyModel

from app import store
from app.api.middleware import BodyLimits
from app.api.schemas import PredictResponse
from app.inference.predictor import Query

JSON = {"content-type": "application/json"}
PLAIN = {"content-type": "text/plain"}
SPECIAL = {"<eos>", "<unk>"}
INTERNAL_ERROR = {"error": "internal_error", "message": "internal server error", "fields": []}

slow = pytest.mark.slow  # serves the trained tiny model
# The tiny model's words: those of the patterned corpus (support.models), <unk> and <eos>.
VOCABULARY = 32
WORDS = VOCABULARY - 2  # what it may predict without include_special


def assert_ranked(body: dict[str, Any], count: int, special: bool = False) -> None:
    """What every answer promises: `count` distinct words, most likely first, each with a
    probability in (0, 1], together at most 1; `next_word` the first; no special tokens
    unless asked for."""
    predictions = body["predictions"]
    assert len(predictions) == count
    words = [p["word"] for p in predictions]
    probabilities = [p["probability"] for p in predictions]
    assert body["next_word"] == words[0]
    assert len(set(words)) == count
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 < p <= 1 for p in probabilities)
    assert sum(probabilities) <= 1 + 1e-6
    if not special:
        assert not SPECIAL & set(words)


# --- answers from the trained model -------------------------------------------------------------


@slow
def test_predict(client: TestClient) -> None:
    response = client.post("/predict", json={"text": "My friend likes a dragon ", "top_k": 3})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "next_word", "predictions", "tokens", "unknown_words", "model", "completing"
    }  # fmt: skip
    assert body["completing"] is None  # a trailing space: the next word, no word completed
    assert body["tokens"] == ["<eos>", "my", "friend", "likes", "a", "<unk>"]
    assert body["unknown_words"] == ["dragon"]
    assert body["model"] == {"name": "tiny", "version": 1}
    assert_ranked(body, 3)


@slow
def test_special_tokens_only_on_request(client: TestClient) -> None:
    # Every training sentence ends after its place ("... in the morning"): <eos> comes next.
    text = "the cat sees the ball in the morning "
    plain = client.post("/predict", json={"text": text, "top_k": 100}).json()
    assert_ranked(plain, WORDS)  # every word it knows but the two special tokens
    special = client.post("/predict", json={"text": text, "include_special": True}).json()
    assert_ranked(special, 5, special=True)
    assert special["next_word"] == "<eos>"


@slow
def test_health_ready_and_models(client: TestClient, tiny_model: TinyModel) -> None:
    assert client.get("/health").json() == {"status": "ok", "in_flight": 0}
    assert client.get("/ready").json() == {
        "status": "ready",
        "model": {"name": "tiny", "version": tiny_model.version},
        "models": [{"name": "tiny", "version": tiny_model.version}],
    }
    manifest = json.loads((tiny_model.path / store.MANIFEST).read_text())
    assert client.get("/models").json() == {
        "models": [
            {
                "name": "tiny",
                "version": tiny_model.version,
                "vocabulary_size": VOCABULARY,
                "architecture": manifest["architecture"],
                "metrics": manifest["metrics"],
                "created": manifest["created"],
                "continuous_cache": None,
            }
        ],
        "default": "tiny",
        "refused": [],
    }


@slow
@pytest.mark.parametrize(
    ("text", "tokens", "unknown_words"),
    [
        ("", ["<eos>"], []),
        ("   ", ["<eos>"], []),
        ("\x00", ["<eos>"], []),  # control characters are spaces
        # Each text ends in whitespace (or a control character, read as a space): the next
        # word is predicted, the whole text read.
        ("\x00\x01\x1b[31m ", ["<eos>", "<unk>", "<unk>", "<unk>"], ["[", "N", "m"]),  # 31: N
        ("emoji 😀🚀 and ünïcödé ", ["<eos>"] + ["<unk>"] * 5,
         ["emoji", "😀", "🚀", "and", "ünïcödé"]),
        # Typed exactly, <eos> and <unk> are the special tokens; <EOS> is a mark, word, mark.
        ("<eos> <unk> <EOS> ", ["<eos>", "<eos>", "<unk>", "<unk>", "<unk>", "<unk>"],
         ["<", "eos", ">"]),
        ("\n" * 5000, ["<eos>"], []),  # blank lines add nothing
        ("the " * 2500, ["<eos>"] + ["the"] * 2500, []),
        ("\u2028\u2029\x85 the ", ["<eos>", "the"], []),  # three line breaks, then a sentence
        ("x" * 9_999 + " ", ["<eos>", "<unk>"], ["x" * 9_999]),  # (10,000 characters)
        ("?!...,;:-- '' ", ["<eos>"] + ["<unk>"] * 12, list("?!...,;:--''")),
        ("the кот 猫 sees \ufeffa ball ",
         ["<eos>", "the", "<unk>", "<unk>", "sees", "<unk>", "a", "ball"],
         ["кот", "猫", "\ufeff"]),
        ("\u0301\u200b\u200d\ufffd ", ["<eos>"] + ["<unk>"] * 4,
         ["\u0301", "\u200b", "\u200d", "\ufffd"]),
    ],
    ids=["empty", "spaces", "NUL", "control", "emoji", "specials", "newlines", "longest",
         "separators", "one long word", "punctuation only", "mixed scripts",
         "combining, zero-width"],
)  # fmt: skip
def test_odd_but_valid_text_is_answered(
    client: TestClient, text: str, tokens: list[str], unknown_words: list[str]
) -> None:
    response = client.post("/predict", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokens"] == tokens
    assert body["unknown_words"] == unknown_words
    assert_ranked(body, 5)


@slow
@pytest.mark.parametrize(
    ("top_k", "count"), [(1, 1), (7.0, 7), (WORDS, WORDS), (WORDS + 1, WORDS), (100, WORDS)]
)
def test_top_k_words_or_all_it_knows(client: TestClient, top_k: float, count: int) -> None:
    response = client.post("/predict", json={"text": "the cat ", "top_k": top_k})
    assert response.status_code == 200, response.text
    assert_ranked(response.json(), count)


@slow
def test_the_predict_body_is_the_documented_response(client: TestClient) -> None:
    # /predict writes its JSON itself (app.api.schemas.predict_body), not through the response
    # model: the body must still be what the OpenAPI document promises.
    response = client.post("/predict", json={"text": "The cat, the dog", "top_k": 4})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    PredictResponse.model_validate_json(response.content)  # raises if it is not
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/PredictResponse"}
    schemas = spec["components"]["schemas"]
    body = response.json()
    assert body["completing"] == "dog"  # the word being typed
    # Exactly the documented fields, no more (the model would ignore extra ones): every one,
    # but `phrases`, there only when asked for (phrase_words above 1).
    for value, name, left_out in [
        (body, "PredictResponse", {"phrases"}),
        (body["model"], "ModelRef", set()),
        *((prediction, "WordProbability", set()) for prediction in body["predictions"]),
    ]:
        properties = set(schemas[name]["properties"])
        assert set(value) == properties - left_out
        assert set(schemas[name]["required"]) <= set(value)


# --- the web layer alone, over a fake backend ---------------------------------------------------


def test_route_hands_the_request_to_the_backend(
    fake_client: TestClient, fake_backend: FakeBackend
) -> None:
    response = fake_client.post(
        "/predict", json={"text": "anything", "top_k": 2, "include_special": True}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "next_word": "b",
        "predictions": [{"word": "b", "probability": 0.75}, {"word": "c", "probability": 0.25}],
        "tokens": ["<eos>", "<unk>"],
        "unknown_words": ["zebra"],
        "model": {"name": "fake", "version": 7},
        "completing": None,
    }
    assert fake_backend.queries == [Query("anything", 2, True)]
    assert fake_client.get("/ready").json() == {
        "status": "ready",
        "model": {"name": "fake", "version": 7},
        "models": [{"name": "fake", "version": 7}],
    }


def test_defaults_and_a_whole_number_written_as_a_fraction(
    fake_client: TestClient, fake_backend: FakeBackend
) -> None:
    fake_client.post("/predict", json={"text": "a"})
    fake_client.post("/predict", json={"text": "b", "top_k": 7.0})
    assert fake_backend.queries == [Query("a", 5, False), Query("b", 7, False)]
    assert type(fake_backend.queries[1].top_k) is int


def test_duplicate_keys_last_one_wins(fake_client: TestClient, fake_backend: FakeBackend) -> None:
    # As in JavaScript and Python's json module.
    body = b'{"text": "the dog", "text": "the cat", "top_k": 1}'
    response = fake_client.post("/predict", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert fake_backend.queries == [Query("the cat", 1, False)]


@pytest.mark.parametrize(
    "bug",
    [RuntimeError("a bug, with internals the client must not see /srv/secret"),
     TimeoutError("a time-out inside the backend /srv/secret")],
    ids=["an error", "a time-out of its own"],
)  # fmt: skip
def test_a_bug_below_the_route_is_a_500_without_internals(
    fake_client: TestClient, fake_backend: FakeBackend, bug: Exception
) -> None:
    # A TimeoutError that is not the request's deadline is a bug too, not a 504.
    fake_backend.fails = bug
    response = fake_client.post("/predict", json={"text": "boom"})
    assert response.status_code == 500
    assert response.json() == INTERNAL_ERROR
    assert "secret" not in response.text


def test_no_answer_within_the_time_out_is_a_504_and_the_query_is_dropped(
    fake_client_for: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    fake_backend.stalls = True
    response = fake_client_for(predict_timeout_s=0.05).post("/predict", json={"text": "slow"})
    assert response.status_code == 504
    assert response.json() == {
        "error": "timeout",
        "message": "no answer within 0.05 s (NEXTWORD_PREDICT_TIMEOUT_S); retry later, or with "
        "a shorter text",
        "fields": [],
    }
    assert fake_backend.cancelled == [Query("slow", 5, False)]  # not left computing


# --- bad input: always a clean 4xx with the error body, never a 500, never the model ------------

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
CODES = {
    400: "bad_request",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [pytest.param(request, status, field, id=name) for name, request, status, field in BAD_INPUT],
)
def test_bad_input_is_a_clean_client_error(
    fake_client: TestClient,
    fake_backend: FakeBackend,
    request_: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    body = assert_client_error(fake_client.post("/predict", **request_), status, field)
    assert body["error"] == CODES[status]
    assert fake_backend.queries == []  # refused before the model


def test_wrong_method_and_path(fake_client: TestClient) -> None:
    wrong_method = fake_client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {
        "error": "method_not_allowed",
        "message": "Method Not Allowed",
        "fields": [],
    }
    nothing = fake_client.get("/nothing")
    assert nothing.status_code == 404
    assert nothing.json() == {"error": "not_found", "message": "Not Found", "fields": []}


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
    assert read == [600]  # the app never saw the chunk that went over
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
    # tests/e2e/test_serve_e2e.py for a real socket); past it, or unknown, it closes.
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


def test_openapi_documents_the_api(fake_client: TestClient) -> None:
    spec = fake_client.get("/openapi.json").json()
    assert spec["info"]["title"] == "nextword" and spec["info"]["description"]
    operation = spec["paths"]["/predict"]["post"]
    for status in ("400", "413", "415", "422", "503", "504"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["examples"][0]["text"]
    assert schemas["PredictResponse"]["examples"][0]["next_word"]
    assert schemas["PredictRequest"]["additionalProperties"] is False
    # The limit this server enforces, not the ceiling of the request model.
    assert schemas["PredictRequest"]["properties"]["text"]["maxLength"] == 10_000
    assert {"/health", "/ready", "/models", "/predict"} <= set(spec["paths"])


def test_the_documented_examples_are_valid(fake_client: TestClient) -> None:
    schemas = fake_client.get("/openapi.json").json()["components"]["schemas"]
    PredictResponse.model_validate(schemas["PredictResponse"]["examples"][0])
    example = schemas["PredictRequest"]["examples"][0]
    assert fake_client.post("/predict", json=example).status_code == 200


def test_docs_pages_use_no_cdn(fake_client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = fake_client.get(page).text
        assert "cdn" not in html and "fonts.googleapis" not in html
        # Every script, style sheet and icon comes from the app itself.
        assets = re.findall(r'(?:src|href)="(/static-offline-docs/[^"]+)"', html)
        assert assets
        for asset in assets:
            assert fake_client.get(asset).status_code == 200
