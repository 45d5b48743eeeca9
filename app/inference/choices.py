"""Which words a model may offer: never a blocked word, and when a word is being typed, only
the words that begin with it.

Completion looks words up in the vocabulary sorted as strings, where the words that begin with
a stem are one run found by two binary searches: the cost is the length of the run, never the
size of the vocabulary.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from app.inference.blocklist import Blocklist

# Above every character: a word that begins with `stem` sorts before stem + _LAST.
_LAST = "\U0010ffff"


class WordChoices:
    """The words of one vocabulary that may be offered, and those that begin with a stem."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        first_word_id: int,
        blocklist: Blocklist | None = None,
        placeholders: Sequence[int] = (),
    ) -> None:
        size = len(vocabulary)
        blocked = np.zeros(size, dtype=bool)
        if blocklist is not None and len(blocklist):
            for id_ in range(first_word_id, size):
                blocked[id_] = blocklist.blocks_word(vocabulary[id_])
        self.blocklist = blocklist
        self.blocked = blocked  # (vocab,) mask
        self.blocked_ids = np.flatnonzero(blocked)
        # The special tokens are never a completion or a phrase's word, nor a placeholder such
        # as the number token (offered as a next word, it tells a number comes; it cannot be
        # written into a phrase, and no typed fragment reads as it but a number).
        self.offered = ~blocked
        self.offered[:first_word_id] = False
        self.offered[list(placeholders)] = False
        self.offered_ids = np.flatnonzero(self.offered)
        # What may come next: every word but the blocked, placeholders included.
        self.next_ids = first_word_id + np.flatnonzero(~blocked[first_word_id:])
        order = sorted(np.flatnonzero(self.offered).tolist(), key=vocabulary.__getitem__)
        self._sorted_words = [vocabulary[id_] for id_ in order]
        self._sorted_ids = np.array(order, dtype=np.intp)

    def completions(self, stem: str) -> np.ndarray:
        """The ids of the words offered that begin with `stem`, in id order (the tie rule of
        the service: equal probabilities, the lower id first)."""
        if not stem:
            return self.offered_ids
        low = bisect_left(self._sorted_words, stem)
        high = bisect_left(self._sorted_words, stem + _LAST, low)
        return np.sort(self._sorted_ids[low:high])

    def blocks_phrase(self, words: Sequence[str]) -> bool:
        """Whether a run of words holds a blocked entry of several words (single blocked words
        are never offered at all)."""
        return self.blocklist is not None and self.blocklist.blocks_phrase(words)
