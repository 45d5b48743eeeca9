"""Words the service must never suggest: a shipped list of offensive English words, plus the
user's own file (NEXTWORD_BLOCKLIST).

A blocklist file is UTF-8 text, one entry a line; blank lines and lines starting with `#` are
skipped. An entry of one word blocks that word; an entry of several words (`ball gag`) blocks
them only when they come in a row. Matching ignores case and Unicode normalisation, so a cased
model's "Fuck" and a lower-cased model's "fuck" are both blocked.
"""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

# Shipped beside this module (package data): the LDNOOBW English list; its header names the
# source, version and licence.
DEFAULT_BLOCKLIST = Path(__file__).with_name("blocklist-en.txt")
# A word list is kilobytes; a file this large was named by mistake (a corpus, a disk image).
MAX_BLOCKLIST_BYTES = 10 * 1024 * 1024  # 10 MB


class BlocklistError(ValueError):
    """A blocklist file that cannot be used; the one-line message names the file."""


def fold(word: str) -> str:
    """The form words are compared in: case folded and NFC.

    Decomposed first because case folding is only exact on decomposed text (Unicode's
    "canonical caseless match"); composed again so an "é" typed either way is one entry.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", word).casefold())


@dataclass(frozen=True)
class Blocklist:
    """Entries that may never be suggested, already folded (see `fold`)."""

    # Entries of one word.
    words: frozenset[str] = frozenset()
    # Entries of several words, each word folded: ("ball", "gag").
    phrases: frozenset[tuple[str, ...]] = frozenset()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> Blocklist:
        """A blocklist of entries as written in a file: whitespace separates the words of one."""
        words: set[str] = set()
        phrases: set[tuple[str, ...]] = set()
        for entry in entries:
            parts = tuple(fold(part) for part in entry.split())
            if len(parts) == 1:
                words.add(parts[0])
            elif parts:
                phrases.add(parts)
        return cls(frozenset(words), frozenset(phrases))

    def blocks_word(self, word: str) -> bool:
        """Whether `word` is a blocked single word, in any case."""
        return fold(word) in self.words

    def blocks_phrase(self, words: Sequence[str]) -> bool:
        """Whether any of `words` is blocked, or a blocked entry of several words appears as a
        contiguous run inside them (a context plus a candidate next word, say)."""
        folded = [fold(word) for word in words]
        if any(word in self.words for word in folded):
            return True
        return any(
            tuple(folded[start : start + length]) in self.phrases
            for length in self._phrase_lengths
            for start in range(len(folded) - length + 1)
        )

    @cached_property
    def _phrase_lengths(self) -> frozenset[int]:
        # Runs of only these lengths can match: a handful, so each check is a few set lookups
        # per word rather than one per entry.
        return frozenset(len(phrase) for phrase in self.phrases)

    def __len__(self) -> int:
        return len(self.words) + len(self.phrases)

    def union(self, other: Blocklist) -> Blocklist:
        """Every entry of both lists."""
        return Blocklist(self.words | other.words, self.phrases | other.phrases)


def read_blocklist(path: Path) -> Blocklist:
    """The entries of a blocklist file. Raises BlocklistError with a one-line message naming
    `path` if it is missing, not a regular file, larger than 10 MB, unreadable or not UTF-8."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BlocklistError(
            f"blocklist {path} is not UTF-8 text (byte {error.start} cannot be decoded)"
        ) from None
    # A byte-order mark, as some Windows editors write, is not part of the first entry.
    lines = (line.strip() for line in text.removeprefix("\ufeff").splitlines())
    return Blocklist.from_entries(line for line in lines if line and not line.startswith("#"))


def _read_bytes(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise BlocklistError(f"blocklist {path} does not exist") from None
    except OSError as error:
        raise BlocklistError(f"blocklist {path} cannot be read ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise BlocklistError(f"blocklist {path} is a directory, not a file")
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise BlocklistError(f"blocklist {path} is not a regular file")
    try:
        with path.open("rb") as file:
            # One byte past the limit tells a file at the limit from a larger one, without
            # reading all of a huge file (which may also have grown since it was looked at).
            data = file.read(MAX_BLOCKLIST_BYTES + 1)
    except OSError as error:
        raise BlocklistError(f"blocklist {path} cannot be read ({error.strerror})") from None
    if len(data) > MAX_BLOCKLIST_BYTES:
        raise BlocklistError(f"blocklist {path} is larger than 10 MB; is it the right file?")
    return data


def load_blocklist(extra: Path | None = None) -> Blocklist:
    """The shipped list, plus the entries of `extra` (NEXTWORD_BLOCKLIST) when given."""
    blocklist = read_blocklist(DEFAULT_BLOCKLIST)
    return blocklist if extra is None else blocklist.union(read_blocklist(extra))
