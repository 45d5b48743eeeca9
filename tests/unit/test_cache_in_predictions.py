"""The continuous cache in predictions: the model's distribution mixed with one over the
request's own text, computed here from scratch step by step and compared with the answers."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from support.models import random_predictor

from app.inference import engine
from app.inference.blocklist import Blocklist
from app.inference.distribution import CacheSettings
from app.inference.predictor import Predictor, Query
from app.inference.reading import ReadingCache

SETTINGS = CacheSettings(size=50, theta=0.5, weight=0.3)


def with_cache(settings: CacheSettings = SETTINGS, cache_size: int = 4096) -> Predictor:
    predictor = random_predictor(vocab=60, cache_size=cache_size)
    predictor.info = dataclasses.replace(predictor.info, continuous_cache=settings)
    return predictor


def expected(predictor: Predictor, words: list[str], settings: CacheSettings) -> np.ndarray:
    """(1 - λ) p_model + λ p_cache after <eos> and `words`, in float64, from scratch."""
    ids = [1, *(predictor.tokenizer.id_of(word) or 0 for word in words)]
    states = [engine.run(predictor.weights, ids[: end + 1]) for end in range(len(ids))]
    scores = engine.logits(predictor.weights, states[-1][None, :])[0].astype(np.float64)
    model = np.exp(scores - scores.max())
    model /= model.sum()
    pairs = list(zip(states[:-1], ids[1:], strict=True))[-settings.size :]
    if not pairs:
        return model
    similarity = np.array([settings.theta * float(states[-1] @ h) for h, _ in pairs])
    weights = np.exp(similarity - similarity.max())
    cache = np.zeros_like(model)
    for weight, (_, next_id) in zip(weights / weights.sum(), pairs, strict=True):
        cache[next_id] += weight
    weight = settings.weight * len(pairs) / (len(pairs) + settings.ramp)  # λ n / (n + ramp)
    return (1 - weight) * model + weight * cache


def answer_distribution(predictor: Predictor, text: str, **options: object) -> dict[str, float]:
    answer = predictor.predict_batch([Query(text, 100, True, **options)])[0]  # type: ignore[arg-type]
    return dict(zip(answer.words, answer.probabilities, strict=True))


@pytest.mark.parametrize("ramp", [0.0, 20.0])
@pytest.mark.parametrize("length", [0, 1, 5, 80])  # 80 words: past the memory's 50 pairs
def test_predictions_are_the_model_mixed_with_the_cache_over_the_text(
    length: int, ramp: float
) -> None:
    settings = dataclasses.replace(SETTINGS, ramp=ramp)
    predictor = with_cache(settings)
    words = random.Random(length).choices(predictor.tokenizer.vocabulary[2:12], k=length)
    text = " ".join(words) + " "
    got = answer_distribution(predictor, text)
    mixed = expected(predictor, words, settings)
    vocabulary = predictor.tokenizer.vocabulary
    for word, probability in got.items():
        # (the first word of a text is written with a capital)
        assert probability == pytest.approx(
            mixed[vocabulary.index(word.lower())], rel=2e-3, abs=1e-7
        )


def test_a_word_of_the_text_rises_with_the_cache_and_not_without() -> None:
    predictor = with_cache(CacheSettings(size=50, theta=1.0, weight=0.5))
    text = "w50 w51 w52 w50 w51 w52 w50 w51 "
    on = answer_distribution(predictor, text)
    off = answer_distribution(predictor, text, continuous_cache=False)
    plain = answer_distribution(random_predictor(vocab=60), text)
    assert off == plain  # the request field turns it off: the model alone
    assert on["w52"] > 2 * off["w52"]


def test_a_text_typed_on_gets_the_answer_of_the_text_read_at_once() -> None:
    predictor, fresh = with_cache(), with_cache(cache_size=0)
    words = random.Random(7).choices(predictor.tokenizer.vocabulary[2:30], k=70)
    text = ""
    for word in words:
        text += word + " "
        typed, whole = answer_distribution(predictor, text), answer_distribution(fresh, text)
        assert typed.keys() == whole.keys()
        for key, value in whole.items():
            assert typed[key] == pytest.approx(value, rel=1e-3, abs=1e-7)
    assert predictor.cache.hits >= len(words) - 1


def test_a_completion_is_the_mixture_renormalised_over_its_candidates() -> None:
    predictor = with_cache()
    words = ["w12", "w13", "w14", "w12", "w13"]
    answer = predictor.predict("w12 w13 w14 w12 w13 w1", top_k=20)
    mixed = expected(predictor, words, SETTINGS)
    vocabulary = predictor.tokenizer.vocabulary
    candidates = [i for i, word in enumerate(vocabulary) if word.startswith("w1")]
    total = mixed[candidates].sum()
    for word, probability in zip(answer.words, answer.probabilities, strict=True):
        assert probability == pytest.approx(mixed[vocabulary.index(word)] / total, rel=2e-3)


def test_the_readings_kept_hold_a_bounded_number_of_pairs() -> None:
    predictor = with_cache(cache_size=4)  # 4 entries, 4 * PAIRS_PER_ENTRY pairs at most
    vocabulary = predictor.tokenizer.vocabulary
    for n in range(6):
        predictor.predict(" ".join(vocabulary[2 + n : 12 + n]) + " ")
        assert predictor.cache.pairs <= 4 * ReadingCache.PAIRS_PER_ENTRY
    assert len(predictor.cache) >= 1


def test_a_blocked_word_is_removed_from_the_mixture_and_the_rest_renormalised() -> None:
    settings = CacheSettings(size=50, theta=1.0, weight=0.5)
    free = with_cache(settings)
    blocking = random_predictor(vocab=60, blocklist=Blocklist.from_entries(["w52"]))
    blocking.info = dataclasses.replace(blocking.info, continuous_cache=settings)
    text = "w50 w51 w52 w50 w51 w52 w50 w51 "  # the cache favours w52, the blocked word
    unblocked = answer_distribution(free, text)
    blocked = answer_distribution(blocking, text)
    assert "w52" not in blocked
    share = 1 - unblocked["w52"]
    for word, probability in blocked.items():
        assert probability == pytest.approx(unblocked[word] / share, rel=1e-4)
    completing = blocking.predict(text + "w5", top_k=20)
    whole = {w: p for w, p in unblocked.items() if w.startswith("w5") and w != "w52"}
    for word, probability in zip(completing.words, completing.probabilities, strict=True):
        assert probability == pytest.approx(whole[word] / sum(whole.values()), rel=1e-4)


def test_a_phrase_has_the_probabilities_its_words_get_one_after_the_other() -> None:
    predictor = with_cache(CacheSettings(size=50, theta=1.0, weight=0.5))
    text = "w50 w51 w52 w50 w51 "
    for phrase in predictor.predict(text, 3, False, 3).phrases:
        probability, so_far = 1.0, text
        for word in phrase.words:
            shown = answer_distribution(predictor, so_far)
            probability *= shown[word]
            so_far += word + " "
        assert phrase.probability == pytest.approx(probability, rel=1e-3)
