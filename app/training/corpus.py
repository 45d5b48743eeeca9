"""Corpus input: text files -> lines -> one id stream per split -> batches for truncated BPTT.

Files are read a line at a time, never whole: a corpus may be larger than memory (see
app.training.stream for the ids on disk).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """A corpus that cannot be trained on; the message names the file."""


def iter_lines(path: Path) -> Iterator[str]:
    """The non-blank lines of a UTF-8 text file, read a line at a time (memory does not grow
    with the file), refusing missing, non-UTF-8 and empty files.

    Lines are cut as str.splitlines() cuts them: the file is read up to each b"\n" (a byte
    that never occurs inside a UTF-8 sequence) and each piece split again.
    """
    if not path.exists():
        raise CorpusError(f"corpus file {path} does not exist")
    if not path.is_file():
        raise CorpusError(f"corpus file {path} is not a regular file")
    offset = 0
    empty = True
    with path.open("rb") as handle:
        for raw in handle:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(
                    f"corpus file {path} is not UTF-8 (bad byte at offset "
                    f"{offset + error.start}): convert it, e.g. with `iconv -t utf-8`"
                ) from None
            offset += len(raw)
            for line in text.splitlines():
                if line.strip():
                    empty = False
                    yield line
    if empty:
        raise CorpusError(f"corpus file {path} is empty")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, refusing missing, non-UTF-8 and empty files."""
    return list(iter_lines(path))


@dataclass(frozen=True)
class Part:
    """Lines `first` to `stop` (0-based, non-blank lines only; stop None: to the end) of a file."""

    path: Path
    first: int = 0
    stop: int | None = None

    def lines(self) -> Iterator[str]:
        return itertools.islice(iter_lines(self.path), self.first, self.stop)


@dataclass(frozen=True)
class Splits:
    train: Part
    valid: Part
    test: Part | None
    # Where each split came from, for the manifest.
    sources: dict[str, str]


def plan_splits(
    train: Path, valid: Path | None = None, test: Path | None = None, holdout: float = 0.05
) -> Splits:
    """Where train/valid/test are: their own files, or valid and test cut from the end of one
    training file (one pass counts its lines; no split is read into memory here).

    The cut is by whole lines and contiguous (train, then valid, then test), so it is the same on
    every run and each split is running text, as truncated BPTT and perplexity expect.
    """
    if valid is not None:
        for path in (train, valid, test):
            if path is not None:
                next(iter_lines(path))  # refuse a missing or empty file before any long pass
        return Splits(
            Part(train),
            Part(valid),
            Part(test) if test is not None else None,
            {"train": str(train), "valid": str(valid), "test": str(test) if test else ""},
        )
    if test is not None:
        raise CorpusError("a test file needs a validation file too (or give neither)")
    if not 0.0 < holdout < 0.5:
        raise CorpusError(f"holdout must be between 0 and 0.5, not {holdout}")
    count = sum(1 for _ in iter_lines(train))
    held = max(1, round(count * holdout))
    if count < 2 * held + 1:
        raise CorpusError(
            f"corpus file {train} has {count} lines: too few to hold out "
            "validation and test lines; give --valid and --test files or more text"
        )
    cut = count - 2 * held
    description = f"{train} lines"
    return Splits(
        Part(train, 0, cut),
        Part(train, cut, cut + held),
        Part(train, cut + held),
        {
            "train": f"{description} 1-{cut}",
            "valid": f"{description} {cut + 1}-{cut + held}",
            "test": f"{description} {cut + held + 1}-{count}",
        },
    )


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut one id stream into `batch_size` contiguous streams: (batch, steps).

    Row b continues where its previous window stopped, so the recurrent state can be carried
    from window to window. The few tokens that do not fill a row are dropped.
    """
    steps = len(ids) // batch_size
    return ids[: steps * batch_size].reshape(batch_size, steps)


def windows(streams: np.ndarray, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows of `bptt` steps over the streams; targets are shifted by one.

    Every window has the full length, so the training step is traced once.
    """
    steps = streams.shape[1] - 1
    for start in range(0, steps - bptt + 1, bptt):
        yield streams[:, start : start + bptt], streams[:, start + 1 : start + 1 + bptt]


def window_count(streams: np.ndarray, bptt: int) -> int:
    return max(0, (streams.shape[1] - 1) // bptt)
