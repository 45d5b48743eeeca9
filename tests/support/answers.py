"""The rule the service promises about its answers (README: "The same input gives the same
answer"), as a check of two answers.

On one machine and one model, the same text, top_k and include_special give the same words in
the same order, with probabilities equal to within a relative 1e-4, whatever other requests
shared its batch, its place in the batch, whether its state came from the prefix cache, and
which process computed it; only two words whose probabilities are within that tolerance of each
other may come in either order. Equal probabilities are ordered by the lower word id.
"""

from __future__ import annotations

from app.inference.predictor import Prediction

RTOL = 1e-4


def relative_difference(x: float, y: float) -> float:
    """|x - y| relative to the larger of the two (0 when both are 0)."""
    scale = max(abs(x), abs(y))
    return abs(x - y) / scale if scale else 0.0


def assert_same_answer(a: Prediction, b: Prediction) -> float:
    """Fail unless `a` and `b` are the same answer under the rule in this module's docstring.

    Returns the largest relative difference between the probabilities the two give one word.
    """
    assert a.tokens == b.tokens, f"read differently: {a.tokens} against {b.tokens}"
    assert a.unknown_words == b.unknown_words, f"{a.unknown_words} against {b.unknown_words}"
    assert len(a.words) == len(a.probabilities) and len(b.words) == len(b.probabilities)
    assert len(a.words) == len(b.words), f"{a.words} against {b.words}"
    for place, (word_a, word_b, p_a, p_b) in enumerate(
        zip(a.words, b.words, a.probabilities, b.probabilities, strict=True)
    ):
        if word_a != word_b:  # allowed only for two words tied to within the tolerance
            assert relative_difference(p_a, p_b) <= RTOL, (
                f"place {place}: {word_a!r} ({p_a}) against {word_b!r} ({p_b}), not a near tie"
            )
    worst = 0.0
    in_b = dict(zip(b.words, b.probabilities, strict=True))
    for word, p_a in zip(a.words, a.probabilities, strict=True):
        if word in in_b:
            difference = relative_difference(p_a, in_b[word])
            assert difference <= RTOL, f"{word!r}: {p_a} against {in_b[word]}"
            worst = max(worst, difference)
    return worst
