"""Text as the model reads it, built as in training.

In training every corpus line is a sentence closed by <eos>, and the stream of lines is read
from a zero state:

    ""              ->  <eos>                      the first word of a sentence
    "the cat"       ->  <eos> the cat
    "the cat\\nit"   ->  <eos> the cat <eos> it     a line break ends a sentence
    "the cat\\n"     ->  <eos> the cat <eos>

Blank lines add nothing (training drops them), so <eos> never follows <eos> because of them.

Type-ahead sends the same text again with a word more. Words never span a space or a line
break, and neither of those changes under Unicode normalisation (NFC) or joins with the
characters either side of it, so the text before the last one reads the same on its own: it is
looked up in a TextCache, and only what follows it is tokenised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.inference.cache import Ids, TextCache
from app.tokenizer import Tokenizer, standardise

# The line breaks str.splitlines() knows, which is how the training corpus was cut into lines.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class Reading:
    """A text as the model reads it; tuples, so that the cache can share it."""

    ids: tuple[int, ...]  # always starts with <eos>
    tokens: tuple[str, ...]  # the words of `ids`, unknown words as the unknown token
    unknown_words: tuple[str, ...]  # the user's words (standardised) the model does not know


class TextReader:
    """Reads texts with one tokenizer, keeping up to `cache_size` of them (0: none)."""

    def __init__(self, tokenizer: Tokenizer, cache_size: int) -> None:
        self.tokenizer = tokenizer
        self._cache: TextCache[Reading] | None = TextCache(cache_size) if cache_size else None

    def read(self, text: str) -> Reading:
        if self._cache is None:
            return self._read(text)
        cut = max(text.rfind(" "), text.rfind("\n"))
        head = self._cache.get(text[:cut]) if cut > 0 else None
        reading = self._read(text) if head is None else self._read(text[cut:], after=head)
        self._cache.put(text, reading)  # the head of the next request, if typing goes on
        return reading

    def _read(self, text: str, after: Reading | None = None) -> Reading:
        """Read `text` alone, or as what follows the text read as `after`."""
        tokenizer = self.tokenizer
        ids = list(after.ids) if after else [tokenizer.end_id]
        unknown_words = list(after.unknown_words) if after else []
        for number, line in enumerate(_LINE_BREAK.split(text)):
            if number > 0 and ids[-1] != tokenizer.end_id:
                ids.append(tokenizer.end_id)
            line_ids = tokenizer.encode(line)
            if tokenizer.unknown_id in line_ids:
                # Standardise again only when there is something to report (encode maps the
                # standardised words one to one, so the two lists line up).
                words = standardise(line, tokenizer.config)
                unknown_words += [
                    word
                    for word, id_ in zip(words, line_ids, strict=True)
                    if id_ == tokenizer.unknown_id and word != tokenizer.config.unknown_token
                ]
            ids += line_ids
        known = after.tokens if after else ()
        tokens = known + tuple(tokenizer.decode(ids[len(known) :]))
        return Reading(Ids(ids), tokens, tuple(unknown_words))
