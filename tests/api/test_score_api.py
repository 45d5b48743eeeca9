"""POST /score as a client sees it: the answer, and the same limits and errors as /predict.

The trained tiny model answers where the numbers matter (`client`); a fake backend where only
the web layer is under test (`fake_client`, conftest.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from support.errors import assert_client_error
from support.fakes import FakeBackend

from app.api.scoring import ScoreResponse

JSON = {"content-type": "application/json"}
API_KEY = "score-api-key-0123456789"

slow = pytest.mark.slow  # serves the trained tiny model


def assert_no_word(response: Any) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert [field["field"] for field in body["fields"]] == ["text"]
    assert body["fields"][0]["type"] == "no_word"
    assert body["message"].startswith("text: has no word to score")


# --- answers from the trained model -------------------------------------------------------------


@slow
def test_score_reads_the_text_as_predict_and_scores_each_token(client: TestClient) -> None:
    text = "our neighbour watches the dragon\nthe cat"
    response = client.post("/score", json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    read = client.post("/predict", json={"text": text + " "}).json()["tokens"]
    assert read[1:] == ["our", "neighbour", "watches", "the", "<unk>", "<eos>", "the", "cat"]
    assert [item["token"] for item in body["tokens"]] == read[1:]  # nothing added at the end
    probabilities = [item["probability"] for item in body["tokens"]]
    assert all(0 < p <= 1 for p in probabilities)
    mean_loss = -sum(math.log(p) for p in probabilities) / len(probabilities)
    assert body["perplexity"] == pytest.approx(math.exp(mean_loss), rel=1e-6)
    assert body["model"] == {"name": "tiny", "version": 1}


@slow
def test_a_token_scores_what_predict_gives_it_after_the_same_text(client: TestClient) -> None:
    words = ["my", "friend", "helps", "a", "small", "boat"]
    tokens = client.post("/score", json={"text": " ".join(words)}).json()["tokens"]
    for place, item in enumerate(tokens):
        # A trailing space: the text before the token, no word being typed.
        prefix = " ".join(words[:place]) + " "
        answer = client.post(
            "/predict", json={"text": prefix, "top_k": 100, "include_special": True}
        ).json()
        offered = {p["word"].lower(): p["probability"] for p in answer["predictions"]}
        assert item["probability"] == pytest.approx(offered[item["token"]], rel=1e-4), prefix


@slow
def test_the_learned_order_scores_better_than_a_shuffle(client: TestClient) -> None:
    def perplexity(text: str) -> float:
        value: float = client.post("/score", json={"text": text}).json()["perplexity"]
        return value

    assert perplexity("the dog follows the ball at night") < perplexity(
        "ball the night follows dog at the"
    )


@slow
@pytest.mark.parametrize("text", ["", "   ", "\n", " \n\t \r\n "])
def test_a_text_with_no_word_is_refused_naming_text(client: TestClient, text: str) -> None:
    assert_no_word(client.post("/score", json={"text": text}))


# --- the web layer: what reaches the backend, and the errors ---------------------------------


def test_route_hands_the_text_over_and_writes_the_answer(
    fake_client: TestClient, fake_backend: FakeBackend
) -> None:
    response = fake_client.post("/score", json={"text": "a zebra"})
    assert response.status_code == 200
    assert response.json() == {
        "perplexity": 4.0,
        "tokens": [{"token": "b", "probability": 0.5}, {"token": "<unk>", "probability": 0.125}],
        "model": {"name": "fake", "version": 7},
    }
    assert fake_backend.scored == ["a zebra"]


def test_too_long_is_refused_as_predict_refuses_it(
    fake_client_for: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    client = fake_client_for(max_text_chars=20)
    scored = client.post("/score", json={"text": "a" * 21})
    predicted = client.post("/predict", json={"text": "a" * 21})
    assert scored.status_code == predicted.status_code == 422
    assert scored.json() == predicted.json()
    assert scored.json()["fields"][0]["field"] == "text"
    assert client.post("/score", json={"text": "a" * 20}).status_code == 200
    assert fake_backend.scored == ["a" * 20]


def test_no_answer_within_the_time_out_is_a_504(
    fake_client_for: Callable[..., TestClient], fake_backend: FakeBackend
) -> None:
    fake_backend.stalls = True
    response = fake_client_for(predict_timeout_s=0.05).post("/score", json={"text": "slow"})
    assert response.status_code == 504
    assert response.json()["error"] == "timeout"


def test_a_bug_below_the_route_is_a_500_without_internals(
    fake_client: TestClient, fake_backend: FakeBackend
) -> None:
    fake_backend.fails = RuntimeError("secret detail")
    response = fake_client.post("/score", json={"text": "boom"})
    assert response.status_code == 500
    assert "secret" not in response.text


def test_the_api_key_guards_score(fake_client_for: Callable[..., TestClient]) -> None:
    client = fake_client_for(api_key=SecretStr(API_KEY))
    assert client.post("/score", json={"text": "a"}).status_code == 401
    answer = client.post("/score", json={"text": "a"}, headers={"X-API-Key": API_KEY})
    assert answer.status_code == 200


BAD_INPUT: list[tuple[str, dict[str, Any], int, str | None]] = [
    # (id, request, status, field named in the answer)
    ("missing text", {"json": {}}, 422, "text"),
    ("unknown field", {"json": {"text": "a", "top_k": 3}}, 422, "top_k"),
    ("text a number", {"json": {"text": 5}}, 422, "text"),
    ("text a list", {"json": {"text": ["a"]}}, 422, "text"),
    ("text null", {"json": {"text": None}}, 422, "text"),
    ("text too long", {"json": {"text": "a" * 10_001}}, 422, "text"),
    ("empty text", {"json": {"text": ""}}, 422, "text"),
    ("body a list", {"json": ["text"]}, 422, "body"),
    ("not JSON", {"content": b"text=hello", "headers": JSON}, 422, "body"),
    ("UTF-16", {"content": '{"text": "a"}'.encode("utf-16"), "headers": JSON}, 400, None),
    ("plain text", {"content": b'{"text": "a"}', "headers": {"content-type": "text/plain"}},
     415, None),
    ("too large", {"content": b" " * 70_000, "headers": JSON}, 413, None),
]  # fmt: skip


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
    assert_client_error(fake_client.post("/score", **request_), status, field)
    assert fake_backend.scored in ([], [""])  # refused before the model (an empty text: by it)


def test_openapi_documents_score(fake_client_for: Callable[..., TestClient]) -> None:
    spec = fake_client_for(max_text_chars=500).get("/openapi.json").json()
    operation = spec["paths"]["/score"]["post"]
    assert operation["tags"] == ["prediction"]
    assert {"200", "400", "408", "413", "415", "422", "431", "503", "504"} <= set(
        operation["responses"]
    )
    text = spec["components"]["schemas"]["ScoreRequest"]["properties"]["text"]
    assert text["maxLength"] == 500  # the server's own limit
    assert spec["components"]["schemas"]["ScoreRequest"]["additionalProperties"] is False


def test_the_documented_examples_are_valid(fake_client: TestClient) -> None:
    schemas = fake_client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["ScoreRequest"]["examples"][0]
    assert fake_client.post("/score", json=request).status_code == 200
    example = ScoreResponse.model_validate(schemas["ScoreResponse"]["examples"][0])
    probabilities = [item.probability for item in example.tokens]
    assert [item.token for item in example.tokens] == request["text"].split()
    mean_loss = -sum(math.log(p) for p in probabilities) / len(probabilities)
    assert example.perplexity == pytest.approx(math.exp(mean_loss), rel=1e-6)
