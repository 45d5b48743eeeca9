"""Caches that let type-ahead reuse the work of the request before.

Type-ahead sends the same text again and again, one word longer each time:

    "the company said"       <eos> the company said       4 steps; the state is stored
    "the company said it"    <eos> the company said it    the state of all but the last id is
                                                          found: 1 step instead of 5

`StateCache` keeps hidden states by token prefix and finds the longest stored prefix of a
request's ids, so a text that grew by several words at once (a client that waits for a pause
in the typing) also starts from the last state it reached. `TextCache` keeps tokenised texts,
so that a 500-word text is not read word by word again for each new word (the Predictor cuts a
text at its last space and tokenises only what follows).

Both are bounded LRUs, by entries and by the total size of their keys (so memory is bounded
however long the texts), and both take a lock: the Predictor is also used from worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K")
V = TypeVar("V")

# The chain hash of the empty prefix; chain(ids + [i]) = hash((chain(ids), i)).
CHAIN_START = 0


class Ids(tuple[int, ...]):
    """Token ids that hash once: a text's ids are looked up and stored several times a request,
    and hashing a 1,000-id tuple takes ~7 us each time."""

    def __hash__(self) -> int:
        try:
            return self._hash  # type: ignore[has-type]
        except AttributeError:
            self._hash = value = tuple.__hash__(self)
            return value


def chain_step(previous: int, token: int) -> int:
    return hash((previous, token))


def chain_of(tokens: Iterable[int], start: int = CHAIN_START) -> int:
    """The chain hash after `tokens`, continuing from `start` (the chain of what came before)."""
    value = start
    for token in tokens:
        value = hash((value, token))
    return value


class BoundedLru(Generic[K, V]):
    """Least-recently-used entries, at most `max_entries` and `max_weight` in total.

    Not locked: its owners hold their own lock around it.
    """

    def __init__(
        self,
        max_entries: int,
        max_weight: int,
        weigh: Callable[[K], int],
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_weight = max_weight
        self.weight = 0
        self._weigh = weigh
        self._on_evict = on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(key)
        if self.max_entries < 1 or weight > self.max_weight:
            return  # could never fit: keep what is there
        old = self._entries.pop(key, None)
        if old is not None:
            self.weight -= weight
        self._entries[key] = value
        self.weight += weight
        while len(self._entries) > self.max_entries or self.weight > self.max_weight:
            evicted, evicted_value = self._entries.popitem(last=False)
            self.weight -= self._weigh(evicted)
            if self._on_evict is not None:
                self._on_evict(evicted, evicted_value)


@dataclass(frozen=True)
class CachedState:
    """The longest stored prefix of some ids: its length, state and chain hash."""

    length: int  # 0: nothing stored; start from the zero state
    state: np.ndarray | None  # (hidden,), read-only
    chain: int


@dataclass(frozen=True)
class _Entry:
    state: np.ndarray
    chain: int


class StateCache:
    """Hidden states by token prefix (a tuple of ids), most recently used kept.

    Looking up ids tries the whole tuple and all but its last one to TYPED_ON ids first (a dict
    look-up each: the type-ahead case, where a word typed on is one id, or two after a line
    break or with a mark split off); failing those, it walks the chain hashes of every shorter
    prefix, longest first, through an index of the stored ones (the key itself is compared
    before it is used, so a hash collision can never hand out another text's state). The walk
    hashes every id of the text in Python (~0.1 ms for 1,000 ids), which a word typed on after
    a line break cost until it became one of the look-ups.
    """

    TYPED_ON = 3

    # Keys hold at most this many ids on average (a key costs 8 bytes an id, a state 1 KiB).
    IDS_PER_ENTRY = 128

    def __init__(self, max_entries: int) -> None:
        self._lock = threading.Lock()
        self._by_chain: dict[int, tuple[int, ...]] = {}
        self._entries: BoundedLru[tuple[int, ...], _Entry] = BoundedLru(
            max_entries, max_entries * self.IDS_PER_ENTRY, len, self._forget_chain
        )
        self.hits = 0  # the whole prefix, or all but its last 1-3 ids, was stored: type-ahead
        self.partial_hits = 0  # a shorter prefix was (often just <eos>: a sentence start)
        self.misses = 0

    def _forget_chain(self, key: tuple[int, ...], entry: _Entry) -> None:
        if self._by_chain.get(entry.chain) == key:
            del self._by_chain[entry.chain]

    def lookup(self, ids: tuple[int, ...]) -> CachedState:
        """The longest stored prefix of `ids` (all of them included)."""
        tried = min(self.TYPED_ON, len(ids) - 1)  # ids[:-tried] is the shortest tried at once
        with self._lock:
            for drop in range(tried + 1):
                key = ids[:-drop] if drop else ids  # itself, its hash kept (ids[:-0] is empty)
                entry = self._entries.get(key) if key else None
                if entry is not None:
                    self.hits += 1
                    return CachedState(len(key), entry.state, entry.chain)
        if len(ids) - tried > 1 and self._by_chain:
            # chains[n] is the chain hash of ids[:n].
            chains = list(accumulate(ids, chain_step, initial=CHAIN_START))
            with self._lock:
                for length in range(len(ids) - tried - 1, 0, -1):
                    found = self._by_chain.get(chains[length])
                    if found is not None and len(found) == length and found == ids[:length]:
                        entry = self._entries.get(found)
                        if entry is not None:
                            self.partial_hits += 1
                            return CachedState(length, entry.state, entry.chain)
        with self._lock:
            self.misses += 1
        return CachedState(0, None, CHAIN_START)

    def store(self, ids: tuple[int, ...], state: np.ndarray, chain: int) -> None:
        """Keep the state after `ids`; `chain` must be `chain_of(ids)`."""
        state.flags.writeable = False  # handed to other requests: nothing may change it
        with self._lock:
            self._entries.put(ids, _Entry(state, chain))
            if ids in self._entries:  # (a key too long to fit is not stored)
                self._by_chain[chain] = ids

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "partial_hits": self.partial_hits,
                "misses": self.misses,
                "size": len(self._entries),
                "capacity": self._entries.max_entries,
            }


class TextCache(Generic[V]):
    """Tokenised texts by text, most recently used kept; at most `max_entries` and
    `max_entries * CHARS_PER_ENTRY` characters of keys."""

    CHARS_PER_ENTRY = 256

    def __init__(self, max_entries: int) -> None:
        self._lock = threading.Lock()
        self._entries: BoundedLru[str, V] = BoundedLru(
            max_entries, max_entries * self.CHARS_PER_ENTRY, len
        )

    def get(self, text: str) -> V | None:
        with self._lock:
            return self._entries.get(text)

    def put(self, text: str, value: V) -> None:
        with self._lock:
            self._entries.put(text, value)
