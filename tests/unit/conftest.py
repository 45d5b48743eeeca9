"""Fixtures of the backend's and model process's tests: a random model twice, once as the
reference (no cache) and once as the served model."""

from __future__ import annotations

import pytest
from support.models import random_predictor

from app.inference.predictor import Predictor


@pytest.fixture(scope="module")
def reference() -> Predictor:
    """The answers expected: each query computed alone, from scratch."""
    return random_predictor(cache_size=0)


@pytest.fixture
def predictor() -> Predictor:
    """The served model: the same weights as `reference`, its own cache."""
    return random_predictor()
