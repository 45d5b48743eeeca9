"""The streamed corpus: lines read a line at a time as whole-file reading cut them, splits
planned without reading them, ids written to disk, and the tf.data windows equal to the
in-memory ones (so a streamed run trains on exactly the same batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.tokenizer import PRESETS, Tokenizer
from app.training.corpus import CorpusError, batchify, iter_lines, plan_splits, windows
from app.training.stream import TokenFile, window_batches, window_dataset, write_ids


def test_lines_are_cut_as_splitlines_cuts_them(tmp_path: Path) -> None:
    text = "one\r\ntwo\rthree\x85four\u2028five\n\n   \nsix\x0cseven\nlast without newline"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = [line for line in text.splitlines() if line.strip()]
    assert list(iter_lines(path)) == expected


def test_a_bad_byte_is_named_by_its_offset_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"fine line\nsecond fine line\ncaf\xe9\n")
    with pytest.raises(CorpusError, match="bad byte at offset 30"):
        list(iter_lines(path))


def test_blank_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n  \n\t\n")
    with pytest.raises(CorpusError, match="is empty"):
        list(iter_lines(path))


def test_holdout_cut_is_by_whole_lines_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("".join(f"line {i}\n\n" for i in range(100)))  # blank lines do not count
    splits = plan_splits(path, holdout=0.05)
    assert list(splits.train.lines()) == [f"line {i}" for i in range(90)]
    assert list(splits.valid.lines()) == [f"line {i}" for i in range(90, 95)]
    assert splits.test is not None
    assert list(splits.test.lines()) == [f"line {i}" for i in range(95, 100)]
    assert splits.sources["valid"] == f"{path} lines 91-95"


def test_ids_on_disk_are_the_ids_in_memory(tmp_path: Path) -> None:
    lines = ["the cat sees the dog", "a bird, at night!", "the end"]
    tokenizer = Tokenizer.build(lines, PRESETS["raw"])
    ids, counts = write_ids(lines, tokenizer, tmp_path / "ids")
    expected = tokenizer.encode_lines(lines)
    assert len(ids) == len(expected)
    np.testing.assert_array_equal(ids.read(), expected)
    np.testing.assert_array_equal(counts, np.bincount(expected, minlength=tokenizer.size))


@pytest.mark.parametrize(
    ("tokens", "batch_size", "bptt"), [(1000, 4, 7), (1003, 8, 10), (350, 3, 5), (57, 4, 13)]
)
def test_streamed_windows_are_the_in_memory_windows(
    tokens: int, batch_size: int, bptt: int, tmp_path: Path
) -> None:
    ids = np.random.default_rng(tokens).integers(0, 1000, tokens).astype(np.int32)
    (tmp_path / "ids").write_bytes(ids.astype("<i4").tobytes())
    token_file = TokenFile(tmp_path / "ids", tokens)
    expected = list(windows(batchify(ids, batch_size), bptt))
    # All rows from the start; a worker's rows; a resumed run from window 2.
    for rows, first in [(range(batch_size), 0), (range(1, batch_size), 0), (range(2), 2)]:
        got = list(window_dataset(token_file, batch_size, bptt, rows, first))
        assert len(got) == max(0, len(expected) - first)
        for (tokens_got, targets_got), (tokens_in, targets_in) in zip(
            got, expected[first:], strict=True
        ):
            np.testing.assert_array_equal(tokens_got, tokens_in[rows.start : rows.stop])
            np.testing.assert_array_equal(targets_got, targets_in[rows.start : rows.stop])
        in_memory = list(window_batches(ids, batch_size, bptt, rows, first))
        assert len(in_memory) == len(got)
        for (tokens_a, targets_a), (tokens_b, targets_b) in zip(in_memory, got, strict=True):
            np.testing.assert_array_equal(tokens_a, tokens_b)
            np.testing.assert_array_equal(targets_a, targets_b)
