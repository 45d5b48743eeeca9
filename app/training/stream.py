"""Token ids on disk: a corpus larger than memory, encoded once and streamed back with tf.data.

    text (one pass for the vocabulary, one to encode) -> ids.bin (int32, little-endian)
    ids.bin ─ FixedLengthRecordDataset per stream row ─ interleave ─ batch -> (rows, bptt) windows

The windows are exactly those of `corpus.batchify` + `corpus.windows` over the same ids: row b
of the (batch, steps) streams starts at token b * steps, and window t of it is tokens
t * bptt ... t * bptt + bptt - 1 (targets one token later). Each row is its own reader that
seeks to its offset, so a worker reads only its rows, and a resumed run starts at any window
without reading the ones before. Memory holds a few windows, whatever the corpus size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from app.tokenizer import Tokenizer
from app.training.corpus import batchify, windows

ID_BYTES = 4  # int32
# Ids are written in chunks of this many tokens (4 MB), so encoding needs no more memory.
CHUNK_TOKENS = 1 << 20


@dataclass(frozen=True)
class TokenFile:
    """A stream of token ids in a binary file: `count` little-endian int32."""

    path: Path
    count: int

    def __len__(self) -> int:
        return self.count

    def read(self) -> np.ndarray:
        """All the ids in memory (validation and test splits, which evaluation reads whole)."""
        return np.fromfile(self.path, dtype="<i4").astype(np.int32)


def write_ids(lines: Iterable[str], tokenizer: Tokenizer, path: Path) -> tuple[TokenFile, Any]:
    """Encode lines (each closed by the sentence-end id) into `path`; also count each id.

    Returns the file and the (vocab,) int64 counts (the unigram baseline and the unknown rate
    come from them, so the ids are never read back for that).
    """
    counts = np.zeros(tokenizer.size, dtype=np.int64)
    buffer: list[int] = []
    total = 0
    with path.open("wb") as handle:

        def flush() -> None:
            nonlocal total
            chunk = np.asarray(buffer, dtype="<i4")
            handle.write(chunk.tobytes())
            counts[:] += np.bincount(chunk, minlength=tokenizer.size)
            total += len(chunk)
            buffer.clear()

        for line in lines:
            buffer.extend(tokenizer.encode(line, end_of_line=True))
            if len(buffer) >= CHUNK_TOKENS:
                flush()
        flush()
    return TokenFile(path, total), counts


def window_dataset(
    ids: TokenFile, batch_size: int, bptt: int, rows: range, first_window: int = 0
) -> tf.data.Dataset:
    """(tokens, targets) windows, each (len(rows), bptt) int32, from window `first_window` on.

    `rows` are the stream rows to read (all of range(batch_size) in one process; a worker's
    share under a strategy).
    """
    steps = ids.count // batch_size  # tokens per stream row, as corpus.batchify cuts them
    first_window = min(first_window, max(0, (steps - 1) // bptt))
    records = max(0, (steps - 1) // bptt - first_window)  # windows left in each row
    file_bytes = ids.count * ID_BYTES

    def reader(start_token: tf.Tensor) -> tf.data.Dataset:
        # Records of bptt ids from the row's first window on; the footer ends the body after
        # its last whole window, so the body is exactly `records` records.
        first_token = start_token + first_window * bptt
        end_token = first_token + records * bptt
        windows = tf.data.FixedLengthRecordDataset(
            str(ids.path),
            record_bytes=bptt * ID_BYTES,
            header_bytes=first_token * ID_BYTES,
            footer_bytes=file_bytes - end_token * ID_BYTES,
        )
        return windows.map(lambda record: tf.reshape(tf.io.decode_raw(record, tf.int32), [bptt]))

    def row(index: tf.Tensor) -> tf.data.Dataset:
        start = index * steps
        return tf.data.Dataset.zip(reader(start), reader(start + 1))  # targets: one token on

    row_indices = tf.data.Dataset.from_tensor_slices(np.asarray(rows, dtype=np.int64))
    return (
        row_indices.interleave(row, cycle_length=len(rows), block_length=1)
        .batch(len(rows), drop_remainder=True)  # (rows, bptt): one window of every row
        .prefetch(4)
    )


def window_batches(
    train_ids: np.ndarray | TokenFile, batch_size: int, bptt: int, rows: range, first: int
) -> Iterable[tuple[tf.Tensor, tf.Tensor]]:
    """The epoch's (tokens, targets) windows of `rows`, from window `first` on: streamed from
    a token file, or cut from ids in memory (small corpora, tests).
    """
    if isinstance(train_ids, TokenFile):
        return window_dataset(train_ids, batch_size, bptt, rows, first)
    streams = batchify(train_ids, batch_size)[rows.start : rows.stop]  # (rows, steps)
    pairs = itertools.islice(windows(streams, bptt), first, None)
    return ((tf.constant(tokens), tf.constant(targets)) for tokens, targets in pairs)
