"""Keystroke savings (app.evaluation.keystrokes.simulate): the simulated user sees what the
service would show, and the figures can be checked by hand on a tiny vocabulary."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path

import pytest
from support.models import random_arrays, random_predictor

from app.cli import main
from app.evaluation.keystrokes import Tally, simulate
from app.inference.predictor import ModelInfo, Predictor, Query
from app.inference.weights import Architecture, weights_from_arrays
from app.tokenizer import PRESETS, Tokenizer

# Ranked as a trained vocabulary is (most frequent first): the baseline shows the lowest ids.
TINY_WORDS = ["the", "to", "a", "that", "then", "cat"]


def make_predictor(words: Sequence[str], seed: int = 0, number_bias: float = 0.0) -> Predictor:
    """A random model over `words`, read with the raw preset (lower-casing, like PTB's).
    `number_bias` raises the number token's score, when `words` has it."""
    vocabulary = ["<unk>", "<eos>", *words]
    size = len(vocabulary)
    arrays = random_arrays(size, 8, 8, tied=True, seed=seed, scale=1.5)
    if "N" in words:
        arrays["output.bias"][vocabulary.index("N")] += number_bias
    weights = weights_from_arrays(arrays, Architecture(size, 8, 8, tied=True))
    info = ModelInfo("keys", 1, Path("keys/1"), size, {"type": "simple_rnn"}, {})
    return Predictor(weights, Tokenizer(PRESETS["raw"], vocabulary), info)


@pytest.fixture(scope="module")
def tiny() -> Predictor:
    return make_predictor(TINY_WORDS)


# --- the reference: a slow user of the public API ---------------------------------------------


def slow_user(
    predictor: Predictor, lines: Sequence[str], suggestions: int
) -> tuple[Tally, list[int]]:
    """Type `lines` letter by letter, asking the predictor before each keystroke exactly what a
    client of /predict would send, and taking the word as soon as it is shown.

    Returns the tally and, for each word, the keystrokes it cost.
    """
    tally = Tally()
    costs: list[int] = []
    before = ""  # the lines already typed, each ended by its line break
    for line in lines:
        done: list[str] = []
        for word in line.split():
            cost = len(word) + 1  # typed in full, then a space
            passed: list[str] = []  # shown for this word and not taken
            for letters in range(len(word) + 1):
                # "w12 w7 " before a word is begun (next words), "w12 w7 w1" once it is.
                text = before + " ".join([*done, word[:letters]])
                [shown] = predictor.predict_batch(
                    [Query(text, top_k=suggestions, exclude=tuple(passed))]
                )
                # The service may capitalise a word (at a sentence start): the same word.
                if word in (offered.lower() for offered in shown.words):
                    cost = letters + 1  # the letters typed, then the suggestion taken
                    break
                passed += shown.words
            tally.pressed += cost
            tally.full += len(word) + 1
            tally.words += 1
            costs.append(cost)
            done.append(word)
        tally.pressed += 1  # the line break
        tally.full += 1
        before += line + "\n"
    return tally, costs


def lines_for(predictor: Predictor, count: int, seed: int) -> list[str]:
    """`count` words in lines of 3 to 6: half of them words the model likes after the text
    so far (so some are shown at once), half any word of the vocabulary."""
    rng = random.Random(seed)
    vocabulary = predictor.tokenizer.vocabulary[2:]
    lines: list[str] = []
    words: list[str] = []
    length = rng.randint(3, 6)
    while sum(len(line.split()) for line in lines) + len(words) < count:
        if rng.random() < 0.5:
            text = "".join(line + "\n" for line in lines) + "".join(w + " " for w in words)
            liked = [w.lower() for w in predictor.predict(text, top_k=6).words if w != "N"]
            words.append(rng.choice(liked))
        else:
            words.append(rng.choice([w for w in vocabulary if w != "N"]))
        if len(words) == length:
            lines.append(" ".join(words))
            words, length = [], rng.randint(3, 6)
    if words:
        lines.append(" ".join(words))
    return lines


@pytest.mark.parametrize("suggestions", [1, 3, 5])
def test_the_simulator_presses_what_a_user_of_the_service_would(suggestions: int) -> None:
    predictor = random_predictor(vocab=300)  # w2 ... w299: words of 2, 3 and 4 letters
    lines = lines_for(predictor, 30, seed=suggestions)
    expected, costs = slow_user(random_predictor(vocab=300), lines, suggestions)
    # The lines test every way a word is entered: shown before a letter is typed, shown
    # part-way through it, and typed in full.
    words = " ".join(lines).split()
    assert 1 in costs
    assert any(1 < cost <= len(word) for cost, word in zip(costs, words, strict=True))
    assert any(cost == len(word) + 1 for cost, word in zip(costs, words, strict=True))

    result = simulate(predictor, lines, suggestions)
    assert (result.model.pressed, result.model.full, result.model.words) == (
        expected.pressed,
        expected.full,
        expected.words,
    )


def test_an_unknown_word_among_known_ones_costs_its_own_letters() -> None:
    predictor = random_predictor(vocab=300)
    lines = [*lines_for(predictor, 12, seed=7), "w17 hippopotamus w203"]
    expected, _ = slow_user(random_predictor(vocab=300), lines, 3)
    result = simulate(predictor, lines, 3)
    assert (result.model.pressed, result.model.full) == (expected.pressed, expected.full)


def test_the_number_token_takes_a_slot_as_it_does_in_the_service() -> None:
    words = ["N", *(f"w{i}" for i in range(3, 40))]
    predictor = make_predictor(words, seed=1, number_bias=2.5)
    lines = lines_for(predictor, 30, seed=0)
    shows_number = any(
        "N" in predictor.predict(prefix + " ", top_k=3).words
        for line in lines
        for prefix in (" ".join(line.split()[:n]) for n in range(1, len(line.split())))
    )
    assert shows_number  # the service shows it after words of these lines
    expected, _ = slow_user(make_predictor(words, seed=1, number_bias=2.5), lines, 3)
    result = simulate(predictor, lines, 3)
    assert (result.model.pressed, result.model.full) == (expected.pressed, expected.full)


# --- figures by hand ------------------------------------------------------------------------


def test_with_every_word_shown_each_word_costs_one_key(tiny: Predictor) -> None:
    result = simulate(tiny, ["then the cat", "a that"], suggestions=len(TINY_WORDS))
    # Five words taken with one key each, and two line breaks; in full: "then the cat\na that\n".
    assert astuple(result.model) == (22, 7, 5, 0)
    assert result.model.savings == pytest.approx(1 - 7 / 22)


def test_the_baseline_shows_the_most_frequent_words_of_what_is_typed(tiny: Predictor) -> None:
    result = simulate(tiny, ["then the cat", "a that"], suggestions=2)
    # With two shown, the two lowest ids beginning with the letters typed:
    #   then   "" the to, "t" the to, "th" the that, "the" the then: taken   4 keys
    #   the    "" the to: taken                                            1
    #   cat    "" the to, "c" cat: taken                                   2
    #   (line break)                                                       1
    #   a      "" the to, "a" a: taken                                     2
    #   that   "" the to, "t" the to, "th" the that: taken                 3
    #   (line break)                                                       1
    assert astuple(result.baseline) == (22, 14, 5, 0)
    assert result.baseline.savings == pytest.approx(1 - 14 / 22)
    assert result.model.full == 22 and result.model.words == 5


def test_an_unknown_word_is_typed_in_full(tiny: Predictor) -> None:
    result = simulate(tiny, ["the dog"], suggestions=len(TINY_WORDS))
    # "the" taken at once; "dog" typed in full with its space; the line break.
    assert (result.model.full, result.model.pressed) == (4 + 4 + 1, 1 + 4 + 1)
    assert (result.baseline.full, result.baseline.pressed) == (9, 6)


@pytest.mark.parametrize(
    ("max_words", "same_as"),
    [
        (2, ["then the"]),
        (4, ["then the cat", "a"]),
        (5, ["then the cat", "a that"]),
        (50, ["then the cat", "a that", "cat"]),
    ],
)
def test_max_words_stops_after_that_many_words(
    tiny: Predictor, max_words: int, same_as: list[str]
) -> None:
    result = simulate(tiny, ["then the cat", "a that", "cat"], 2, max_words=max_words)
    # The same as typing only the words it allows (a line cut short still ends with its
    # line break), and nothing after them.
    assert result == simulate(tiny, same_as, 2)
    assert result.model.words == result.baseline.words == min(max_words, 6)


def test_a_blank_line_adds_nothing(tiny: Predictor) -> None:
    assert simulate(tiny, ["then the", "", "a cat"], 2) == simulate(tiny, ["then the", "a cat"], 2)


@pytest.mark.parametrize(
    ("suggestions", "phrase_words"), [(0, 0), (-1, 0), (3, 1), (3, -1), (1, 2)]
)
def test_bad_arguments_raise_value_error(
    tiny: Predictor, suggestions: int, phrase_words: int
) -> None:
    with pytest.raises(ValueError, match="suggestions must be 1 or more"):
        simulate(tiny, ["then the cat"], suggestions, phrase_words=phrase_words)


# --- the command line -------------------------------------------------------------------------


def exit_status(argv: list[str]) -> int:
    """`nextword ARGV`'s exit status (argparse's own errors exit rather than return)."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--suggestions", "0"], "--suggestions"),
        (["--suggestions", "21"], "--suggestions"),
        (["--phrases", "--phrase-words", "1"], "--phrase-words"),
        (["--phrases", "--phrase-words", "6"], "--phrase-words"),
        (["--phrases", "--suggestions", "1"], "suggestions"),
        (["--words", "0"], "--words"),
        (["--suggestions", "x"], "--suggestions"),
    ],
)
def test_the_command_refuses_bad_values_in_one_line(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the cat\n", encoding="utf-8")
    store = str(tmp_path / "store")  # never read: the values are checked first
    status = exit_status(["evaluate", str(text), "--keystrokes", *flags, "--store", store])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("nextword: error: ")
    assert named in err
