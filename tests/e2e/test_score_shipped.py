"""POST /score with the model this repository ships (model_store/ptb/3), served by `nextword
serve` over real HTTP: English reads as likelier than its words shuffled, and each token's
probability is the one /predict gives that word after the same text."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.models import REPO, TinyModel
from support.server import Server, serving

SHIPPED = TinyModel(REPO / "model_store", "ptb", 3)
SENTENCE = "the company said it expects to report a loss"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHIPPED.path.is_dir(), reason="model_store/ptb/3 is not here"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(SHIPPED, tmp_path_factory.mktemp("logs")) as server:
        yield server


def score(server: Server, text: str) -> dict[str, Any]:
    response = httpx.post(server.url + "/score", json={"text": text}, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_sentence_is_likelier_than_its_words_shuffled(server: Server) -> None:
    words = SENTENCE.split()
    shuffled = words[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != words
    ordered, mixed = score(server, SENTENCE), score(server, " ".join(shuffled))
    assert ordered["model"] == {"name": "ptb", "version": 3}
    assert ordered["perplexity"] < mixed["perplexity"]


def test_each_token_has_the_probability_predict_gives_it(server: Server) -> None:
    words = SENTENCE.split()
    tokens = score(server, SENTENCE)["tokens"]
    assert [item["token"] for item in tokens] == words
    for place, item in enumerate(tokens):
        # A trailing space: the text before the token, no word being typed. Each token here
        # is among the 100 likeliest words.
        prefix = " ".join(words[:place]) + " "
        answer = httpx.post(
            server.url + "/predict",
            json={"text": prefix, "top_k": 100, "include_special": True},
            timeout=10,
        ).json()
        # /predict may capitalise the first word of a sentence.
        offered = {p["word"].lower(): p["probability"] for p in answer["predictions"]}
        assert item["token"] in offered, prefix
        assert item["probability"] == pytest.approx(offered[item["token"]], rel=1e-4), prefix
