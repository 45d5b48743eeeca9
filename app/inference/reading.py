"""A text as the model reads it, and the readings kept for type-ahead.

Texts are read as in training, where every corpus line is a sentence closed by <eos> and the
stream of lines is read from a zero state:

    ""              ->  <eos>                      the first word of a sentence
    "the cat"       ->  <eos> the cat
    "the cat\\nit"   ->  <eos> the cat <eos> it     a line break ends a sentence

Blank lines add nothing (training drops them), so <eos> never follows <eos> because of them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.tokenizer import Tokenizer, standardise

# The line breaks str.splitlines() knows, which is how the training corpus was cut into lines.
_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class _Pairs:
    """Room for a text's (state, next id) pairs, shared by the memories of its successive
    readings: the memory of "the cat sat" is that of "the cat" with one pair written after it,
    in place, not a copy of it. Memories only read below `filled`, which only grows."""

    __slots__ = ("filled", "next_ids", "states")

    def __init__(self, states: np.ndarray, next_ids: np.ndarray, filled: int) -> None:
        self.states = states  # (capacity, hidden) float32
        self.next_ids = next_ids  # (capacity,)
        self.filled = filled

    @property
    def capacity(self) -> int:
        return len(self.next_ids)


class Memory:
    """The continuous cache's memory of a text: the state after each of its ids but the last,
    and the id read after it (app.inference.distribution), the most recent `size` pairs.

    Single precision, as the engine computes: half precision would halve a memory's bytes, but
    NumPy converts it back at every request slower than the dot products themselves. A memory is
    a window on a _Pairs that the memories of the same text share (`store`): typing a word adds
    its pair, not a copy of the 700 before it, and the reading cache counts a store once.
    """

    __slots__ = ("next_ids", "states", "stop", "store")

    def __init__(self, states: np.ndarray, next_ids: np.ndarray) -> None:
        """A memory of these pairs (states (pairs, hidden), next_ids (pairs,)), taken as given."""
        self._window(_Pairs(states, next_ids, len(next_ids)), 0, len(next_ids))

    def _window(self, store: _Pairs, start: int, stop: int) -> Memory:
        self.store, self.stop = store, stop  # this memory is the store's pairs start .. stop
        self.states = store.states[start:stop]  # views: read-only, the store only grows after
        self.next_ids = store.next_ids[start:stop]
        self.states.flags.writeable = self.next_ids.flags.writeable = False
        return self

    def __len__(self) -> int:
        return len(self.next_ids)

    def __reduce__(self) -> tuple[type[Memory], tuple[np.ndarray, np.ndarray]]:
        # Pickled (to or from the model process) as its own pairs, not the whole shared store.
        return Memory, (self.states.copy(), self.next_ids.copy())

    def after(
        self, start: np.ndarray | None, ids: Sequence[int], steps: np.ndarray, size: int
    ) -> Memory:
        """This memory with the pairs of reading `ids` from the state `start` (None: from the
        zero state, which pairs with nothing), stepping through `steps` (len(ids), hidden)."""
        if not len(ids):
            return self
        before = steps[:-1] if start is None else np.concatenate([start[None, :], steps[:-1]])
        new_ids = np.asarray(ids[1:] if start is None else ids, dtype=np.intp)
        added, store, stop = len(new_ids), self.store, self.stop
        if stop == store.filled and stop + added <= store.capacity:
            # The latest memory of its store: the new pairs go after it.
            store.states[stop : stop + added] = before
            store.next_ids[stop : stop + added] = new_ids
            store.filled += added
            return Memory.__new__(Memory)._window(store, max(stop + added - size, 0), stop + added)
        # Another reading wrote after this one first (a phrase tried, a word typed over), or
        # the store is full: a new one. A text read from nothing gets no more room than its
        # pairs (most are never typed on); one typed on gets twice what it keeps (at most
        # 2 `size`), so that copies cost O(1) a pair over a long text.
        states = np.concatenate([self.states, before])[-size:]
        next_ids = np.concatenate([self.next_ids, new_ids])[-size:]
        count = len(next_ids)
        capacity = min(2 * count, 2 * size) if len(self) else count
        grown = _Pairs(
            np.empty((capacity, states.shape[1]), dtype=states.dtype),
            np.empty(capacity, dtype=np.intp),
            count,
        )
        grown.states[:count], grown.next_ids[:count] = states, next_ids
        return Memory.__new__(Memory)._window(grown, 0, count)

    @classmethod
    def empty(cls, hidden: int) -> Memory:
        return cls(np.empty((0, hidden), dtype=np.float32), np.empty(0, dtype=np.intp))


@dataclass(frozen=True)
class Reading:
    """A text as the model reads it, and the state after it (None until computed)."""

    ids: tuple[int, ...]  # always starts with <eos>
    tokens: tuple[str, ...]
    unknown_words: tuple[str, ...]
    state: np.ndarray | None = None  # (hidden,), read-only
    memory: Memory | None = None  # with a continuous cache: the text's states

    def followed_by(
        self,
        ids: Sequence[int],
        tokens: Sequence[str],
        state: np.ndarray,
        memory: Memory | None = None,
    ) -> Reading:
        """This reading with more words read, and the state after them (a read-only copy)."""
        kept = state.copy()
        kept.flags.writeable = False  # handed to later requests: nothing may change it
        return Reading(
            self.ids + tuple(ids), self.tokens + tuple(tokens), self.unknown_words, kept, memory
        )


class ReadingCache:
    """Readings by text, least recently used dropped first: at most `max_entries`, and on
    average at most CHARS_PER_ENTRY characters and PAIRS_PER_ENTRY continuous-cache pairs an
    entry (so memory is bounded however long the texts). The pairs counted are the room of
    each store of pairs the entries hold (Memory), once however many entries share it."""

    CHARS_PER_ENTRY = 256
    # A pair is a state (1 KiB for 256 units): the pairs are most of a full cache's memory, and
    # this budget still holds the store of the longest memory a shipped model keeps.
    PAIRS_PER_ENTRY = 3

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.max_chars = max_entries * self.CHARS_PER_ENTRY
        self.max_pairs = max_entries * self.PAIRS_PER_ENTRY
        self.chars = self.pairs = 0
        self._entries: OrderedDict[str, Reading] = OrderedDict()
        self._stores: dict[int, int] = {}  # id of each store of pairs held -> entries holding it
        self.hits = self.misses = 0  # a hit: the text or its head was kept

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: str) -> bool:
        return _key(text) in self._entries  # (a look, not a use: the order is kept)

    def get(self, text: str) -> Reading | None:
        key = _key(text)
        reading = self._entries.get(key)
        if reading is not None:
            self._entries.move_to_end(key)
        return reading

    def furthest(self, text: str) -> tuple[Reading | None, int]:
        """The reading kept for `text` or else its head, and that text's length (a use: counted
        as a hit or a miss)."""
        for cut in (len(text), *_head_lengths(text)):
            reading = self.get(text[:cut])
            if reading is not None:
                self.hits += 1
                return reading, cut
        self.misses += 1
        return None, 0

    def keeps(self, text: str) -> bool:
        """Whether `text` or its head is kept (a look, not a use)."""
        return any(text[:cut] in self for cut in (len(text), *_head_lengths(text)))

    def put(self, text: str, reading: Reading) -> None:
        text = _key(text)
        memory = reading.memory
        room = memory.store.capacity if memory is not None else 0
        if len(text) > self.max_chars or room > self.max_pairs or self.max_entries < 1:
            return  # could never fit: keep what is there
        old = self._entries.pop(text, None)
        if old is not None:
            self._forget(text, old)
        self._entries[text] = reading
        self.chars += len(text)
        if memory is not None:
            held = self._stores.get(id(memory.store), 0)
            self._stores[id(memory.store)] = held + 1
            self.pairs += room if held == 0 else 0
        while (
            len(self._entries) > self.max_entries
            or self.chars > self.max_chars
            or self.pairs > self.max_pairs
        ):
            self._forget(*self._entries.popitem(last=False))

    def _forget(self, text: str, reading: Reading) -> None:
        self.chars -= len(text)
        if reading.memory is not None:
            store = reading.memory.store
            held = self._stores.pop(id(store)) - 1
            if held:
                self._stores[id(store)] = held
            else:
                self.pairs -= store.capacity


def read_text(tokenizer: Tokenizer, text: str, after: Reading | None = None) -> Reading:
    """Read `text` alone, or as what follows the text read as `after`."""
    ids = list(after.ids) if after else [tokenizer.end_id]
    unknown_words = list(after.unknown_words) if after else []
    for number, line in enumerate(_LINE_BREAK.split(text)):
        if number > 0 and ids[-1] != tokenizer.end_id:
            ids.append(tokenizer.end_id)
        line_ids = tokenizer.encode(line)
        if tokenizer.unknown_id in line_ids:
            # Standardised again only when there is something to report (encode maps the
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
    return Reading(tuple(ids), tokens, tuple(unknown_words))


def _key(text: str) -> str:
    # Spaces and tabs at the end of a text add nothing to its reading: "the cat " is kept as
    # "the cat", and found again whatever follows it ("the cat sat", "the cat\nit").
    return text.rstrip(" \t")


def _head_lengths(text: str) -> tuple[int, ...]:
    """Where the text's head may end: after the spaces before its last word ("the cat sat " ->
    "the cat "), or before them ("a b\nc " -> "a b", which "a b " kept when a line break
    followed the word instead of a space)."""
    words = text.rstrip()
    cut = max(words.rfind(" "), words.rfind("\n")) + 1
    if cut == 0:
        return ()
    run = len(words[:cut].rstrip())  # where the spaces before the last word begin
    return (cut,) if run in (0, cut) else (cut, run)
