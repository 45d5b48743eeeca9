"""The word being typed at the end of a text, and how a suggestion is written into it."""

from __future__ import annotations

import pytest

from app.inference.words import Casing, casing_of, split_typed, starts_sentence, written
from app.tokenizer import PRESETS

RAW = PRESETS["raw"]  # lower case, punctuation split off words
PTB = PRESETS["ptb"]  # lower case, punctuation kept in words


@pytest.mark.parametrize(
    ("text", "context", "fragment", "stem"),
    [
        ("", "", None, ""),
        ("the cat ", "the cat ", None, ""),
        ("the cat\n", "the cat\n", None, ""),
        ("the cat\x00", "the cat\x00", None, ""),  # a control character reads as a space
        ("the c", "the ", "c", "c"),
        ("c", "", "c", "c"),
        ("the Ca", "the ", "Ca", "ca"),  # standardised as the tokenizer does: lower case
        ("the\x00ca", "the\x00", "ca", "ca"),
        ("the\u3000ca", "the\u3000", "ca", "ca"),  # any Unicode space
        ("a dog,c", "a dog ,", "dog,c", "c"),  # the words before the last join the context
    ],
)
def test_a_text_not_ending_in_whitespace_ends_in_the_word_being_typed(
    text: str, context: str, fragment: str | None, stem: str
) -> None:
    typed = split_typed(text, RAW)
    assert (typed.context, typed.fragment, typed.stem) == (context, fragment, stem)
    if fragment is None:
        assert typed.start == len(text)
    else:
        assert text[typed.start :] == fragment


def test_a_fragment_is_one_word_when_the_tokenizer_keeps_punctuation_in_words() -> None:
    typed = split_typed("the dog,c", PTB)
    assert (typed.context, typed.fragment, typed.stem) == ("the ", "dog,c", "dog,c")


def test_a_long_text_without_spaces_is_one_fragment() -> None:
    text = "x" * 100_000
    assert split_typed(text, RAW) == (("", text, text, 0))


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ("", True),
        ("the cat sat.\n", True),
        ("the cat sat\n", True),
        ("the cat sat. ", True),
        ("is it? ", True),
        ('he said "stop!" ', True),
        ("wow!) ", True),
        ("the cat ", False),
        ("the u.s. and ", False),
        ("3.5 ", False),
    ],
)
def test_a_sentence_starts_at_the_beginning_after_a_line_break_or_a_closing_mark(
    context: str, expected: bool
) -> None:
    assert starts_sentence(context) is expected


@pytest.mark.parametrize(
    ("fragment", "sentence_start", "casing"),
    [
        (None, True, Casing.FIRST),
        (None, False, Casing.AS_IS),
        ("ne", False, Casing.AS_IS),
        ("ne", True, Casing.FIRST),  # the start of a sentence is capitalised anyway
        ("Ne", False, Casing.FIRST),
        ("NE", False, Casing.ALL),
        ("N", False, Casing.FIRST),  # one capital: the first letter, not shouting
        ("N2", False, Casing.FIRST),
        ("12", False, Casing.AS_IS),
    ],
)
def test_the_casing_follows_the_fragment_and_the_sentence(
    fragment: str | None, sentence_start: bool, casing: Casing
) -> None:
    assert casing_of(fragment, sentence_start) is casing


def test_words_are_written_as_the_user_would_type_them() -> None:
    assert written("new", Casing.FIRST) == "New"
    assert written("new", Casing.ALL) == "NEW"
    assert written("new", Casing.AS_IS) == "new"
    assert written("i", Casing.AS_IS) == "I"
    assert written("it", Casing.AS_IS) == "it"
    assert written("i", Casing.MODEL) == "i"  # a cased model's word is its own
    assert written("iPhone", Casing.MODEL) == "iPhone"
