"""Corpus input: text files -> lines -> one id stream per split -> batches for truncated BPTT."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class CorpusError(ValueError):
    """A corpus that cannot be trained on; the message names the file."""


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, refusing missing, non-UTF-8 and empty files."""
    if not path.exists():
        raise CorpusError(f"corpus file {path} does not exist")
    if not path.is_file():
        raise CorpusError(f"corpus file {path} is not a regular file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"corpus file {path} is not UTF-8 (bad byte at offset {error.start}): "
            "convert it, e.g. with `iconv -t utf-8`"
        ) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise CorpusError(f"corpus file {path} is empty")
    return lines


@dataclass(frozen=True)
class Splits:
    train: list[str]
    valid: list[str]
    test: list[str] | None
    # Where each split came from, for the manifest.
    sources: dict[str, str]


def load_splits(
    train: Path, valid: Path | None = None, test: Path | None = None, holdout: float = 0.05
) -> Splits:
    """Read train/valid/test files, or cut valid and test from the end of one training file.

    The cut is by whole lines and contiguous (train, then valid, then test), so it is the same on
    every run and each split is running text, as truncated BPTT and perplexity expect.
    """
    train_lines = read_lines(train)
    if valid is not None:
        return Splits(
            train_lines,
            read_lines(valid),
            read_lines(test) if test is not None else None,
            {"train": str(train), "valid": str(valid), "test": str(test) if test else ""},
        )
    if test is not None:
        raise CorpusError("a test file needs a validation file too (or give neither)")
    if not 0.0 < holdout < 0.5:
        raise CorpusError(f"holdout must be between 0 and 0.5, not {holdout}")
    held = max(1, round(len(train_lines) * holdout))
    if len(train_lines) < 2 * held + 1:
        raise CorpusError(
            f"corpus file {train} has {len(train_lines)} lines: too few to hold out "
            "validation and test lines; give --valid and --test files or more text"
        )
    cut = len(train_lines) - 2 * held
    description = f"{train} lines"
    return Splits(
        train_lines[:cut],
        train_lines[cut : cut + held],
        train_lines[cut + held :],
        {
            "train": f"{description} 1-{cut}",
            "valid": f"{description} {cut + 1}-{cut + held}",
            "test": f"{description} {cut + held + 1}-{len(train_lines)}",
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
