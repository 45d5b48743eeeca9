"""The k largest values of each row of a batch, in order, without sorting the rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array, largest first (equal values in index order)."""
    return top_k_rows(values[None, :], [k], [0])[0]


# Columns per block when bounding the k-th largest value of a row (see top_k_rows).
_BLOCK = 64


def top_k_rows(values: np.ndarray, ks: Sequence[int], firsts: Sequence[int]) -> list[np.ndarray]:
    """For each row r of `values` (batch, n): the indices of its ks[r] largest values among
    columns firsts[r] and after, largest first, equal values in index order.

    A sort, or even argpartition (~100 µs for 10,000 values), is more than a request needs.
    Instead, deal the columns into groups of 64 (column j to group j mod groups): K values reach
    the K-th largest group maximum (one in each of K groups), so the K largest values are all at
    or above it. Only the few columns there are sorted, for the whole batch at once.
    """
    batch, width = values.shape
    most = min(max(ks, default=0), width)
    if most <= 0:
        return [np.empty(0, dtype=np.intp) for _ in range(batch)]
    lead = max(firsts)  # the columns before it are few (the special tokens): always candidates
    region = values[:, lead:]
    blocks = region.shape[1] // _BLOCK
    if blocks > most:
        # (batch, 64, blocks) -> (batch, blocks): a maximum over 64 rows, SIMD across columns.
        block_max = region[:, : blocks * _BLOCK].reshape(batch, _BLOCK, blocks).max(axis=1)
        tail = region[:, blocks * _BLOCK :]
        if tail.shape[1]:
            block_max = np.concatenate([block_max, tail.max(axis=1, keepdims=True)], axis=1)
        count = block_max.shape[1]
        bound = np.partition(block_max, count - most, axis=1)[:, count - most]
        flat = np.flatnonzero(region >= bound[:, None])  # much faster than a 2-D nonzero
    else:  # fewer groups than values wanted: every column is a candidate
        flat = np.arange(region.size)
    rows, columns = np.divmod(flat, region.shape[1])
    columns += lead
    extra = [(r, c) for r, first in enumerate(firsts) for c in range(first, lead)]
    if extra:
        rows = np.concatenate([rows, np.array([r for r, _ in extra], dtype=rows.dtype)])
        columns = np.concatenate([columns, np.array([c for _, c in extra], dtype=columns.dtype)])
    # By row, then value falling, then index rising.
    order = np.lexsort((columns, -values[rows, columns], rows))
    rows, columns = rows[order], columns[order]
    counts = np.bincount(rows, minlength=batch)
    starts = np.cumsum(counts) - counts  # where each row's candidates begin
    return [
        columns[start : start + max(0, min(k, count))]
        for start, count, k in zip(starts.tolist(), counts.tolist(), ks, strict=True)
    ]
