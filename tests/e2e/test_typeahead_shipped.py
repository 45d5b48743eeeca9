"""Type-ahead with the model this repository ships (model_store/ptb/3): completion of the word
being typed, capitals as a user writes them, phrases, blocked words never offered, one real HTTP
exchange through `nextword serve`, and the keystrokes its suggestions save on PTB's test text."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.models import REPO, SHARED_DATA, TinyModel
from support.server import Server, serving

from app.inference.blocklist import DEFAULT_BLOCKLIST, load_blocklist, read_blocklist
from app.inference.loading import load_predictor
from app.inference.predictor import Prediction, Predictor, Query

SHIPPED = TinyModel(REPO / "model_store", "ptb", 3)
LOSS = "the company said it expects to report a loss for the third "
PTB_TEST = SHARED_DATA / "ptb" / "test.txt"

pytestmark = pytest.mark.skipif(not SHIPPED.path.is_dir(), reason="model_store/ptb/3 is not here")


def load(blocklist_file: Path | None = None, shipped_list: bool = True) -> Predictor:
    blocklist = load_blocklist(blocklist_file) if shipped_list else None
    return load_predictor(SHIPPED.store, SHIPPED.name, SHIPPED.version, blocklist=blocklist)


@pytest.fixture(scope="module")
def served() -> Predictor:
    """As `nextword serve` loads it: the shipped blocklist, no list of the user's."""
    return load()


@pytest.fixture(scope="module")
def unblocked() -> Predictor:
    """No blocklist at all: what the model would offer."""
    return load(shipped_list=False)


@pytest.fixture(scope="module")
def no_quarter(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """The shipped list and a user's list (NEXTWORD_BLOCKLIST) that blocks `quarter`."""
    path = tmp_path_factory.mktemp("blocklist") / "mine.txt"
    path.write_text("# words this user never wants\nquarter\n", encoding="utf-8")
    return load(path)


def ask(predictor: Predictor, text: str, top_k: int = 5, phrase_words: int = 1) -> Prediction:
    [answer] = predictor.predict_batch([Query(text, top_k=top_k, phrase_words=phrase_words)])
    return answer


def words_of(answer: Prediction) -> set[str]:
    """Every word offered, alone or in a phrase, lower-cased."""
    return {w.lower() for w in answer.words} | {
        w.lower() for phrase in answer.phrases for w in phrase.words
    }


# --- completion and capitals --------------------------------------------------------------------


def test_the_word_being_typed_is_completed(served: Predictor) -> None:
    answer = ask(served, LOSS + "q")
    assert answer.words[0] == "quarter"
    assert answer.completing == "q"
    assert answer.tokens[-2:] == ("the", "third")  # the model reads the text before it


def test_a_completion_offers_only_words_that_begin_with_the_fragment(served: Predictor) -> None:
    answer = ask(served, "The cat sat on the m", top_k=100)
    assert len(answer.words) == 100
    assert all(word.startswith("m") for word in answer.words), answer.words
    assert answer.completing == "m"
    assert list(answer.probabilities) == sorted(answer.probabilities, reverse=True)
    # The sentence's capital is the user's; the model reads lower case.
    assert answer.tokens == ("<eos>", "the", "cat", "sat", "on", "the")


@pytest.mark.parametrize("text", ["", "the stock fell.\n", "the stock fell. "])
def test_the_first_word_of_a_sentence_is_capitalised(served: Predictor, text: str) -> None:
    answer = ask(served, text, phrase_words=2)
    assert answer.completing is None
    letters = [word for word in answer.words if word[0].isalpha()]
    assert len(letters) >= 4 and all(word[0].isupper() for word in letters), answer.words
    # A phrase's first word only: "The company", not "The Company".
    for phrase in answer.phrases:
        first, second = phrase.words
        assert first[0].isupper() or not first[0].isalpha()
        assert second == second.lower()
    # The tokens are the model's own, never capitalised.
    assert answer.tokens[0] == "<eos>" and all(t == t.lower() for t in answer.tokens)


def test_a_fragment_keeps_its_capitals(served: Predictor) -> None:
    first, every = ask(served, "Ne", top_k=10), ask(served, "NE", top_k=10)
    assert first.words[0] == "New" and every.words[0] == "NEW"
    assert all(w.startswith("Ne") and w[1:] == w[1:].lower() for w in first.words), first.words
    assert all(w.startswith("NE") and w == w.upper() for w in every.words), every.words
    # Written as typed, the same words and probabilities.
    assert [w.upper() for w in first.words] == list(every.words)
    assert first.probabilities == every.probabilities
    assert first.completing == "Ne" and every.completing == "NE"


def test_the_word_i_is_written_as_a_capital(served: Predictor) -> None:
    answer = ask(served, "he said i", top_k=10)
    assert "I" in answer.words and "i" not in answer.words
    assert [w for w in answer.words if w != "I"] == [w.lower() for w in answer.words if w != "I"]
    assert answer.tokens == ("<eos>", "he", "said")


# --- blocked words --------------------------------------------------------------------------------


def test_a_word_of_the_users_list_is_never_offered(
    served: Predictor, no_quarter: Predictor
) -> None:
    # Without the user's list, `quarter` is the word, and in the best phrase: first, or
    # after the word being typed.
    assert ask(served, LOSS + "q").words[0] == "quarter"
    assert ask(served, LOSS, top_k=10, phrase_words=2).phrases[0].words[0] == "quarter"
    best = ask(served, "a loss for the th", top_k=10, phrase_words=3).phrases[0]
    assert best.words[:2] == ("third", "quarter")
    # With it, neither as a word nor anywhere in a phrase.
    for text, phrase_words in [
        (LOSS + "q", 1),
        (LOSS + "q", 3),
        (LOSS + "quarter", 2),
        (LOSS, 2),
        ("a loss for the ", 2),
        ("a loss for the th", 3),
        ("a loss for the third ", 3),
    ]:
        answer = ask(no_quarter, text, top_k=20, phrase_words=phrase_words)
        assert "quarter" not in words_of(answer), (text, answer)
        assert answer.words, text  # other words are still offered


def test_the_rest_are_renormalised_without_the_blocked_word(
    served: Predictor, no_quarter: Predictor
) -> None:
    before, after = ask(served, LOSS, top_k=21), ask(no_quarter, LOSS, top_k=20)
    shown = dict(zip(before.words, before.probabilities, strict=True))
    assert before.words[0] == "quarter" and list(after.words) == list(before.words[1:])
    rest = 1 - shown["quarter"]
    for word, probability in zip(after.words, after.probabilities, strict=True):
        assert probability == pytest.approx(shown[word] / rest, rel=1e-4), word
    # A completion: over the other words that complete the fragment, in the same ratios.
    before, after = ask(served, LOSS + "q", top_k=100), ask(no_quarter, LOSS + "q", top_k=100)
    assert list(after.words) == [w for w in before.words if w != "quarter"]
    assert sum(after.probabilities) == pytest.approx(1, rel=1e-4)
    ratio = before.probabilities[1] / after.probabilities[0]
    for word, probability in zip(after.words, after.probabilities, strict=True):
        assert before.probabilities[before.words.index(word)] == pytest.approx(
            probability * ratio, rel=1e-4
        )


def test_the_shipped_list_blocks_the_ptb_words_it_names(
    served: Predictor, unblocked: Predictor
) -> None:
    vocabulary = set(served.tokenizer.vocabulary)
    blocked = read_blocklist(DEFAULT_BLOCKLIST).words & vocabulary
    assert {"sex", "sexual", "rape"} <= blocked
    for text, phrase_words in [
        ("charges of sex", 1),
        ("he was charged with se", 1),
        ("the victims of r", 2),
        ("the victims of ", 1),
    ]:
        # The model itself would offer them here...
        assert words_of(ask(unblocked, text, 30, phrase_words)) & blocked, text
        # ...the service never does.
        answer = ask(served, text, 30, phrase_words)
        assert not words_of(answer) & blocked, (text, answer)
    # Only blocked words begin with "sex": nothing is offered, and that is not an error.
    answer = ask(served, "charges of sex")
    assert answer.words == () and answer.completing == "sex"


def test_phrases_for_a_fragment_nothing_completes_are_none(served: Predictor) -> None:
    answer = ask(served, "charges of sex", phrase_words=2)
    assert (answer.words, answer.phrases, answer.completing) == ((), (), "sex")


# --- over real HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(SHIPPED, tmp_path_factory.mktemp("logs")) as server:
        yield server


def predict(server: Server, **body: Any) -> dict[str, Any]:
    response = httpx.post(server.url + "/predict", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.slow
def test_completion_and_phrases_over_http(server: Server) -> None:
    answer = predict(server, text=LOSS + "q", top_k=3)
    assert set(answer) == {
        "next_word", "predictions", "tokens", "unknown_words", "model", "completing",
    }  # fmt: skip
    assert answer["next_word"] == "quarter" == answer["predictions"][0]["word"]
    assert answer["completing"] == "q"
    assert all(p["word"].startswith("q") for p in answer["predictions"])
    assert answer["model"] == {"name": "ptb", "version": 3}

    answer = predict(server, text=LOSS, top_k=4, phrase_words=2)
    assert answer["completing"] is None
    phrases = answer["phrases"]
    assert len(phrases) == 4 and all(len(p["text"].split()) == 2 for p in phrases)
    assert phrases[0]["text"].startswith("quarter ")
    probabilities = [p["probability"] for p in phrases]
    assert probabilities == sorted(probabilities, reverse=True)
    # The product of each word's probability as /predict shows it.
    first, second = phrases[0]["text"].split()
    after = predict(server, text=f"{LOSS}{first} ", top_k=100)["predictions"]
    second_shown = {p["word"]: p["probability"] for p in after}[second]
    first_shown = {p["word"]: p["probability"] for p in answer["predictions"]}[first]
    assert probabilities[0] == pytest.approx(first_shown * second_shown, rel=1e-4)


# --- keystroke savings ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.skipif(not PTB_TEST.is_file(), reason="../shared/data/ptb/test.txt is not here")
def test_the_suggestions_save_keystrokes_over_a_dictionary_keyboard() -> None:
    command = [
        sys.executable, "-m", "app.cli", "evaluate", str(PTB_TEST), "--keystrokes",
        "--words", "2000", "--store", str(SHIPPED.store), "--name", SHIPPED.name,
        "--version", str(SHIPPED.version),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2,000 words, 3 suggestions" in done.stdout
    model = re.search(r"^keystroke savings (\d+\.\d) %$", done.stdout, re.MULTILINE)
    baseline = re.search(r"^baseline \(most frequent words\) (\d+\.\d) %$", done.stdout, re.M)
    assert model and baseline, done.stdout
    assert float(model[1]) >= float(baseline[1]) + 10, done.stdout


# --- the continuous cache ---------------------------------------------------------------------

# Rare names the text has used: the cache raises them, the model alone rates them low.
CACHE_TEXTS = [
    ("mr. trudeau said the plan would work . the government of mr. trudeau has asked for more "
     "time . critics of mr. trudeau say the plan is too costly . a spokesman for mr. ", "trudeau"),
    ("kidder peabody said it would cut jobs . the cuts at kidder will affect N people . kidder "
     "has lost money this year . a spokesman for ", "kidder"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("text", "word"), CACHE_TEXTS)
def test_a_rare_word_used_earlier_rises_into_the_top_5_with_the_cache(
    server: Server, text: str, word: str
) -> None:
    def rank(**more: Any) -> int | None:
        predictions = predict(server, text=text, top_k=20, **more)["predictions"]
        words = [p["word"].lower() for p in predictions]
        return words.index(word) + 1 if word in words else None

    with_cache, without = rank(), rank(continuous_cache=False)
    assert with_cache is not None and with_cache <= 5, (word, with_cache)
    assert without is None, (word, without)  # not even among the model's 20 likeliest
