"""The words a model may offer: completions of a stem, blocked words and placeholders."""

from __future__ import annotations

import random

import numpy as np

from app.inference.blocklist import Blocklist
from app.inference.words import WordChoices

FIRST_WORD_ID = 2


def vocabulary(seed: int = 0, size: int = 2_000) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdeé\u00dfz\U0001f600"
    words = {"".join(rng.choices(letters, k=rng.randint(1, 6))) for _ in range(size)}
    return ["<unk>", "<eos>", *sorted(words, key=lambda _: rng.random())]


def test_completions_are_exactly_the_words_that_begin_with_the_stem() -> None:
    words = vocabulary()
    choices = WordChoices(words, FIRST_WORD_ID)
    stems = ["", "a", "ab", "é", "\u00df", "\U0001f600", "zz", "abcdeabc", "<", "q"]
    stems += [word[:2] for word in words[2:50]]
    for stem in stems:
        expected = [i for i, word in enumerate(words) if i >= 2 and word.startswith(stem)]
        assert choices.completions(stem).tolist() == expected, stem


def test_blocked_words_and_placeholders_are_never_offered() -> None:
    words = ["<unk>", "<eos>", "the", "then", "thug", "N", "thud"]
    choices = WordChoices(words, FIRST_WORD_ID, Blocklist.from_entries(["THUG"]), [5])
    assert choices.completions("th").tolist() == [2, 3, 6]
    assert choices.completions("").tolist() == [2, 3, 6]
    assert choices.completions("N").tolist() == []
    assert choices.blocked_ids.tolist() == [4]
    assert not choices.offered[[0, 1, 4, 5]].any()


def test_a_phrase_is_blocked_by_an_entry_of_several_words() -> None:
    words = ["<unk>", "<eos>", "tied", "up", "down"]
    choices = WordChoices(words, FIRST_WORD_ID, Blocklist.from_entries(["tied up"]))
    assert choices.blocks_phrase(["tied", "up"])
    assert not choices.blocks_phrase(["tied", "down"])
    assert np.array_equal(choices.offered_ids, [2, 3, 4])  # each word alone is fine
    assert not WordChoices(words, FIRST_WORD_ID).blocks_phrase(["tied", "up"])
