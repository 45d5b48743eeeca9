"""The continuous cache's memories: successive readings of one text share a store of pairs, and
every memory still reads exactly the most recent pairs of its own text."""

from __future__ import annotations

import pickle

import numpy as np

from app.inference.reading import Memory, Reading, ReadingCache

HIDDEN = 4


def steps(count: int, first: float) -> np.ndarray:
    return np.arange(first, first + count * HIDDEN, dtype=np.float32).reshape(count, HIDDEN)


def as_pairs(memory: Memory) -> list[tuple[tuple[float, ...], int]]:
    return [
        (tuple(s), int(i)) for s, i in zip(memory.states.tolist(), memory.next_ids, strict=True)
    ]


def reference(start: np.ndarray | None, chunks: list[tuple[list[int], np.ndarray]], size: int):
    """The pairs a memory must hold, made by concatenation from scratch."""
    states, ids = [], []
    previous = start
    for chunk_ids, chunk_steps in chunks:
        befores = ([] if previous is None else [previous]) + list(chunk_steps[:-1])
        states += befores
        ids += chunk_ids[1:] if previous is None else chunk_ids
        previous = chunk_steps[-1]
    pairs = [(tuple(s.tolist()), i) for s, i in zip(states, ids, strict=True)]
    return pairs[-size:]


def test_typing_on_writes_in_place_and_each_memory_reads_its_own_window() -> None:
    size = 5
    chunks = [([1, 2, 3], steps(3, 0.0))] + [([10 + n], steps(1, 100.0 + 10 * n)) for n in range(8)]
    memory = Memory.empty(HIDDEN)
    state: np.ndarray | None = None
    memories = []
    for n, (ids, chunk) in enumerate(chunks):
        memory = memory.after(state, ids, chunk, size)
        state = chunk[-1]
        memories.append(memory)
        assert as_pairs(memory) == reference(None, chunks[: n + 1], size)
    # Words typed on one after the other share a store (copies only when it is full).
    stores = {id(m.store) for m in memories}
    assert len(stores) < len(memories)
    # Earlier memories still read what they read when made.
    for n, earlier in enumerate(memories):
        assert as_pairs(earlier) == reference(None, chunks[: n + 1], size)
        assert not earlier.states.flags.writeable


def test_a_second_word_after_the_same_memory_copies_instead_of_overwriting() -> None:
    base = Memory.empty(HIDDEN).after(None, [1, 2, 3], steps(3, 0.0), 10)
    first = base.after(steps(1, 50.0)[0], [7], steps(1, 60.0), 10)
    grown = first.after(steps(1, 60.0)[0], [8], steps(1, 70.0), 10)
    other = first.after(steps(1, 60.0)[0], [9], steps(1, 80.0), 10)  # a phrase tried, say
    assert grown.store is first.store  # typed on: written after it, in place
    assert other.store is not first.store  # its place taken: a copy
    assert as_pairs(grown)[-1][1] == 8 and as_pairs(other)[-1][1] == 9
    assert as_pairs(grown)[:-1] == as_pairs(other)[:-1] == as_pairs(first)


def test_a_memory_pickles_as_its_own_pairs() -> None:
    memory = Memory.empty(HIDDEN).after(None, [1, 2, 3, 4], steps(4, 0.0), 2)
    memory = memory.after(steps(1, 9.0)[0], [5], steps(1, 20.0), 2)
    copied = pickle.loads(pickle.dumps(memory))
    assert as_pairs(copied) == as_pairs(memory)
    assert copied.store.capacity == len(copied) == 2


def test_the_reading_cache_counts_a_shared_store_once() -> None:
    cache = ReadingCache(max_entries=16)
    memory = Memory.empty(HIDDEN).after(None, [1, 2, 3], steps(3, 0.0), 100)
    state: np.ndarray = steps(3, 0.0)[-1]
    text = "a b"
    for n in range(6):
        memory = memory.after(state, [4 + n], steps(1, 50.0 + n), 100)
        state = steps(1, 50.0 + n)[-1]
        text += f" w{n}"
        cache.put(text, Reading((1,), ("<eos>",), (), state, memory))
    held = {id(r.memory.store): r.memory.store.capacity for r in cache._entries.values()}
    assert cache.pairs == sum(held.values())
    while len(cache):
        cache._forget(*cache._entries.popitem(last=False))
    assert cache.pairs == 0
