"""Checking a version costs bounded memory and gives it back (issue 17).

A refused version's objects are freed by the time reload() returns, although the server has
frozen its start-up objects (gc.freeze) and no collection of the test's own runs; and a version
whose files are larger than its architecture allows is refused before it is read whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.models import random_arrays, random_predictor

from app import store
from app.inference.loading import load_predictor
from app.inference.predictor import Predictor
from app.serving.manager import ModelManager
from app.settings import Settings
from app.store import ModelStoreError
from app.tokenizer import PRESETS, Tokenizer

# --- a refused version is freed -----------------------------------------------------------------


class Versions:
    """The manager's Loader: a Predictor over random weights for each version, of which only a
    weak reference is kept. `broken` versions raise while their predictor is a local of the
    loading frame (as app.inference.loading does when a late check fails); `nonsense` ones load,
    with NaN probabilities, and fail the probe."""

    def __init__(self) -> None:
        self.made: dict[int, weakref.ref[Predictor]] = {}
        self.broken: set[int] = set()
        self.crashing: set[int] = set()
        self.nonsense: set[int] = set()

    def __call__(self, settings: Settings, version: int) -> Predictor:
        predictor = random_predictor(64, seed=version)
        self.made[version] = weakref.ref(predictor)
        if version in self.broken:
            raise ModelStoreError(f"m/{version}/tokenizer.json has too many words")
        if version in self.crashing:
            raise RuntimeError(f"a bug while loading v{version}")
        if version in self.nonsense:
            nan = np.full_like(predictor.weights.output_bias, np.nan)
            predictor.weights = dataclasses.replace(predictor.weights, output_bias=nan)
        return predictor


def publish_folder(store_dir: Path, version: int) -> None:
    folder = store_dir / "m" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / store.MANIFEST).write_text(json.dumps({"version": version}))


@pytest.fixture
def frozen_server() -> Iterator[None]:
    """As the app after start-up: objects frozen, and no automatic collection during the test,
    so that only the manager's own work can free a refused model."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


@pytest.mark.parametrize("fault", ["nonsense", "broken", "crashing"])
def test_a_refused_version_is_freed_when_reload_returns(
    tmp_path: Path, frozen_server: None, fault: str
) -> None:
    versions = Versions()
    publish_folder(tmp_path, 1)

    async def scenario() -> None:
        settings = Settings(model_store=tmp_path, model_name="m", model_process=False)
        manager = ModelManager(settings, load=versions)
        await manager.start()
        gc.freeze()
        try:
            for number in (2, 3, 4):
                publish_folder(tmp_path, number)
                getattr(versions, fault).add(number)
                outcome = await manager.reload()
                assert outcome.status == "refused", outcome
                assert versions.made[number]() is None, f"v{number} is still in memory"
            assert manager.current is not None and manager.current.info.version == 1
            assert [r.version for r in manager.refusals()] == [4, 3, 2]
        finally:
            await manager.aclose()

    asyncio.run(scenario())


# --- limits checked before a version is read whole ----------------------------------------------

WORDS = ["<unk>", "<eos>", *(f"w{i}" for i in range(2, 16))]


def publish_small(model_store: Path) -> Path:
    def write(folder: Path) -> dict[str, Any]:
        save_file(random_arrays(len(WORDS), 6, 6), folder / store.WEIGHTS)
        Tokenizer(PRESETS["raw"], WORDS).save(folder / store.TOKENIZER)
        architecture = dict(
            type="simple_rnn", vocab_size=len(WORDS), embedding_dim=6, hidden_units=6, tied=True
        )
        return {"architecture": architecture}

    return store.publish(model_store, "small", write).path


def rewrite(path: Path, name: str, content: bytes) -> None:
    """Replace one file and fix its sha256 in the manifest, as a careless (or hostile) copy."""
    (path / name).write_bytes(content)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["files"][name] = store.sha256_file(path / name)
    (path / store.MANIFEST).write_text(json.dumps(manifest))


def tokenizer_json(words: int) -> bytes:
    vocabulary = [*WORDS[:2], *(f"word{i:07d}" for i in range(words - 2))]
    payload = {"format": 1, "config": dataclasses.asdict(PRESETS["raw"]), "vocabulary": vocabulary}
    return json.dumps(payload).encode()


def peak_while_refused(model_store: Path, match: str) -> int:
    """Bytes allocated at the peak while load_predictor refuses the version."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelStoreError, match=match):
            load_predictor(model_store, "small")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_tokenizer_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = publish_small(tmp_path)
    rewrite(path, store.TOKENIZER, tokenizer_json(300_000))  # about 4 MB for 16 words
    peak = peak_while_refused(tmp_path, r"tokenizer\.json is \d+ bytes, more than the \d+ bytes")
    assert peak < 3 << 20  # the sha256 reads 1 MiB blocks; the whole file would be more


def test_a_tokenizer_with_more_words_than_the_weights_is_refused_before_its_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = publish_small(tmp_path)
    rewrite(path, store.TOKENIZER, tokenizer_json(len(WORDS) + 40))  # within the size limit

    def no_index(self: Tokenizer) -> None:
        raise AssertionError("the vocabulary was indexed")

    monkeypatch.setattr(Tokenizer, "__post_init__", no_index)
    with pytest.raises(
        ModelStoreError, match=r"tokenizer\.json has 56 words but the weights have 16"
    ):
        load_predictor(tmp_path, "small")


def test_a_huge_manifest_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = publish_small(tmp_path)
    manifest = json.loads((path / store.MANIFEST).read_text())
    manifest["padding"] = "x" * (2 << 20)
    (path / store.MANIFEST).write_text(json.dumps(manifest))
    peak = peak_while_refused(tmp_path, r"manifest\.json is \d+ bytes, more than the \d+ bytes")
    assert peak < 3 << 20  # the sha256 reads 1 MiB blocks; the whole file would be more


def test_weights_larger_than_their_architecture_are_refused_before_they_are_loaded(
    tmp_path: Path,
) -> None:
    path = publish_small(tmp_path)
    arrays = random_arrays(len(WORDS), 6, 6)
    arrays["embedding"] = np.zeros((400_000, 6), np.float32)  # 9.6 MB: a vocabulary of 400,000
    save_file(arrays, path / store.WEIGHTS)
    rewrite(path, store.WEIGHTS, (path / store.WEIGHTS).read_bytes())
    peak = peak_while_refused(tmp_path, r"weights\.safetensors is \d+ bytes, more than the")
    assert peak < 3 << 20  # the sha256 reads 1 MiB blocks; the whole file would be more


def test_weights_whose_header_disagrees_with_the_architecture_are_refused(tmp_path: Path) -> None:
    path = publish_small(tmp_path)
    arrays = random_arrays(len(WORDS), 6, 6)
    arrays["rnn.bias"] = np.zeros(3, np.float32)
    save_file(arrays, path / store.WEIGHTS)
    rewrite(path, store.WEIGHTS, (path / store.WEIGHTS).read_bytes())
    with pytest.raises(
        ModelStoreError, match=r"weights\.safetensors does not fit .*'rnn\.bias' has shape"
    ):
        load_predictor(tmp_path, "small")


def test_weights_with_bytes_beyond_their_header_are_refused(tmp_path: Path) -> None:
    path = publish_small(tmp_path)
    rewrite(path, store.WEIGHTS, (path / store.WEIGHTS).read_bytes() + b"\0" * 64)
    with pytest.raises(ModelStoreError, match=r"weights\.safetensors cannot be read \(it is \d+"):
        load_predictor(tmp_path, "small")


def test_a_version_within_the_limits_still_loads(tmp_path: Path) -> None:
    publish_small(tmp_path)
    assert load_predictor(tmp_path, "small").info.vocabulary_size == len(WORDS)
