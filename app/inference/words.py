"""The words a model may offer, and how each is written where it goes.

Which words. Never a blocked word; and when a word is being typed, only the words that begin
with it. A text that does not end in whitespace ends in the word the user is typing:

    "the cat sat on the m"   context "the cat sat on the "   fragment "m"
    "the cat sat on the "    context the whole text          no fragment: the next word

The model reads the context; the fragment narrows the next word to those that begin with it,
as the tokenizer standardises it ("Ne" is "ne" for a lower-casing model). Should the tokenizer
find more than one word in the fragment ("cat," with punctuation split), the ones before the
last are whole words: they join the context. Completion looks words up in the vocabulary sorted
as strings, where the words that begin with a stem are one run found by two binary searches:
the cost is the length of the run, never the size of the vocabulary.

How they are written. A lower-casing model only knows lower-case words; the word offered is
written as the user would type it: capitalised at the start of a sentence or as the fragment
is, and `i` as `I`.
"""

from __future__ import annotations

import enum
import re
from bisect import bisect_left
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from app.inference.blocklist import Blocklist
from app.tokenizer import TokenizerConfig, standardise

# What separates words for the tokenizer: whitespace, and control characters (read as spaces).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The end of a sentence before the next word: . ! or ? and any closing quotes or brackets.
_CLOSING = "\"'\u2019\u201d)]"
# Above every character: a word that begins with `stem` sorts before stem + _LAST.
_LAST = "\U0010ffff"

# --- which words -------------------------------------------------------------------------------


class WordChoices:
    """The words of one vocabulary that may be offered, and those that begin with a stem."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        first_word_id: int,
        blocklist: Blocklist | None = None,
        placeholders: Sequence[int] = (),
    ) -> None:
        size = len(vocabulary)
        blocked = np.zeros(size, dtype=bool)
        if blocklist is not None and len(blocklist):
            for id_ in range(first_word_id, size):
                blocked[id_] = blocklist.blocks_word(vocabulary[id_])
        self.blocklist = blocklist
        self.blocked = blocked  # (vocab,) mask
        self.blocked_ids = np.flatnonzero(blocked)
        # The special tokens are never a completion or a phrase's word, nor a placeholder such
        # as the number token (offered as a next word, it tells a number comes; it cannot be
        # written into a phrase, and no typed fragment reads as it but a number).
        self.offered = ~blocked
        self.offered[:first_word_id] = False
        self.offered[list(placeholders)] = False
        self.offered_ids = np.flatnonzero(self.offered)
        # What may come next: every word but the blocked, placeholders included.
        self.next_ids = first_word_id + np.flatnonzero(~blocked[first_word_id:])
        order = sorted(np.flatnonzero(self.offered).tolist(), key=vocabulary.__getitem__)
        self._sorted_words = [vocabulary[id_] for id_ in order]
        self._sorted_ids = np.array(order, dtype=np.intp)

    def completions(self, stem: str) -> np.ndarray:
        """The ids of the words offered that begin with `stem`, in id order (the tie rule of
        the service: equal probabilities, the lower id first)."""
        if not stem:
            return self.offered_ids
        low = bisect_left(self._sorted_words, stem)
        high = bisect_left(self._sorted_words, stem + _LAST, low)
        return np.sort(self._sorted_ids[low:high])

    def blocks_phrase(self, words: Sequence[str]) -> bool:
        """Whether a run of words holds a blocked entry of several words (single blocked words
        are never offered at all)."""
        return self.blocklist is not None and self.blocklist.blocks_phrase(words)


# --- the word being typed, and how a word is written ------------------------------------------


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
    # From the end only (a regular expression anchored at $ would scan the whole text).
    return last_line.rstrip(_CLOSING)[-1:] in (".", "!", "?")


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
