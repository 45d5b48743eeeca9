"""Fixtures every tier shares: a small patterned corpus and a tiny model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.models import TinyModel, patterned_lines, train_tiny


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1,500-line corpus (~13k tokens); valid and test are cut from its end."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(patterned_lines(1500)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> TinyModel:
    """A tied 16-unit model trained for a few seconds; shared by the tests that only read it."""
    return train_tiny(corpus_file, tmp_path_factory.mktemp("store"))
