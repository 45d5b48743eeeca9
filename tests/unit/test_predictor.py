"""The Predictor: how it reads texts, what it answers, its reading cache, and loading a model."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.answers import assert_same_answer
from support.models import TinyModel, random_arrays, train_tiny

from app import store
from app.inference import engine
from app.inference.loading import load_predictor, probe
from app.inference.predictor import ModelInfo, Predictor, Query, Reading, ReadingCache
from app.inference.weights import Architecture, weights_from_arrays
from app.store import ModelStoreError
from app.tokenizer import PRESETS, Tokenizer

WORDS = ["the", "cat", "sees", "a", "dog", "n", "café", "don't", "state-of-the-art", "x"]
VOCABULARY = ["<unk>", "<eos>", *WORDS, ".", ",", "N", "'"]


def make_predictor(cache_size: int = 4096, hidden: int = 6, seed: int = 0) -> Predictor:
    """A random model over VOCABULARY, read with the raw preset (punctuation split off)."""
    vocab = len(VOCABULARY)
    arrays = random_arrays(vocab, hidden, hidden, tied=True, seed=seed)
    weights = weights_from_arrays(arrays, Architecture(vocab, hidden, hidden, tied=True))
    info = ModelInfo("small", 1, Path("small/1"), vocab, {"type": "simple_rnn"}, {})
    return Predictor(weights, Tokenizer(PRESETS["raw"], VOCABULARY), info, cache_size)


@pytest.fixture(scope="module")
def small() -> Predictor:
    return make_predictor()


def distribution(predictor: Predictor, text: str) -> np.ndarray:
    """The model's probabilities for the word after `text`, over the whole vocabulary."""
    state = engine.run(predictor.weights, predictor.read(text).ids)
    probabilities: np.ndarray = engine.softmax(engine.logits(predictor.weights, state[None]))[0]
    return probabilities


# --- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", ["<eos>"]),
        ("The cat", ["<eos>", "the", "cat"]),
        ("the cat\nsees", ["<eos>", "the", "cat", "<eos>", "sees"]),
        ("the cat\r\n", ["<eos>", "the", "cat", "<eos>"]),
        ("the\rcat\u2028a\x85dog", ["<eos>", "the", "<eos>", "cat", "<eos>", "a", "<eos>", "dog"]),
        ("the\n\n\n cat", ["<eos>", "the", "<eos>", "cat"]),  # blank lines are no sentences
        ("\nthe", ["<eos>", "the"]),  # a break at the start: already a sentence start
        ("\n\n", ["<eos>"]),
        ("the <eos> cat\n", ["<eos>", "the", "<eos>", "cat", "<eos>"]),
        ("a dog. don't", ["<eos>", "a", "dog", ".", "don't"]),
        ("the\x00cat\u0007 😀", ["<eos>", "the", "cat", "<unk>"]),  # control characters: spaces
        ("cafe\u0301 CAFÉ", ["<eos>", "café", "café"]),  # one word however it was typed
    ],
)
def test_a_text_is_read_as_in_training(small: Predictor, text: str, tokens: list[str]) -> None:
    reading = small.read(text)
    assert reading.tokens == tuple(tokens)
    assert reading.ids == tuple(VOCABULARY.index(token) for token in tokens)
    # The next word after it (a text not ending in whitespace ends in a word being typed).
    assert small.predict(text + " ").tokens == tuple(tokens)


def test_unknown_words_are_reported_standardised(small: Predictor) -> None:
    text = "The Dragon sees\nthe UNICORN <unk> dragon "
    answer = small.predict(text)
    assert answer.tokens == (
        "<eos>", "the", "<unk>", "sees", "<eos>", "the", "<unk>", "<unk>", "<unk>"
    )  # fmt: skip
    # Lower-cased, in order, repeats kept; a typed <unk> is not a word of the user's.
    assert answer.unknown_words == ("dragon", "unicorn", "dragon")
    assert small.read(text).unknown_words == answer.unknown_words


# --- predictions --------------------------------------------------------------------------------


def test_predictions_leave_out_the_special_tokens_unless_asked(small: Predictor) -> None:
    every_word = small.predict("the cat ", top_k=100)
    assert set(every_word.words) == set(VOCABULARY[2:])  # top_k above the vocabulary: all
    everything = small.predict("the cat ", top_k=100, include_special=True)
    assert set(everything.words) == set(VOCABULARY)
    assert [w for w in everything.words if w not in ("<unk>", "<eos>")] == list(every_word.words)


def test_probabilities_are_the_models_own_over_the_whole_vocabulary(small: Predictor) -> None:
    full = distribution(small, "the cat sees ")
    answer = small.predict("the cat sees ", top_k=3)
    best = [i for i in np.argsort(-full, kind="stable") if i >= 2][:3]
    assert answer.words == tuple(VOCABULARY[i] for i in best)
    assert answer.probabilities == pytest.approx([full[i] for i in best], rel=1e-6)
    assert list(answer.probabilities) == sorted(answer.probabilities, reverse=True)
    # Not renormalised over the words returned, nor over the words without <unk> and <eos>.
    everything = small.predict("the cat sees ", top_k=len(VOCABULARY), include_special=True)
    assert sum(everything.probabilities) == pytest.approx(1.0, abs=1e-5)
    words_only = small.predict("the cat sees ", top_k=len(VOCABULARY))
    assert sum(words_only.probabilities) == pytest.approx(1 - full[0] - full[1], abs=1e-5)
    assert sum(answer.probabilities) < 1 - 1e-3


def test_the_same_question_gets_the_same_answer(small: Predictor) -> None:
    first = small.predict("the dog sees a ", top_k=4)
    assert small.predict("the dog sees a ", top_k=4) == first
    assert make_predictor(cache_size=0).predict("the dog sees a ", top_k=4) == first


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_below_1_is_refused(small: Predictor, top_k: int) -> None:
    with pytest.raises(ValueError, match="top_k"):
        small.predict("the cat", top_k=top_k)
    with pytest.raises(ValueError, match="top_k"):
        small.predict_batch([Query("the cat"), Query("a dog", top_k=top_k)])


def test_a_batch_answers_each_query_as_asked(small: Predictor) -> None:
    queries = [Query("the cat ", 2), Query("", 1, True), Query("a dog\nthe ", 5), Query("x ", 3)]
    answers = small.predict_batch(queries)
    assert [len(answer.words) for answer in answers] == [2, 1, 5, 3]
    for query, answer in zip(queries, answers, strict=True):
        assert_same_answer(answer, small.predict(*query))


# --- the reading cache --------------------------------------------------------------------------

# Pieces a text is typed from: words, unknown words, numbers, punctuation, special tokens,
# line breaks of every kind, control characters, combining accents and odd spaces.
PIECES = [
    *WORDS, "The", "CAT", "zebra", "3.5", "1,000", "<unk>", "<eos>", "N", "dog.", "(a)",
    "e\u0301", "\u0301x", "cafe\u0301", "\x00", "\x07", "\t", "\u00a0", "\u2003", "😀",
    "\n", "\r\n", "\r", "\n\n", "\u2028", "\x1c", "  ",
]  # fmt: skip


def typed_texts(seed: int, words: int = 60) -> list[tuple[str, str]]:
    """A text typed on: each request one piece (and often one separator) longer, asking for
    the word after it. Each request comes with what the model reads of it: the request itself,
    or, for a word being typed at its end, the text before that word."""
    rng = random.Random(seed)
    text, texts = "", []
    for _ in range(words):
        text += rng.choice(["", " ", " ", " ", "\n", "  ", "\r"]) + rng.choice(PIECES)
        texts.append((text + " ", text + " "))
        if rng.random() < 0.3:  # a word typed a letter at a time
            texts.append((text + " " + rng.choice(WORDS)[:2], text + " "))
    return texts


def _read(reading: Reading) -> tuple[object, ...]:
    return reading.ids, reading.tokens, reading.unknown_words


@pytest.mark.parametrize("seed", range(6))
def test_a_text_typed_on_reads_as_a_fresh_read_of_it(seed: int) -> None:
    typed, fresh = make_predictor(cache_size=64), make_predictor(cache_size=0)
    texts = typed_texts(seed)
    for text, read in texts:
        answer = typed.predict(text, top_k=3)
        assert _read(typed.read(text)) == _read(fresh.read(text)), repr(text)
        expected = fresh.read(read)
        assert (answer.tokens, answer.unknown_words) == _read(expected)[1:], repr(text)
    assert typed.cache.hits >= len(texts) // 2  # most were read on from a kept head


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The recurrent steps taken: for each call of engine.run_batch, its sequences' length."""
    taken: list[int] = []
    run_batch = engine.run_batch

    def counting(
        weights: engine.RnnWeights,
        sequences: Sequence[Sequence[int]],
        states: np.ndarray,
        steps: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        taken.append(sum(len(ids) for ids in sequences))
        return run_batch(weights, sequences, states, steps)

    monkeypatch.setattr(engine, "run_batch", counting)
    return taken


def test_a_word_typed_on_steps_only_that_word_even_after_500(steps: list[int]) -> None:
    predictor, fresh = make_predictor(), make_predictor(cache_size=0)
    text = " ".join(random.Random(0).choices(WORDS, k=500)) + " "
    predictor.predict(text)
    assert steps == [501]  # <eos> and 500 words, from scratch
    for more, new_ids in [("cat ", 1), ("sees ", 1), ("\nthe ", 2), ("dog. ", 2), ("x ", 1)]:
        steps.clear()
        text += more
        answer = predictor.predict(text)
        assert steps == [new_ids], repr(more)
        assert_same_answer(answer, fresh.predict(text))
    steps.clear()
    # A word typed a letter at a time: the text before it is kept, then the word is stepped.
    predictor.predict(text + "ca")
    predictor.predict(text + "cat")
    predictor.predict(text + "cat ")
    assert steps == [0, 0, 1]
    steps.clear()
    predictor.predict(text)  # the same text again: no step at all
    assert steps == [0]


def test_cache_size_0_turns_the_cache_off(steps: list[int]) -> None:
    predictor = make_predictor(cache_size=0)
    predictor.predict("the cat ")
    predictor.predict("the cat sees ")
    predictor.predict("the cat sees ")
    assert steps == [3, 4, 4]
    assert len(predictor.cache) == 0 and predictor.cache.hits == 0


def test_the_reading_cache_is_bounded_by_entries() -> None:
    cache = ReadingCache(max_entries=3)
    reading = Reading((1,), ("<eos>",), ())
    for text in ["a", "b", "c", "d"]:
        cache.put(text, reading)
    assert len(cache) == 3 and cache.get("a") is None  # the least recently used went
    assert cache.get("b") is reading  # used: now the most recent
    cache.put("e", reading)
    assert cache.get("b") is reading and cache.get("c") is None
    assert cache.chars == len("bde")


def test_the_reading_cache_is_bounded_by_characters() -> None:
    cache = ReadingCache(max_entries=3)  # at most 3 x 256 = 768 characters
    reading = Reading((1,), ("<eos>",), ())
    cache.put("a" * 400, reading)
    cache.put("b" * 300, reading)
    assert len(cache) == 2 and cache.chars == 700
    cache.put("c" * 100, reading)  # 800 characters: the oldest goes, though 3 entries fit
    assert cache.get("a" * 400) is None and len(cache) == 2 and cache.chars == 400
    cache.put("d" * 769, reading)  # could never fit: not kept, and nothing dropped for it
    assert cache.get("d" * 769) is None and len(cache) == 2 and cache.chars == 400
    cache.put("b" * 300, reading)  # put again: counted once
    assert len(cache) == 2 and cache.chars == 400


def test_a_predictor_keeps_its_most_recent_texts(steps: list[int]) -> None:
    predictor = make_predictor(cache_size=2)
    texts = ["the cat ", "a dog ", "x x x ", "sees n "]
    for text in texts:
        predictor.predict(text)
    assert len(predictor.cache) == 2
    steps.clear()
    for text in reversed(texts):
        predictor.predict(text)
    assert steps == [0, 0, 3, 3]  # the last two kept, the first two read again


# --- loading a model ----------------------------------------------------------------------------


def publish_random(model_store: Path, tied: bool = True, embed: int = 6) -> Path:
    """A version of a random model over VOCABULARY, published as training would."""
    vocab, hidden = len(VOCABULARY), 6

    def write(folder: Path) -> dict[str, Any]:
        save_file(random_arrays(vocab, embed, hidden, tied), folder / store.WEIGHTS)
        Tokenizer(PRESETS["raw"], VOCABULARY).save(folder / store.TOKENIZER)
        architecture = dict(type="simple_rnn", vocab_size=vocab, embedding_dim=embed,
                            hidden_units=hidden, tied=tied)  # fmt: skip
        return {"architecture": architecture, "metrics": {"perplexity": 12.5}}

    return store.publish(model_store, "small", write).path


def _rewrite(path: Path, name: str, content: bytes) -> None:
    """Replace one file of a version and fix its sha256, as a careless copy might."""
    (path / name).write_bytes(content)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"][name] = store.sha256_file(path / name)
    (path / store.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("tied", "embed"), [(True, 6), (True, 4), (False, 6)],
                         ids=["tied", "projected", "untied"])  # fmt: skip
def test_a_loaded_model_answers_as_its_arrays_do(tmp_path: Path, tied: bool, embed: int) -> None:
    path = publish_random(tmp_path, tied, embed)
    predictor = load_predictor(tmp_path, "small", "latest", cache_size=7)
    probe(predictor)
    info = predictor.info
    assert (info.name, info.version, info.path, info.vocabulary_size) == ("small", 1, path, 16)
    assert info.architecture["tied"] is tied and info.metrics == {"perplexity": 12.5}
    assert predictor.cache.max_entries == 7
    arrays = store.load_weights(path)
    weights = weights_from_arrays(arrays, Architecture(len(VOCABULARY), embed, 6, tied))
    built = Predictor(weights, Tokenizer(PRESETS["raw"], VOCABULARY), info)
    assert_same_answer(predictor.predict("the cat ", 5), built.predict("the cat ", 5))


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    path = publish_random(tmp_path)
    arrays = store.load_weights(path)
    arrays["rnn.bias"] = np.zeros(3, np.float32)
    save_file(arrays, path / store.WEIGHTS)
    _rewrite(path, store.WEIGHTS, (path / store.WEIGHTS).read_bytes())
    with pytest.raises(ModelStoreError, match=r"weights\.safetensors does not fit .*'rnn\.bias'"):
        load_predictor(tmp_path, "small")


def test_a_tokenizer_of_another_model_is_refused(tmp_path: Path) -> None:
    path = publish_random(tmp_path)
    smaller = Tokenizer(PRESETS["raw"], VOCABULARY[:-1])
    _rewrite(path, store.TOKENIZER, smaller.to_json().encode())
    with pytest.raises(
        ModelStoreError, match=r"tokenizer\.json has 15 words but the weights have 16"
    ):
        load_predictor(tmp_path, "small")


def test_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    path = publish_random(tmp_path)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["architecture"]["type"] = "transformer"
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match=r"manifest\.json: architecture type 'transformer'"):
        load_predictor(tmp_path, "small")


def test_a_missing_version_is_refused(tmp_path: Path) -> None:
    publish_random(tmp_path)
    with pytest.raises(ModelStoreError, match=r"small/2 does not exist"):
        load_predictor(tmp_path, "small", 2)


def test_the_probe_refuses_weights_that_compute_nonsense(small: Predictor) -> None:
    # Finite weights are checked at load; this stands for whatever else could go wrong.
    nan_bias = np.full(len(VOCABULARY), np.nan, np.float32)
    broken = Predictor(replace(small.weights, output_bias=nan_bias), small.tokenizer, small.info)
    with pytest.raises(ModelStoreError, match=r"probe prediction gave a probability of nan"):
        probe(broken)
    probe(small)


# --- trained models -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_trained_model_learned_the_pattern(tiny_model: TinyModel) -> None:
    predictor = load_predictor(tiny_model.store, tiny_model.name, tiny_model.version)
    # The corpus (support.models.patterned_lines): subject, verb, object, place. Objects are
    # "the ball", "a tree", "the river", "the old house", "a small boat".
    assert set(predictor.predict("the cat sees the ", top_k=3).words) == {"ball", "river", "old"}
    assert predictor.predict("the dog watches a ").words[0] in {"tree", "small"}
    assert predictor.predict("our neighbour helps the old ").words[0] == "house"
    assert predictor.predict("my friend likes ").words[0] in {"the", "a"}
    # A sentence's first word, capitalised as the user would type it.
    assert predictor.predict("").words[0] in {"The", "A", "My", "Our"}


@pytest.fixture(scope="module")
def variants(
    tiny_model: TinyModel, corpus_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TinyModel]:
    """The three output layers: tied (E = H), tied with a projection (E != H), untied. The two
    trained here go to a store of their own: the shared tiny model's store is read by tests
    that expect it to hold that model alone."""
    own = tmp_path_factory.mktemp("variants")
    return {
        "tied": tiny_model,
        "projected": train_tiny(corpus_file, own, "projected", hidden_units=24, epochs=1),
        "untied": train_tiny(corpus_file, own, "untied", tied=False, epochs=1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tied", "projected", "untied"])
def test_the_numpy_engine_matches_keras(variants: dict[str, TinyModel], variant: str) -> None:
    import keras

    import app.training.model  # noqa: F401  (registers the custom layer for loading)

    model_files = variants[variant]
    predictor = load_predictor(model_files.store, model_files.name, model_files.version)
    architecture = predictor.info.architecture
    assert architecture["tied"] == (variant != "untied")
    assert ("projection.kernel" in store.load_weights(model_files.path)) == (variant == "projected")
    keras_model = keras.saving.load_model(model_files.path / store.KERAS_MODEL)
    hidden = architecture["hidden_units"]
    texts = [
        "",
        "the cat ",
        "my friend likes a dragon ",
        "the dog sees a tree\nour neighbour helps ",
    ]
    for text in texts:
        ids = predictor.read(text).ids
        scores, _ = keras_model(
            [np.array([ids], dtype=np.int32), np.zeros((1, hidden), np.float32)], training=False
        )
        expected = _softmax64(keras.ops.convert_to_numpy(scores)[0, -1])
        np.testing.assert_allclose(
            distribution(predictor, text), expected, atol=1e-5, err_msg=f"text {text!r}"
        )
        answer = predictor.predict(text, top_k=5, include_special=True)
        vocabulary = predictor.tokenizer.vocabulary
        # (Words are written as the user would type them: "The" after "", a sentence start.)
        expected_best = [expected[vocabulary.index(word.lower())] for word in answer.words]
        np.testing.assert_allclose(answer.probabilities, expected_best, atol=1e-5)


def _softmax64(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores.astype(np.float64) - scores.max())
    probabilities: np.ndarray = exp / exp.sum()
    return probabilities
