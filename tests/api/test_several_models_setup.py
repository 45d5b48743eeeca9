"""Which models a server serves (NEXTWORD_MODELS, NEXTWORD_MODEL_NAME, NEXTWORD_MODEL_VERSION),
refused in one line when they cannot be; and the model processes of several models, forked only
while no model is coming or going. No trained model: folders and random weights."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from support.backends import children, until
from support.backends import forks as linux_only
from support.models import random_predictor

from app import store
from app.inference.backend import Backend
from app.inference.predictor import ModelInfo, Predictor, Query
from app.serving.registry import ModelRegistry, UnknownModel
from app.settings import Settings, SettingsError, load_settings


def publish(store_dir: Path, name: str, version: int) -> None:
    """A version folder (the tests' loaders make the model; the manager fingerprints this)."""
    folder = store_dir / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / store.MANIFEST).write_text(json.dumps({"version": version}))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    for name in ("a", "b"):
        publish(tmp_path / "store", name, 1)
    return tmp_path / "store"


# --- the settings -------------------------------------------------------------------------------


def test_by_default_every_model_with_a_version_is_served_and_ptb_is_the_default(
    store_dir: Path,
) -> None:
    (store_dir / "new" / ".tmp-0123").mkdir(parents=True)  # being trained: no version yet
    (store_dir / ".hidden" / "1").mkdir(parents=True)  # not a model name
    settings = load_settings(model_store=store_dir)
    assert (settings.models, settings.model_name) == (("a", "b"), "a")  # no ptb: the first
    publish(store_dir, "ptb", 1)
    settings = load_settings(model_store=store_dir)
    assert (settings.models, settings.model_name) == (("a", "b", "ptb"), "ptb")
    assert load_settings(model_store=store_dir, model_name="b").models == ("a", "b", "ptb")


def test_models_given_are_served_in_their_order(store_dir: Path) -> None:
    settings = load_settings(model_store=store_dir, models=" b, a ,b")
    assert (settings.models, settings.model_name) == (("b", "a"), "b")
    assert load_settings(model_store=store_dir, models="a,b", model_name="b").model_name == "b"


def test_the_version_setting_is_the_default_models_only(store_dir: Path) -> None:
    settings = load_settings(model_store=store_dir, models="a,b", model_name="b", model_version=3)
    assert settings.for_model("b").model_version == 3
    assert settings.for_model("a").model_version == "latest"
    assert settings.for_model("a").model_name == "a"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            dict(models="a,nope"),
            "NEXTWORD_MODELS (models): no model 'nope' in {store} (it has: a, b)",
        ),
        (
            dict(models="a", model_name="b"),
            "NEXTWORD_MODELS (models): does not list the default model 'b' (NEXTWORD_MODEL_NAME): "
            "add it, or set NEXTWORD_MODEL_NAME to one of a",
        ),
        (
            dict(models="a,../b"),
            "NEXTWORD_MODELS (models): model name '../b' is not allowed: use 1-64 letters, "
            "digits, '_', '.' or '-', starting with a letter or digit",
        ),
    ],
    ids=["a model not in the store", "the default not served", "not a name"],
)
def test_models_that_cannot_be_served_are_refused_in_one_line(
    store_dir: Path, given: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(model_store=store_dir, **given)
    assert str(refused.value) == message.format(store=store_dir)


def test_the_models_come_from_the_environment(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_MODEL_STORE", str(store_dir))
    monkeypatch.setenv("NEXTWORD_MODELS", "b,a")
    assert Settings().models == ("b", "a")
    monkeypatch.setenv("NEXTWORD_MODELS", " ")  # blank: not given
    assert Settings().models == ("a", "b")


# --- the registry, over random weights ----------------------------------------------------------


class Loads:
    """The managers' Loader: a random model per name and version. With `gated`, version 2 of `b`
    waits in its worker thread until `go` is set, so that a test acts while b is half-loaded."""

    def __init__(self, gated: bool = False) -> None:
        self.loading = threading.Event()
        self.go = threading.Event()
        if not gated:
            self.go.set()

    def __call__(self, settings: Settings, version: int) -> Predictor:
        name = settings.model_name
        if (name, version) == ("b", 2):
            self.loading.set()
            self.go.wait(30)
        base = random_predictor(64, seed=version + (10 if name == "b" else 0))
        info = ModelInfo(name, version, Path(f"{name}/{version}"), 64, {"type": "simple_rnn"}, {})
        return Predictor(base.weights, base.tokenizer, info)


def registry(store_dir: Path, loads: Loads, **settings: Any) -> ModelRegistry:
    return ModelRegistry(
        Settings(model_store=store_dir, models=("a", "b"), model_name="a", **settings), load=loads
    )


def test_the_registry_hands_out_each_models_backend(store_dir: Path) -> None:
    async def scenario() -> None:
        models = registry(store_dir, Loads(), model_process=False)
        await models.start()
        try:
            assert models.names == ["a", "b"]
            for name, expected in ((None, "a"), ("a", "a"), ("b", "b")):
                backend = models.backend(name)
                assert backend is not None and backend.info.name == expected
            with pytest.raises(UnknownModel) as unknown:
                models.backend("c")
            assert (unknown.value.name, unknown.value.served) == ("c", ["a", "b"])
        finally:
            await models.aclose()
        assert models.backends() is None  # closed: not ready

    asyncio.run(scenario())


def test_a_model_that_cannot_load_stops_the_start_and_closes_those_loaded(
    store_dir: Path,
) -> None:
    (store_dir / "b" / "1").rename(store_dir / "b" / "old")  # b has no version now

    async def scenario() -> None:
        models = registry(store_dir, Loads(), model_process=False)
        with pytest.raises(store.ModelStoreError, match="no versions of model 'b'"):
            await models.start()
        assert models.manager("a").current is None  # a was loaded, and closed again

    asyncio.run(scenario())


async def _batch(backend: Backend) -> None:
    """Two requests at once: a batch, which goes to the model process when it may fork."""
    await asyncio.gather(*(backend.predict(Query(f"w{i} w5 ")) for i in (2, 3)))


@linux_only
def test_no_model_forks_its_process_while_another_model_loads_a_version(
    store_dir: Path,
) -> None:
    # A process forked while b's new version is half-loaded would keep it for life.
    loads = Loads(gated=True)

    async def scenario() -> None:
        models = registry(store_dir, loads, model_process=True)
        await models.start()
        try:
            a = models.backend("a")
            assert a is not None
            publish(store_dir, "b", 2)
            reload = asyncio.create_task(models.manager("b").reload())
            while not loads.loading.is_set():
                await asyncio.sleep(0.005)
            await _batch(a)
            assert a.stats()["process_forks"] == 0  # computed on the event loop
            loads.go.set()
            assert (await reload).status == "loaded"
            for _ in range(1_000):  # once b's old version is retired, a forks
                await _batch(a)
                if a.stats()["process_forks"]:
                    break
                await asyncio.sleep(0.01)
            assert a.stats()["process_forks"] == 1
        finally:
            loads.go.set()
            await models.aclose()

    asyncio.run(scenario())


@linux_only
def test_once_a_replaced_version_is_freed_the_other_models_fork_their_process_afresh(
    store_dir: Path,
) -> None:
    # a's process, forked while b v1 was in memory, would keep b v1's memory for life.
    loads = Loads()

    async def scenario() -> None:
        models = registry(store_dir, loads, model_process=True)
        await models.start()
        try:
            a = models.backend("a")
            assert a is not None
            before = children()
            await _batch(a)
            (first,) = children() - before
            publish(store_dir, "b", 2)
            assert (await models.manager("b").reload()).status == "loaded"
            await until(lambda: first not in children())  # ended once b v1 was freed
            renewed = models.backend("a")
            assert renewed is not None and renewed is not a
            assert renewed.predictor is a.predictor  # the same model, served on
            for _ in range(1_000):  # forked again once nothing is coming or going
                await _batch(renewed)
                if renewed.stats()["process_forks"]:
                    break
                await asyncio.sleep(0.01)
            assert renewed.stats()["process_forks"] == 1
            assert models.backend("b") is not None and not children() & {first}
        finally:
            await models.aclose()

    asyncio.run(scenario())


def test_a_model_without_a_model_process_is_not_renewed(store_dir: Path) -> None:
    async def scenario() -> None:
        models = registry(store_dir, Loads(), model_process=False)
        await models.start()
        try:
            a = models.backend("a")
            await _batch(a)  # type: ignore[arg-type]
            publish(store_dir, "b", 2)
            assert (await models.manager("b").reload()).status == "loaded"
            await until(lambda: not models.manager("b").busy())
            assert models.backend("a") is a
        finally:
            await models.aclose()

    asyncio.run(scenario())
