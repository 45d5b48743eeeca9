"""Model updates while serving: a new version is loaded aside, checked, and swapped in; a broken
one is refused, named in the log and in GET /models, and the old one keeps serving."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import re
import shutil
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.models import TinyModel
from test_model_faults import MODEL_FAULTS, ModelFault

from app import store
from app.api.app import create_app
from app.inference.predictor import ModelInfo, Prediction, Prefix, WordProbability
from app.serving import manager as manager_module
from app.serving.manager import ModelManager
from app.settings import Settings

ADMIN_KEY = "reload-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


# --- the manager alone, with stand-in predictors (no model, milliseconds) -----------------------


class StubPredictor:
    def __init__(self, version: int, probability: float = 0.5) -> None:
        self.info = ModelInfo("m", version, Path(f"m/{version}"), 3, {}, {})
        self.probability = probability
        self.closed = 0
        self.held: bool | None = None  # may it fork its model process? (None: never told)

    def predict(self, text: str, top_k: int = 5, include_special: bool = False) -> Prediction:
        return Prediction([WordProbability("w", self.probability)], Prefix([1], ["<eos>"], []))

    async def aclose(self) -> None:
        self.closed += 1

    def hold_model_process(self, held: bool) -> None:
        self.held = held


def _publish_stub(store_dir: Path, version: int, note: str = "") -> None:
    folder = store_dir / "m" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / store.MANIFEST).write_text(json.dumps({"version": version, "note": note}))


class StubLoader:
    """Loads StubPredictors; `broken` versions fail to load, `nonsense` ones load but give NaN."""

    def __init__(self) -> None:
        self.loaded: list[int] = []
        self.made: dict[int, StubPredictor] = {}
        self.broken: set[int] = set()
        self.nonsense: set[int] = set()

    def __call__(self, settings: Settings, version: int) -> StubPredictor:
        self.loaded.append(version)
        if version in self.broken:
            raise store.ModelStoreError(f"m/{version}/weights.safetensors is missing")
        predictor = StubPredictor(version, math.nan if version in self.nonsense else 0.5)
        self.made[version] = predictor
        return predictor


@pytest.fixture
def stub_store(tmp_path: Path) -> Path:
    _publish_stub(tmp_path, 1)
    return tmp_path


def _manager(stub_store: Path, loader: StubLoader) -> ModelManager:
    settings = Settings(model_store=stub_store, model_name="m", predict_timeout_s=0.1)
    return ModelManager(settings, load=loader)  # type: ignore[arg-type]


def test_a_request_in_flight_finishes_on_the_model_it_started_with(stub_store: Path) -> None:
    loader = StubLoader()

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        await models.start()
        async with models.lease() as held:
            _publish_stub(stub_store, 2)
            assert (await models.reload()).status == "loaded"
            assert models.current is loader.made[2]  # new requests get v2 ...
            assert held is loader.made[1]  # ... this one still holds v1
            await asyncio.sleep(0.05)
            assert loader.made[1].closed == 0  # not closed under a request in flight
        await asyncio.sleep(0.01)
        assert loader.made[1].closed == 1  # closed as soon as the last request ended
        await models.aclose()
        assert loader.made[2].closed == 1

    asyncio.run(scenario())


def test_a_stuck_request_does_not_keep_an_old_model_for_ever(stub_store: Path) -> None:
    loader = StubLoader()

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        manager_module.RETIRE_MARGIN_S, margin = 0.0, manager_module.RETIRE_MARGIN_S
        try:
            await models.start()
            async with models.lease():
                _publish_stub(stub_store, 2)
                await models.reload()
                await asyncio.sleep(0.3)  # past the request time-out (0.1 s) + margin (0)
                assert loader.made[1].closed == 1
        finally:
            manager_module.RETIRE_MARGIN_S = margin
            await models.aclose()

    asyncio.run(scenario())


def test_a_model_process_is_forked_only_while_one_model_is_in_memory(stub_store: Path) -> None:
    # A process forked while the old model is still in memory would keep a copy of it for life.
    loader = StubLoader()

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        await models.start()
        assert loader.made[1].held is False  # alone: it may fork
        async with models.lease():
            _publish_stub(stub_store, 2)
            await models.reload()
            assert loader.made[2].held is True  # v1 is still answering a request
        for _ in range(100):
            if loader.made[2].held is False:
                break
            await asyncio.sleep(0.02)
        assert loader.made[1].closed == 1 and loader.made[2].held is False
        await models.reload()  # unchanged: nothing loaded, so it is free again after
        assert loader.made[2].held is False
        await models.aclose()

    asyncio.run(scenario())


def test_a_retired_model_is_freed_though_it_was_frozen_at_start_up_in_a_cycle(
    stub_store: Path,
) -> None:
    # The app freezes start-up's objects out of the collector's sight (gc.freeze), the first
    # model among them; a real Predictor is in reference cycles (its batcher holds its bound
    # methods), which only the collector frees.
    loader = StubLoader()

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        await models.start()
        first = loader.made.pop(1)
        first.cycle = first  # type: ignore[attr-defined]
        freed = weakref.ref(first)
        del first
        gc.freeze()
        try:
            _publish_stub(stub_store, 2)
            assert (await models.reload()).status == "loaded"
            for _ in range(100):
                if freed() is None:
                    break
                await asyncio.sleep(0.02)
            assert freed() is None
        finally:
            gc.unfreeze()
            await models.aclose()

    asyncio.run(scenario())


def test_a_refused_version_is_not_retried_until_its_folder_changes(
    stub_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loader = StubLoader()
    loader.broken.add(2)

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        await models.start()
        _publish_stub(stub_store, 2)
        for _ in range(5):  # five polls
            outcome = await models.reload(force=False)
            assert outcome.status == "refused"
            assert "weights.safetensors is missing" in outcome.reason
        assert loader.loaded == [1, 2]  # loaded once, not on every poll
        assert models.current is loader.made[1]
        assert [r.version for r in models.refusals()] == [2]
        # An admin request always tries again; a changed folder is tried again by a poll.
        assert (await models.reload()).status == "refused"
        loader.broken.clear()
        _publish_stub(stub_store, 2, note="fixed")
        assert (await models.reload(force=False)).status == "loaded"
        assert models.refusals() == []
        await models.aclose()

    with caplog.at_level(logging.ERROR, logger="nextword"):
        asyncio.run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused model m v2" in r.getMessage()]
    assert len(refusals) == 1  # one log line, not one per poll
    assert "still serving v1" in refusals[0]


def test_a_model_that_loads_but_predicts_nonsense_is_refused(stub_store: Path) -> None:
    loader = StubLoader()
    loader.nonsense.add(2)

    async def scenario() -> None:
        models = _manager(stub_store, loader)
        await models.start()
        _publish_stub(stub_store, 2)
        outcome = await models.reload()
        assert outcome.status == "refused" and "probe prediction" in outcome.reason
        assert models.current is loader.made[1]
        assert loader.made[2].closed == 1  # the refused one is closed, not leaked
        await models.aclose()

    asyncio.run(scenario())


# --- through the API, with the trained tiny model ----------------------------------------------


def _copy_version(model: TinyModel, store_dir: Path, version: int) -> Path:
    target = store_dir / model.name / str(version)
    shutil.copytree(model.path, target)
    return target


@pytest.fixture
def served(tiny_model: TinyModel, tmp_path: Path) -> Callable[..., TestClient]:
    """A TestClient factory for a copy of the tiny model as v1 of a fresh store."""
    _copy_version(tiny_model, tmp_path, 1)

    def make(**settings: Any) -> TestClient:
        app = create_app(
            Settings(model_store=tmp_path, model_name="tiny", admin_key=ADMIN_KEY, **settings)
        )
        return TestClient(app)

    return make


def test_a_replaced_model_and_its_model_process_are_freed(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    _copy_version(tiny_model, tmp_path, 1)

    async def scenario() -> None:
        models = ModelManager(Settings(model_store=tmp_path, model_name="tiny"))
        await models.start()
        gc.freeze()  # as the app's start-up does

        async def concurrent_requests() -> dict[str, Any]:
            async with models.lease() as predictor:
                await asyncio.gather(*(predictor.predict_async(f"the {i}") for i in range(8)))
                return predictor.stats()["batching"]

        try:
            assert (await concurrent_requests())["model_process_forks"] == 1
            freed = weakref.ref(models.current)  # type: ignore[arg-type]
            _copy_version(tiny_model, tmp_path, 2)
            assert (await models.reload()).status == "loaded"
            for _ in range(100):
                if freed() is None:
                    break
                await asyncio.sleep(0.02)
            assert freed() is None  # (a model process forked now would keep it for life)
            forks = 0
            for _ in range(100):  # v2's process is forked once v1's retirement has ended
                forks = int((await concurrent_requests())["model_process_forks"])
                if forks:
                    break
                await asyncio.sleep(0.02)
            assert forks == 1
        finally:
            gc.unfreeze()
            await models.aclose()

    asyncio.run(scenario())


def _served_version(client: TestClient) -> int:
    version: int = client.get("/ready").json()["model"]["version"]
    return version


@pytest.mark.slow
@pytest.mark.parametrize("break_model", MODEL_FAULTS)
def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(
    served: Callable[..., TestClient],
    tiny_model: TinyModel,
    tmp_path: Path,
    break_model: ModelFault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with served() as client, caplog.at_level(logging.ERROR, logger="nextword"):
        expected = break_model(_copy_version(tiny_model, tmp_path, 2))
        response = client.post("/admin/reload", params={"version": 2}, headers=ADMIN)
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "model_refused"
        assert re.search(expected, response.json()["message"])
        assert str(tmp_path) not in response.json()["message"]  # no server paths to clients

        assert _served_version(client) == 1
        assert client.post("/predict", json={"text": "the cat"}).status_code == 200
        (refused,) = client.get("/models").json()["refused"]
        assert refused["version"] == 2 and re.search(expected, refused["reason"])
    (line,) = [r.getMessage() for r in caplog.records if "refused model tiny v2" in r.getMessage()]
    assert "still serving v1" in line and re.search(expected, line)


@pytest.mark.slow
def test_the_poller_serves_new_versions_and_skips_broken_ones(
    served: Callable[..., TestClient],
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[int] = []
    real_load = manager_module.load_predictor

    def counting_load(settings: Settings, version: int) -> Any:
        loads.append(version)
        return real_load(settings, version)

    monkeypatch.setattr(manager_module, "load_predictor", counting_load)
    with served(reload_interval_s=0.05) as client:
        _break_sha(_copy_version(tiny_model, tmp_path, 2))
        _wait_for(lambda: client.get("/models").json()["refused"])
        time.sleep(0.3)  # several more polls
        assert loads.count(2) == 1 and _served_version(client) == 1

        _copy_version(tiny_model, tmp_path, 3)
        _wait_for(lambda: _served_version(client) == 3)
        body = client.get("/models").json()
        assert body["models"][0]["version"] == 3
        assert [r["version"] for r in body["refused"]] == [2]


@pytest.mark.slow
def test_a_version_that_links_outside_the_store_is_refused(
    served: Callable[..., TestClient], tiny_model: TinyModel, tmp_path: Path
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    shutil.copytree(tiny_model.path, outside)
    with served() as client:
        (tmp_path / "tiny" / "5").symlink_to(outside, target_is_directory=True)
        response = client.post("/admin/reload", params={"version": 5}, headers=ADMIN)
        assert response.status_code == 409
        assert "outside the model store" in response.json()["message"]
        # and 'latest' (now 5) is refused the same way, whatever the admin asks
        assert client.post("/admin/reload", headers=ADMIN).status_code == 409
        assert _served_version(client) == 1
    shutil.rmtree(outside)


def _break_sha(path: Path) -> None:
    with (path / store.WEIGHTS).open("ab") as handle:
        handle.write(b"\0")


def _wait_for(condition: Callable[[], Any], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within} s")
        time.sleep(0.05)
