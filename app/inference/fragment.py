"""The word being typed, and how a suggestion is written where it goes.

A text that does not end in whitespace ends in the word the user is typing:

    "the cat sat on the m"   context "the cat sat on the "   fragment "m"
    "the cat sat on the "    context the whole text          no fragment: the next word

The model reads the context; the fragment narrows the next word to those that begin with it,
as the tokenizer standardises it ("Ne" is "ne" for a lower-casing model). Should the tokenizer
find more than one word in the fragment ("cat," with punctuation split), the ones before the
last are whole words: they join the context.

A lower-casing model only knows lower-case words; the word offered is written as the user
would type it: capitalised at the start of a sentence or as the fragment is, and `i` as `I`.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from app.tokenizer import TokenizerConfig, standardise

# What separates words for the tokenizer: whitespace, and control characters (read as spaces).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The end of a sentence before the next word: . ! or ? and any closing quotes or brackets.
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)\]]*$")


class Typed(NamedTuple):
    """A text split into what the model reads and the word being typed."""

    context: str  # the text the model reads
    fragment: str | None  # the word being typed, as typed; None after whitespace or ""
    stem: str  # the fragment as the tokenizer reads it: what candidates begin with
    start: int  # where the fragment starts in the text (its length when there is none)


def split_typed(text: str, config: TokenizerConfig) -> Typed:
    if not text or text[-1].isspace() or _CONTROL.match(text[-1]):
        return Typed(text, None, "", len(text))
    # rsplit runs in C from the end: the cost is the fragment's length, not the text's.
    fragment = text.rsplit(None, 1)[-1]
    fragment = _CONTROL.split(fragment)[-1]
    start = len(text) - len(fragment)
    words = standardise(fragment, config)
    context = text[:start]
    if len(words) > 1:
        context += " ".join(words[:-1])
    return Typed(context, fragment, words[-1] if words else "", start)


def starts_sentence(context: str) -> bool:
    """Whether the next word begins a sentence: nothing before it, or a line break, or
    a sentence's closing mark."""
    last_line = context.rstrip(" \t")
    if not last_line or last_line[-1] in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029":
        return True
    return _SENTENCE_END.search(last_line) is not None


class Casing(enum.Enum):
    MODEL = "the model's"  # a model that keeps case writes its words as it has them
    AS_IS = "as is"
    FIRST = "first letter"  # "New"
    ALL = "all letters"  # "NEW"


def casing_of(fragment: str | None, sentence_start: bool) -> Casing:
    """How the word is written: as the fragment shows ("NE": all capitals, "Ne": the first),
    and with a capital at the start of a sentence, however the fragment began."""
    letters = [ch for ch in fragment or "" if ch.isalpha()]
    if len(letters) > 1 and all(ch.isupper() for ch in letters):
        return Casing.ALL
    if sentence_start or (letters and letters[0].isupper()):
        return Casing.FIRST
    return Casing.AS_IS


def written(word: str, casing: Casing) -> str:
    """A lower-case word as it goes into the text."""
    if casing is Casing.MODEL:
        return word
    if casing is Casing.ALL:
        return word.upper()
    if casing is Casing.FIRST or word == "i":
        return word[:1].upper() + word[1:]
    return word
