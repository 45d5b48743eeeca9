"""Word-level tokenizer shared by training and serving.

One implementation, saved with each model as JSON, so the same text gives the same ids when the
model is trained and when it is served.

Text is first *standardised* (lower-casing, punctuation, numbers: see `TokenizerConfig`), then split
on whitespace. Each line of a corpus is one sentence and ends with the sentence-end token. Words
outside the vocabulary become the unknown token. A corpus already in Penn Treebank form (lower
case, `<unk>`, `N` for numbers, one sentence a line) comes through unchanged with the `ptb` preset.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np

TOKENIZER_FORMAT = 1

Punctuation = Literal["keep", "split", "strip"]
Numbers = Literal["keep", "replace"]

# A token made only of digits and number punctuation: 42, 3.5, 1,000, 12:30, 1/2, -7, 5%.
_NUMBER = re.compile(r"[+-]?\d+(?:[.,:/]\d+)*%?")
# With punctuation="split": numbers, words (with inner apostrophes or hyphens) or single marks.
_WORD_OR_MARK = re.compile(r"\d+(?:[.,:/]\d+)*%?|[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]|_")
# The control characters: Unicode category Cc is exactly these 65, and is never extended.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TokenizerError(ValueError):
    """A tokenizer file or setting that cannot be used."""


@dataclass(frozen=True)
class TokenizerConfig:
    """How raw text becomes words. Saved with the model; never changed after training."""

    # Fold case so "The" and "the" share one entry (PTB is lower case; WikiText-2 keeps case).
    lowercase: bool = True
    # keep: split on whitespace only (corpora that are already tokenised, such as PTB and
    # WikiText-2); split: cut punctuation marks off words as tokens of their own (raw text);
    # strip: drop punctuation marks (raw text, when marks should not be predicted).
    punctuation: Punctuation = "keep"
    # keep: numbers are words like any other; replace: every number becomes `number_token`.
    numbers: Numbers = "replace"
    number_token: str = "N"
    unknown_token: str = "<unk>"
    end_token: str = "<eos>"

    def __post_init__(self) -> None:
        if self.punctuation not in ("keep", "split", "strip"):
            raise TokenizerError(
                f"punctuation must be keep, split or strip, not {self.punctuation!r}"
            )
        if self.numbers not in ("keep", "replace"):
            raise TokenizerError(f"numbers must be keep or replace, not {self.numbers!r}")
        for name in ("number_token", "unknown_token", "end_token"):
            value = getattr(self, name)
            if not value or any(ch.isspace() for ch in value):
                raise TokenizerError(f"{name} must be a non-empty word without spaces")
        if self.unknown_token == self.end_token:
            raise TokenizerError("unknown_token and end_token must differ")


PRESETS: dict[str, TokenizerConfig] = {
    # Penn Treebank (Mikolov): lower case, already tokenised, numbers already `N`.
    "ptb": TokenizerConfig(lowercase=True, punctuation="keep", numbers="replace"),
    # WikiText-2: tokenised, case and punctuation kept, numbers kept as words.
    "wikitext": TokenizerConfig(lowercase=False, punctuation="keep", numbers="keep"),
    # Your own raw text: lower case, punctuation marks as tokens, numbers folded to `N`.
    "raw": TokenizerConfig(lowercase=True, punctuation="split", numbers="replace"),
}


def standardise(text: str, config: TokenizerConfig) -> list[str]:
    """Turn one line of text into words (no vocabulary lookup, no sentence-end token)."""
    # NFC so that the same visible text gives the same words however it was typed; control
    # characters (NUL included) become spaces so they can never reach the vocabulary.
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)  # one regex pass, not a category look-up a character
    words: list[str] = []
    words_of = _chunk_reader(config)
    for chunk in text.split():
        words += words_of(chunk)
    return words


@functools.lru_cache(maxsize=16)
def _chunk_reader(config: TokenizerConfig) -> Callable[[str], tuple[str, ...]]:
    """`_chunk_words` for one config, keeping its answers in a bounded cache of its own (16,384
    chunks): words recur (Zipf), so most chunks of a request were split before. One cache per
    config, not one keyed by (chunk, config): the config (a dataclass, hashed in Python) is then
    hashed once a text, not once a chunk."""
    return functools.lru_cache(maxsize=1 << 14)(functools.partial(_chunk_words, config=config))


def _chunk_words(chunk: str, config: TokenizerConfig) -> tuple[str, ...]:
    """The words of one whitespace-free chunk of standardised text."""
    if _is_special(chunk, config):
        return (chunk,)
    if config.lowercase:
        lowered = chunk.lower()  # always a new string, even when nothing changed
        # A chunk already in lower case (most are) is kept as itself: its entry in the cache
        # then holds one string, not two equal ones.
        chunk = chunk if lowered == chunk else lowered
    if config.punctuation == "keep" or (
        config.numbers == "replace" and _NUMBER.fullmatch(chunk)  # "3.5" stays one number
    ):
        pieces = [chunk]
    else:
        pieces = _WORD_OR_MARK.findall(chunk)
        if config.punctuation == "strip":
            pieces = [p for p in pieces if not _is_mark(p)]
    if config.numbers == "replace":
        return tuple(config.number_token if _NUMBER.fullmatch(p) else p for p in pieces)
    return tuple(pieces)


def _is_special(chunk: str, config: TokenizerConfig) -> bool:
    # Kept as they are, before lower-casing: PTB's number token is a capital N.
    if config.numbers == "replace" and chunk == config.number_token:
        return True
    return chunk in (config.unknown_token, config.end_token)


def _is_mark(piece: str) -> bool:
    return all(unicodedata.category(ch).startswith(("P", "S")) for ch in piece)


@dataclass
class Tokenizer:
    """Standardisation settings plus a vocabulary; maps text to ids and back.

    Ids 0 and 1 are always the unknown and sentence-end tokens; the rest are words by
    falling training frequency, ties broken alphabetically, so a vocabulary is deterministic.
    """

    config: TokenizerConfig
    vocabulary: list[str]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vocabulary[:2] != [self.config.unknown_token, self.config.end_token]:
            raise TokenizerError("vocabulary must start with the unknown and sentence-end tokens")
        self._index = {word: i for i, word in enumerate(self.vocabulary)}
        if len(self._index) != len(self.vocabulary):
            raise TokenizerError("vocabulary has duplicate words")

    unknown_id = 0
    end_id = 1

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    @classmethod
    def build(
        cls,
        lines: Iterable[str],
        config: TokenizerConfig,
        max_size: int | None = None,
        min_count: int = 1,
    ) -> Tokenizer:
        """Build the vocabulary from training lines only (max_size counts the special tokens)."""
        if max_size is not None and max_size < 3:
            raise TokenizerError("max vocabulary size must be at least 3")
        if min_count < 1:
            raise TokenizerError("min count must be at least 1")
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(standardise(line, config))
        specials = [config.unknown_token, config.end_token]
        for token in specials:
            counts.pop(token, None)
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            ranked = ranked[: max_size - len(specials)]
        return cls(config, specials + ranked)

    def words(self, text: str) -> list[str]:
        """Words of one line as the model sees them: unknown words become the unknown token."""
        return [w if w in self._index else self.config.unknown_token for w in self._raw(text)]

    def encode(self, text: str, end_of_line: bool = False) -> list[int]:
        """Ids of one line; with end_of_line, followed by the sentence-end id."""
        ids = [self._index.get(w, self.unknown_id) for w in self._raw(text)]
        if end_of_line:
            ids.append(self.end_id)
        return ids

    def encode_lines(self, lines: Iterable[str]) -> np.ndarray:
        """One contiguous id stream for a corpus: every line closed by the sentence-end id."""
        ids: list[int] = []
        for line in lines:
            ids.extend(self.encode(line, end_of_line=True))
        return np.asarray(ids, dtype=np.int32)

    def id_of(self, word: str) -> int | None:
        """The id of a word of the vocabulary (None if it is not one)."""
        return self._index.get(word)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.vocabulary[i] for i in ids]

    def _raw(self, text: str) -> list[str]:
        return standardise(text, self.config)

    # --- persistence -------------------------------------------------------------------------

    def to_json(self) -> str:
        payload = {
            "format": TOKENIZER_FORMAT,
            "config": asdict(self.config),
            "vocabulary": self.vocabulary,
        }
        return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Raises TokenizerError (one line) for anything but a tokenizer written by `to_json`."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise TokenizerError(f"not a nextword tokenizer file ({error})") from None
        except RecursionError:  # arrays or objects nested thousands deep
            raise TokenizerError("not a nextword tokenizer file (nested too deep)") from None
        if not isinstance(payload, dict):
            raise TokenizerError(
                f"not a nextword tokenizer file (a JSON {type(payload).__name__}, not an object)"
            )
        found = payload.get("format")
        if type(found) is not int or found != TOKENIZER_FORMAT:  # true and 1.0 are == 1 too
            raise TokenizerError(f"tokenizer format {found!r} is not {TOKENIZER_FORMAT}")
        settings = payload.get("config")
        if not isinstance(settings, dict):
            raise TokenizerError("tokenizer config must be an object of settings")
        kinds = {f.name: type(f.default) for f in fields(TokenizerConfig)}  # bool or str
        for key, value in settings.items():
            if key not in kinds:
                raise TokenizerError(f"tokenizer config has an unknown setting {key!r}")
            # bool, not an int (True == 1); str, not a list (a config must be hashable).
            if type(value) is not kinds[key]:
                raise TokenizerError(
                    f"tokenizer config {key!r} must be a {kinds[key].__name__}, "
                    f"not {type(value).__name__}"
                )
        config = TokenizerConfig(**settings)  # its own checks raise TokenizerError
        vocabulary = payload.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise TokenizerError("tokenizer vocabulary must be a list of words")
        return cls(config, vocabulary)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        return cls.from_json(path.read_text(encoding="utf-8"))
