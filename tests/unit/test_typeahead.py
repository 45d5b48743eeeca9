"""Type-ahead with a small model: completions, phrases, blocked and excluded words, capitals.

Every answer is checked against the model's own distribution, computed here step by step with
the engine: a completion's probabilities are the model's renormalised over its candidates, a
blocked word's share goes to the others in proportion, and a phrase's probability is the
product of its words'.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from support.models import random_arrays

from app.inference import engine
from app.inference.blocklist import Blocklist
from app.inference.predictor import FIRST_WORD_ID, ModelInfo, Predictor, Query
from app.inference.weights import Architecture, weights_from_arrays
from app.tokenizer import PRESETS, Tokenizer

WORDS = ["<unk>", "<eos>", "the", "then", "there", "cat", "car", "i", "new", "news", "N", "bad"]


def make(blocked: tuple[str, ...] = (), preset: str = "raw", cache_size: int = 64) -> Predictor:
    vocab = len(WORDS)
    arrays = random_arrays(vocab, 8, 8, seed=3, scale=1.5)
    weights = weights_from_arrays(arrays, Architecture(vocab, 8, 8, True))
    info = ModelInfo("small", 1, Path("small/1"), vocab, {}, {})
    blocklist = Blocklist.from_entries(blocked) if blocked else None
    return Predictor(weights, Tokenizer(PRESETS[preset], WORDS), info, cache_size, blocklist)


def shown(id_: int) -> str:
    return "I" if WORDS[id_] == "i" else WORDS[id_]  # as a user writes it


def distribution(predictor: Predictor, words: list[str]) -> np.ndarray:
    """The model's next-word probabilities (float64) after <eos> and `words`."""
    ids = [1, *(WORDS.index(word) for word in words)]
    state = engine.run(predictor.weights, ids)
    scores = engine.logits(predictor.weights, state[None, :])[0].astype(np.float64)
    probabilities = np.exp(scores - scores.max())
    return probabilities / probabilities.sum()


def test_a_fragment_is_completed_by_the_words_that_begin_with_it() -> None:
    predictor = make()
    answer = predictor.predict("the c", top_k=5)
    model = distribution(predictor, ["the"])
    candidates = [WORDS.index("cat"), WORDS.index("car")]
    expected = sorted(candidates, key=lambda id_: -model[id_])
    assert answer.completing == "c"
    assert answer.words == tuple(WORDS[id_] for id_ in expected)
    total = model[candidates].sum()
    np.testing.assert_allclose(answer.probabilities, model[expected] / total, rtol=1e-4)
    assert answer.tokens == ("<eos>", "the")  # the fragment is not read


def test_after_whitespace_the_next_word_is_predicted() -> None:
    predictor = make()
    answer = predictor.predict("the ", top_k=20)
    model = distribution(predictor, ["the"])
    assert answer.completing is None
    expected = [i for i in np.argsort(-model, kind="stable") if i >= FIRST_WORD_ID]
    assert answer.words == tuple(shown(i) for i in expected)
    np.testing.assert_allclose(answer.probabilities, model[expected], rtol=1e-4)


def test_a_fragment_no_word_begins_with_gets_no_words_and_no_error() -> None:
    answer = make().predict("the xyz")
    assert (answer.words, answer.probabilities, answer.completing) == ((), (), "xyz")


def test_a_blocked_word_is_never_offered_and_the_rest_share_its_probability() -> None:
    free, blocking = make(), make(blocked=("CAT",))
    for text in ["the ", "the c", "the ca", "cat "]:
        unblocked = free.predict(text, top_k=len(WORDS), include_special=True)
        answer = blocking.predict(text, top_k=8, include_special=True)
        assert "cat" not in answer.words
        model = dict(zip(unblocked.words, unblocked.probabilities, strict=True))
        kept = [(w, p) for w, p in model.items() if w != "cat"]
        share = 1 - model.get("cat", 0.0)
        assert answer.words == tuple(w for w, _ in kept[:8])
        np.testing.assert_allclose(
            answer.probabilities, [p / share for _, p in kept[:8]], rtol=1e-4
        )
        for phrase in blocking.predict(text, 10, False, 3).phrases:
            assert "cat" not in phrase.words


def test_two_word_phrases_are_the_most_likely_pairs() -> None:
    predictor = make()
    # top_k 10 makes the beam as wide as the words offered: the search is then exhaustive.
    answer = predictor.predict("the ", 10, False, 2)
    offered = [i for i, w in enumerate(WORDS) if i >= FIRST_WORD_ID and w != "N"]
    first = distribution(predictor, ["the"])
    pairs = {
        (a, b): first[a] * distribution(predictor, ["the", WORDS[a]])[b]
        for a, b in itertools.product(offered, offered)
    }
    best = sorted(pairs, key=lambda pair: -pairs[pair])[:10]
    assert [p.words for p in answer.phrases] == [(shown(a), shown(b)) for a, b in best]
    np.testing.assert_allclose(
        [p.probability for p in answer.phrases], [pairs[pair] for pair in best], rtol=1e-4
    )


def test_the_text_after_a_phrase_is_taken_costs_the_steps_of_one_word() -> None:
    predictor, reference = make(), make(cache_size=0)
    phrase = predictor.predict("the cat ", 3, False, 3).phrases[0]
    misses = predictor.cache.misses
    taken = "the cat " + " ".join(phrase.words) + " "
    assert predictor.predict(taken) == reference.predict(taken)
    assert predictor.cache.misses == misses  # its head was kept with the phrase


def test_excluded_words_are_not_shown_and_keep_their_probabilities() -> None:
    predictor = make()
    full = predictor.predict("the ", top_k=6)
    answer = predictor.predict_batch([Query("the ", 4, exclude=full.words[:2])])[0]
    assert answer.words == full.words[2:6]
    assert answer.probabilities == full.probabilities[2:6]
    completing = predictor.predict_batch([Query("the c", 5, exclude=("CAT",))])[0]
    assert completing.words == ("car",)


@pytest.mark.parametrize(
    ("text", "first_letters"),
    [("", "upper"), ("the cat sat.\n", "upper"), ("bad. ", "upper"), ("the ", "lower")],
)
def test_a_sentence_start_is_capitalised(text: str, first_letters: str) -> None:
    answer = make().predict(text, top_k=8)
    words = [w for w in answer.words if w not in ("N", "i", "I")]
    assert words and all(getattr(w[0], "is" + first_letters)() for w in words)
    assert all(token == token.lower() or token == "N" for token in answer.tokens)


def test_a_fragment_keeps_the_capitals_it_was_typed_with_and_i_is_always_a_capital() -> None:
    predictor = make()
    assert set(predictor.predict("the Ne").words) == {"New", "News"}
    assert set(predictor.predict("the NE").words) == {"NEW", "NEWS"}
    assert predictor.predict("the i").words == ("I",)
    assert "I" in predictor.predict("the ", top_k=10).words


def test_a_model_that_keeps_case_writes_its_words_as_they_are() -> None:
    predictor = make(preset="wikitext")
    assert set(predictor.predict("").words) <= set(WORDS)
    assert predictor.predict("the i").words == ("i",)
