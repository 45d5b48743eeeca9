"""POST /predict's type-ahead fields: `phrase_words` and `exclude` as requests send them, and
`completing` and `phrases` as answers carry them (over the trained tiny model)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from support.fakes import FakeBackend

from app.inference.predictor import Query

slow = pytest.mark.slow  # serves the trained tiny model

BASE = {"text": "the cat sees the "}
FIELDS = {"next_word", "predictions", "tokens", "unknown_words", "model", "completing"}


def assert_refused(response: Any, field: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert field in [item["field"] for item in body["fields"]], body
    assert body["message"].startswith(f"{field}:"), body


# --- requests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "more",
    [
        {"phrase_words": 0},
        {"phrase_words": 6},
        {"phrase_words": 9},
        {"phrase_words": "3"},
        {"phrase_words": 2.5},
        {"phrase_words": True},
        {"phrase_words": None},
        {"phrase_words": 3, "top_k": 50},
        {"phrase_words": 2, "top_k": 21},
    ],
)
def test_bad_phrase_words_are_refused(
    fake_client: TestClient, fake_backend: FakeBackend, more: dict[str, Any]
) -> None:
    assert_refused(fake_client.post("/predict", json={**BASE, **more}), "phrase_words")
    assert fake_backend.queries == []  # refused before the model


def test_phrases_limit_top_k_and_say_so(fake_client: TestClient) -> None:
    response = fake_client.post("/predict", json={**BASE, "top_k": 50, "phrase_words": 3})
    assert_refused(response, "phrase_words")
    assert "top_k must be at most 20" in response.json()["message"]


@pytest.mark.parametrize(
    "exclude",
    [
        [f"w{i}" for i in range(65)],
        ["the", "x" * 101],
        "the",
        {"the": 1},
        [1],
        None,
    ],
    ids=["65 words", "a word of 101 characters", "a string", "an object", "a number", "null"],
)
def test_bad_excludes_are_refused(
    fake_client: TestClient, fake_backend: FakeBackend, exclude: Any
) -> None:
    assert_refused(fake_client.post("/predict", json={**BASE, "exclude": exclude}), "exclude")
    assert fake_backend.queries == []


@pytest.mark.parametrize(
    ("more", "query"),
    [
        ({}, Query(BASE["text"], 5, False, 1, ())),
        ({"phrase_words": 5, "top_k": 20}, Query(BASE["text"], 20, False, 5, ())),
        ({"phrase_words": 2.0}, Query(BASE["text"], 5, False, 2, ())),
        ({"phrase_words": 1, "top_k": 100}, Query(BASE["text"], 100, False, 1, ())),
        (
            {"exclude": ["x" * 100] * 64},
            Query(BASE["text"], 5, False, 1, ("x" * 100,) * 64),
        ),
        ({"exclude": ["The", "cat"]}, Query(BASE["text"], 5, False, 1, ("The", "cat"))),
    ],
    ids=["defaults", "most words", "2.0 is 2", "top_k 100 alone", "most excluded", "excluded"],
)
def test_the_limits_themselves_are_accepted(
    fake_client: TestClient, fake_backend: FakeBackend, more: dict[str, Any], query: Query
) -> None:
    response = fake_client.post("/predict", json={**BASE, **more})
    assert response.status_code == 200, response.text
    assert fake_backend.queries == [query]


# --- answers, from the tiny model -----------------------------------------------------------------


def predict(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def shown(answer: dict[str, Any]) -> dict[str, float]:
    return {item["word"]: item["probability"] for item in answer["predictions"]}


@slow
def test_a_completion_offers_the_words_that_begin_with_the_fragment(client: TestClient) -> None:
    answer = predict(client, text="the cat sees the b", top_k=10)
    # Every word of the corpus that begins with "b", renormalised over them.
    assert set(shown(answer)) == {"ball", "bird", "boat"}
    assert sum(shown(answer).values()) == pytest.approx(1, rel=1e-5)
    assert answer["next_word"] == answer["predictions"][0]["word"]
    assert answer["completing"] == "b"
    assert answer["tokens"] == ["<eos>", "the", "cat", "sees", "the"]
    assert set(answer) == FIELDS  # no phrases unless asked


@slow
def test_a_completion_is_written_as_the_fragment_is(client: TestClient) -> None:
    lower = predict(client, text="the cat sees the b", top_k=10)
    upper = predict(client, text="the cat sees the B", top_k=10)
    assert [w.capitalize() for w in shown(lower)] == list(shown(upper))
    assert list(shown(lower).values()) == list(shown(upper).values())
    assert upper["completing"] == "B"
    assert upper["tokens"] == lower["tokens"]


@slow
def test_a_fragment_nothing_completes_is_answered_with_no_words(client: TestClient) -> None:
    answer = predict(client, text="the cat sees the zz")
    assert answer["predictions"] == [] and answer["next_word"] is None
    assert answer["completing"] == "zz"


@slow
def test_phrases_for_a_fragment_nothing_completes(client: TestClient) -> None:
    answer = predict(client, text="the cat sees the zz", phrase_words=2)
    assert answer["predictions"] == [] and answer["phrases"] == []


@slow
@pytest.mark.parametrize("text", ["", "the cat ", "the cat\n", "the cat\t"])
def test_after_whitespace_the_next_word_is_predicted(client: TestClient, text: str) -> None:
    answer = predict(client, text=text)
    assert "completing" in answer and answer["completing"] is None
    assert len(answer["predictions"]) == 5


@slow
@pytest.mark.parametrize(
    ("more", "phrases"),
    [({}, None), ({"phrase_words": 1}, None), ({"phrase_words": 2}, 2), ({"phrase_words": 4}, 4)],
)
def test_phrases_only_when_asked(
    client: TestClient, more: dict[str, Any], phrases: int | None
) -> None:
    answer = predict(client, text="the cat sees the ", top_k=3, **more)
    if phrases is None:
        assert set(answer) == FIELDS
        return
    assert set(answer) == FIELDS | {"phrases"}
    assert len(answer["phrases"]) == 3
    assert all(len(item["text"].split()) == phrases for item in answer["phrases"])
    probabilities = [item["probability"] for item in answer["phrases"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[-1] > 0 and probabilities[0] <= 1


@slow
@pytest.mark.parametrize("text", ["the cat sees the ", "the cat sees the b", "My friend "])
def test_a_phrase_is_as_likely_as_its_words_shown_one_by_one(client: TestClient, text: str) -> None:
    answer = predict(client, text=text, top_k=3, phrase_words=2)
    first_words = shown(predict(client, text=text, top_k=100))
    for phrase in answer["phrases"]:
        first, second = phrase["text"].split()
        after = shown(predict(client, text=f"{text.rsplit(' ', 1)[0]} {first} ", top_k=100))
        product = first_words[first] * after[second]
        assert phrase["probability"] == pytest.approx(product, rel=1e-4), phrase


@slow
def test_excluded_words_are_not_offered_and_keep_their_share(client: TestClient) -> None:
    before = shown(predict(client, text="the cat sees the ", top_k=4))
    passed = list(before)[:2]
    after = shown(predict(client, text="the cat sees the ", top_k=2, exclude=passed))
    assert list(after) == list(before)[2:]
    assert after == {word: before[word] for word in after}  # not renormalised
    # As typed or as shown: the word is the same to the tokenizer.
    completion = shown(predict(client, text="the cat sees the b", top_k=5, exclude=["Ball"]))
    assert set(completion) == {"bird", "boat"}


@slow
@pytest.mark.parametrize(
    "body",
    [
        {"text": "the cat sees the b", "top_k": 3},
        {"text": "The cat sees the ", "top_k": 3, "phrase_words": 3},
        {"text": "the cat sees the zz", "top_k": 3},
    ],
)
def test_the_body_matches_the_openapi_schema(client: TestClient, body: dict[str, Any]) -> None:
    answer = predict(client, **body)
    spec = client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/PredictResponse", "components": spec["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(answer)
    documented = spec["components"]["schemas"]["PredictResponse"]["properties"]
    asked = body.get("phrase_words", 1) > 1
    assert set(answer) == set(documented) - (set() if asked else {"phrases"})


def test_completing_and_phrases_are_documented(fake_client: TestClient) -> None:
    spec = fake_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    response = schemas["PredictResponse"]["properties"]
    assert "typed" in response["completing"]["description"]
    assert "phrase_words" in response["phrases"]["description"]
    assert set(schemas["PhraseProbability"]["required"]) == {"text", "probability"}
    request = schemas["PredictRequest"]["properties"]
    assert request["phrase_words"]["examples"] and request["exclude"]["examples"]
    assert "m`" in request["text"]["description"]  # `the cat sat on the m`


def test_the_response_examples_show_a_completion_and_phrases(fake_client: TestClient) -> None:
    schemas = fake_client.get("/openapi.json").json()["components"]["schemas"]
    examples = schemas["PredictResponse"]["examples"]
    assert any(example.get("completing") for example in examples)
    assert any(example.get("phrases") for example in examples)
    # Each is a body the service could send.
    schema = {"$ref": "#/components/schemas/PredictResponse", "components": {"schemas": schemas}}
    validator = jsonschema_rs.Draft202012Validator(schema)
    for example in examples:
        validator.validate(example)
        assert example["next_word"] == example["predictions"][0]["word"]
