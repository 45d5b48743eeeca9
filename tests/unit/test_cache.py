"""The type-ahead caches: same answers with and without them, bounded, one step per new word."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import numpy as np
import pytest
from app.inference.cache import BoundedLru, StateCache
from app.inference.reading import TextReader

from app.inference import cache, engine
from app.inference.predictor import InferenceOptions, ModelInfo, Prediction, Predictor
from app.tokenizer import PRESETS, Tokenizer

WORDS = ["the", "cat", "sees", "a", "dog", "n", "café", "don't", "state-of-the-art", "x"]


def make_predictor(cache_size: int, hidden: int = 6) -> Predictor:
    """A random model over a small vocabulary (the raw preset: punctuation split off)."""
    vocabulary = ["<unk>", "<eos>", *WORDS, ".", ",", "N", "'"]
    rng = np.random.default_rng(0)
    vocab = len(vocabulary)
    arrays = {
        "embedding": rng.normal(0, 0.5, (vocab, hidden)),
        "rnn.input_kernel": rng.normal(0, 0.5, (hidden, hidden)),
        "rnn.recurrent_kernel": rng.normal(0, 0.5, (hidden, hidden)),
        "rnn.bias": rng.normal(0, 0.5, hidden),
        "output.bias": rng.normal(0, 0.5, vocab),
    }
    architecture = engine.Architecture(vocab, hidden, hidden, tied=True)
    weights = engine.weights_from_arrays(
        {k: v.astype(np.float32) for k, v in arrays.items()}, architecture
    )
    info = ModelInfo("small", 1, Path("."), vocab, {}, {})
    options = InferenceOptions(cache_size=cache_size, blas_threads=None)
    return Predictor(weights, Tokenizer(PRESETS["raw"], vocabulary), info, options)


# Pieces a text is typed from: words, unknown words, numbers, punctuation, special tokens,
# line breaks of every kind, control characters, combining accents and odd spaces.
PIECES = [
    *WORDS, "The", "CAT", "zebra", "3.5", "1,000", "<unk>", "<eos>", "N", "dog.", "(a)",
    "e\u0301", "\u0301x", "cafe\u0301", "\x00", "\x07", "\t", "\u00a0", "\u2003", "😀",
    "\n", "\r\n", "\r", "\n\n", "\u2028", "\x1c", "  ",
]  # fmt: skip


def typed_texts(seed: int, words: int = 60) -> list[str]:
    """A text typed on: each request one piece (and often one separator) longer."""
    rng = random.Random(seed)
    text, texts = "", []
    for _ in range(words):
        text += rng.choice(["", " ", " ", " ", "\n", "  "]) + rng.choice(PIECES)
        texts.append(text)
        if rng.random() < 0.3:  # a word typed a letter at a time
            texts.append(text + " " + rng.choice(WORDS)[:2])
    return texts


@pytest.mark.parametrize("seed", range(6))
def test_text_reader_reads_a_text_typed_on_as_a_fresh_reader_would(seed: int) -> None:
    tokenizer = make_predictor(0).tokenizer
    cached, fresh = TextReader(tokenizer, cache_size=64), TextReader(tokenizer, cache_size=0)
    for text in typed_texts(seed):
        assert cached.read(text) == fresh.read(text), repr(text)


def test_predictions_are_identical_with_and_without_the_caches() -> None:
    with_cache, without = make_predictor(4096), make_predictor(0)
    texts = [t for seed in range(3) for t in typed_texts(seed, words=40)]
    texts += random.Random(9).sample(texts, len(texts))  # seen again, out of order
    for text in texts:
        expected = without.predict(text, top_k=4, include_special=True)
        assert with_cache.predict(text, top_k=4, include_special=True) == expected
        assert with_cache.state_for(expected.prefix.ids).tobytes() == (
            without.state_for(expected.prefix.ids).tobytes()
        )
    assert with_cache.stats()["cache"]["hits"] > len(texts) // 2


def test_async_predictions_in_batches_are_those_of_predict() -> None:
    predictor, reference = make_predictor(64), make_predictor(0)
    texts = typed_texts(1, words=80)

    async def all_at_once() -> list[object]:
        answers = await asyncio.gather(*(predictor.predict_async(t, 3) for t in texts))
        await predictor.aclose()
        return list(answers)

    assert asyncio.run(all_at_once()) == [reference.predict(t, 3) for t in texts]
    batching = predictor.stats()["batching"]
    assert batching["mean_batch_size"] > 1
    # Computed in the model process (its own caches), and still the very bits of `predict`.
    assert batching["worker_batches"] >= 1 and batching["model_process_forks"] == 1


def shape_for_test(prediction: Prediction, info: ModelInfo) -> tuple[str, int, list[str]]:
    # Module-level: a shape travels to the model process by name.
    return (info.name, os.getpid(), [word.word for word in prediction.words])


def test_shaped_predictions_are_made_in_the_model_process_from_those_of_predict() -> None:
    predictor, reference = make_predictor(64), make_predictor(0)
    texts = typed_texts(2, words=40)

    async def all_at_once() -> list[tuple[str, int, list[str]]]:
        shaped = predictor.predict_shaped_async
        answers = await asyncio.gather(*(shaped(t, 3, False, shape_for_test) for t in texts))
        await predictor.aclose()
        return list(answers)

    answers = asyncio.run(all_at_once())
    assert [words for _, _, words in answers] == [
        [word.word for word in reference.predict(t, 3).words] for t in texts
    ]
    assert {name for name, _, _ in answers} == {predictor.info.name}
    # Most were made in the model process: another process than this one.
    assert sum(pid != os.getpid() for _, pid, _ in answers) > len(texts) // 2


def test_a_long_text_read_from_scratch_lets_other_requests_through() -> None:
    predictor, reference = make_predictor(4096), make_predictor(0)
    text = " ".join(random.Random(3).choices(WORDS, k=1000))

    async def main() -> tuple[object, int]:
        turns = 0

        async def other_requests() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        task = asyncio.create_task(other_requests())
        answer = await predictor.predict_async(text)
        task.cancel()
        return answer, turns

    answer, turns = asyncio.run(main())
    assert answer == reference.predict(text)
    assert turns >= 1000 // 64  # a turn for the others every STEPS_PER_TURN steps


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts recurrent steps."""
    counted: list[int] = []
    step = engine.rnn_step

    def counting(*args: np.ndarray, **kwargs: np.ndarray) -> np.ndarray:
        counted.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(engine, "rnn_step", counting)
    return counted


def test_a_word_typed_on_costs_one_step_even_after_500_words(steps: list[int]) -> None:
    predictor = make_predictor(4096)
    steps.clear()  # loading probes the products with steps of its own
    text = " ".join(random.Random(0).choices(WORDS, k=500))
    predictor.predict(text)
    assert len(steps) == 501  # <eos> and 500 words, from scratch
    for word in ["cat", "sees", "a"]:
        steps.clear()
        text += " " + word
        predictor.predict(text)
        assert len(steps) == 1
    steps.clear()
    predictor.predict(text + " the dog sees")  # three words at once: from the longest prefix
    assert len(steps) == 3
    steps.clear()
    predictor.predict(text)  # the same text again: no step at all
    assert steps == []


def test_state_cache_finds_the_longest_stored_prefix() -> None:
    states = StateCache(max_entries=8)
    for ids in [(1,), (1, 2, 3), (1, 2, 3, 4, 5)]:
        states.store(ids, np.full(2, len(ids), np.float32), cache.chain_of(ids))
    assert states.lookup((1, 2, 3, 4, 5)).length == 5
    assert states.lookup((1, 2, 3, 4, 5, 6)).length == 5  # all but the last
    found = states.lookup((1, 2, 3, 4, 9, 9, 9))
    assert (found.length, found.state.tolist()) == (3, [3.0, 3.0])  # type: ignore[union-attr]
    assert found.chain == cache.chain_of((1, 2, 3))
    assert states.lookup((2, 1)).length == 0
    assert states.stats() == {
        "hits": 2, "partial_hits": 1, "misses": 1, "size": 3, "capacity": 8
    }  # fmt: skip
    with pytest.raises(ValueError):  # a stored state is shared: read-only
        states.lookup((1,)).state[0] = 0  # type: ignore[index]


def test_a_word_typed_on_after_a_line_break_is_found_without_hashing_the_whole_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = StateCache(max_entries=8)
    text = tuple(range(1, 1001))
    states.store(text, np.zeros(2, np.float32), cache.chain_of(text))
    hashed: list[int] = []
    step = cache.chain_step
    monkeypatch.setattr(cache, "chain_step", lambda *args: hashed.append(1) or step(*args))
    # "...\nword": <eos> and the word, two ids past the stored text; a mark split off: three.
    for more in [(1, 7), (1, 7, 8)]:
        assert states.lookup(text + more).length == 1000
    assert hashed == []  # no walk over the 1,000 ids' chain hashes
    assert states.stats()["hits"] == 2
    assert states.lookup((*text, 1, 7, 8, 9)).length == 1000  # four: found by the walk
    assert hashed and states.stats()["partial_hits"] == 1


def test_a_hash_collision_never_hands_out_another_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "chain_step", lambda previous, token: 7)  # every chain collides
    states = StateCache(max_entries=8)
    states.store((1, 2, 3), np.zeros(2, np.float32), 7)
    assert states.lookup((1, 5, 3, 4, 6)).length == 0  # the chain matches; the ids do not
    assert states.lookup((1, 2, 3, 4, 6)).length == 3


def test_caches_are_bounded_by_entries_and_by_key_size() -> None:
    lru: BoundedLru[tuple[int, ...], str] = BoundedLru(3, 10, len)
    for key in [(1,), (2,), (3,), (4,)]:
        lru.put(key, "v")
    assert (1,) not in lru and len(lru) == 3  # the least recently used went
    lru.get((2,))
    lru.put(tuple(range(8)), "long")  # weight 8: (3,) makes room; (2,) was just used
    assert (2,) in lru and (3,) not in lru and (4,) in lru and lru.weight == 10
    lru.put(tuple(range(11)), "too long")  # could never fit: not stored, nothing evicted
    assert len(lru) == 3 and lru.weight == 10

    states = StateCache(max_entries=2)
    for n in range(1, 6):
        states.store(tuple(range(n)), np.zeros(2, np.float32), cache.chain_of(range(n)))
    assert states.stats()["size"] == 2
    assert states.lookup((0, 1, 2, 3, 4)).length == 5 and states.lookup((0,)).length == 0


def test_cache_size_0_turns_the_caches_off(steps: list[int]) -> None:
    predictor = make_predictor(0)
    steps.clear()
    predictor.predict("the cat")
    predictor.predict("the cat sees")
    assert len(steps) == 3 + 4
    assert set(predictor.stats()["cache"].values()) == {0}
