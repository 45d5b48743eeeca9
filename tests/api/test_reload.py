"""Model updates while serving: a new version is loaded aside, checked, and swapped in; a broken
one is refused, named in the log and in GET /models, and the old one keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import re
import shutil
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from support.models import TinyModel, random_predictor

from app import store
from app.api.app import create_app
from app.inference.backend import Backend
from app.inference.blocklist import Blocklist
from app.inference.predictor import ModelInfo, Prediction, Predictor, Query
from app.serving import manager as manager_module
from app.serving.manager import ModelManager
from app.settings import Settings
from app.store import ModelStoreError

ADMIN_KEY = "reload-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}

# --- the manager alone, over real predictors with random weights (no training) -----------------

VOCAB = 64
LONG = "w3 " * 200
# Held in the model process until the test opens the gate: a request kept in flight at will.
HELD = "w2 " * 200


class GatedPredictor(Predictor):
    """A Predictor whose model process holds a batch with HELD in it until the gate (a file:
    the model process keeps none of its parent's descriptors) exists. `held` keeps whatever a
    test wants the predictor to refer to."""

    def __init__(self, base: Predictor, info: ModelInfo, gate: Path) -> None:
        super().__init__(base.weights, base.tokenizer, info)
        self.gate = gate
        self.parent = os.getpid()
        self.held: list[object] = []

    def predict_batch(self, queries: Sequence[Query]) -> list[Prediction]:
        if os.getpid() != self.parent and any(query.text == HELD for query in queries):
            deadline = time.monotonic() + 60  # a test that failed does not leave it for ever
            while not self.gate.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
        return super().predict_batch(queries)


class RandomModels:
    """The manager's Loader: version N is a Predictor over random weights seeded with N.
    `broken` versions fail to load; `nonsense` ones load, but their probabilities are NaN. Only
    weak references are kept, so that a test can see a model freed."""

    def __init__(self, gate: Path) -> None:
        self.gate = gate
        self.loaded: list[int] = []
        self.made: dict[int, weakref.ref[GatedPredictor]] = {}
        self.broken: set[int] = set()
        self.nonsense: set[int] = set()

    def __call__(self, settings: Settings, version: int) -> Predictor:
        self.loaded.append(version)
        if version in self.broken:
            raise ModelStoreError(f"m/{version}/weights.safetensors is missing")
        base = random_predictor(VOCAB, seed=version)
        if version in self.nonsense:
            nan = np.full_like(base.weights.output_bias, np.nan)
            base.weights = dataclasses.replace(base.weights, output_bias=nan)
        info = ModelInfo("m", version, Path(f"m/{version}"), VOCAB, {"type": "simple_rnn"}, {})
        predictor = GatedPredictor(base, info, self.gate)
        self.made[version] = weakref.ref(predictor)
        return predictor

    def open_gate(self) -> None:
        self.gate.touch()


def expected(version: int, text: str, top_k: int = 5) -> Prediction:
    """Version `version`'s answer, computed here."""
    return random_predictor(VOCAB, seed=version).predict(text, top_k)


def assert_same_answer(answer: Prediction, wanted: Prediction) -> None:
    # The same words; the probabilities to within the README's 1e-4 (batches may round apart).
    assert answer._replace(probabilities=()) == wanted._replace(probabilities=())
    assert answer.probabilities == pytest.approx(wanted.probabilities, rel=1e-4)


def publish(store_dir: Path, version: int, note: str = "") -> None:
    """A version folder for the manager to find and fingerprint (RandomModels makes the model)."""
    folder = store_dir / "m" / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / store.MANIFEST).write_text(json.dumps({"version": version, "note": note}))


def forks(backend: Backend) -> int:
    return int(backend.stats()["process_forks"])


async def eventually(condition: Callable[[], object], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {within} s")
        await asyncio.sleep(0.005)


def collected(ref: weakref.ref[Any]) -> bool:
    """Whether the object is gone once the cyclic garbage collector has run."""
    gc.collect()
    return ref() is None


async def in_flight(backend: Backend) -> None:
    """Until the request just made is counted (its task has started)."""
    await eventually(lambda: backend.in_flight >= 1)


async def in_process(backend: Backend, text: str, top_k: int = 5) -> Prediction:
    """`text` predicted with company, so that the two go to the model process as one batch
    (a request alone is computed on the event loop)."""
    answer, _ = await asyncio.gather(
        backend.predict(Query(text, top_k)), backend.predict(Query("w4 w5"))
    )
    return answer


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    publish(tmp_path / "store", 1)
    return tmp_path / "store"


@pytest.fixture
def models(tmp_path: Path) -> RandomModels:
    return RandomModels(tmp_path / "gate")


def manager(store_dir: Path, models: RandomModels, **settings: Any) -> ModelManager:
    return ModelManager(Settings(model_store=store_dir, model_name="m", **settings), load=models)


def test_a_request_in_flight_finishes_on_the_model_it_started_with(
    store_dir: Path, models: RandomModels, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        served = manager(store_dir, models, model_process=True)
        await served.start()
        try:
            first = served.current
            assert first is not None
            await in_process(first, LONG)  # forks v1's model process
            held = asyncio.create_task(in_process(first, HELD, 3))
            await in_flight(first)
            publish(store_dir, 2)
            assert (await served.reload()).status == "loaded"
            second = served.current
            assert second is not None and second.info.version == 2
            # New requests get v2 ...
            new = await second.predict(Query(HELD, 3))
            assert_same_answer(new, expected(2, HELD, 3))
            # ... while the one in flight is still on v1, and is answered by it.
            assert not held.done()
            models.open_gate()
            answer = await held
            assert_same_answer(answer, expected(1, HELD, 3))
            assert answer.words != new.words  # (the two models do answer apart)
            assert first.stats()["process_losses"] == 0  # its process was not closed under it
            del first, held
            await eventually(lambda: models.made[1]() is None)  # freed once it ended
        finally:
            models.open_gate()
            await served.aclose()

    with caplog.at_level(logging.WARNING, logger="nextword"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "closing model" in r.getMessage()]


def test_a_stuck_request_does_not_keep_an_old_model_for_ever(
    store_dir: Path,
    models: RandomModels,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(manager_module, "RETIRE_MARGIN_S", 0.0)

    def closed_anyway() -> bool:
        message = "closing model v1 with 2 requests still in flight"
        return any(message in record.getMessage() for record in caplog.records)

    async def scenario() -> None:
        served = manager(store_dir, models, model_process=True, predict_timeout_s=0.1)
        await served.start()
        try:
            first = served.current
            assert first is not None
            await in_process(first, LONG)
            stuck = asyncio.create_task(in_process(first, HELD))
            await in_flight(first)
            publish(store_dir, 2)
            assert (await served.reload()).status == "loaded"
            # Past the request time-out (0.1 s) and the margin (0), v1 is closed all the same.
            await eventually(closed_anyway)
            assert not stuck.done()
            models.open_gate()  # the request ends after all, answered by v1
            assert_same_answer(await stuck, expected(1, HELD))
            del first, stuck
            await eventually(lambda: models.made[1]() is None)
        finally:
            models.open_gate()
            await served.aclose()

    with caplog.at_level(logging.WARNING, logger="nextword"):
        asyncio.run(scenario())


def test_a_model_process_is_forked_only_while_one_model_is_in_memory(
    store_dir: Path, models: RandomModels
) -> None:
    # A process forked while the old model is still in memory would keep a copy of it for life.
    async def scenario() -> None:
        served = manager(store_dir, models, model_process=True)
        await served.start()
        try:
            assert (await served.reload()).status == "unchanged"  # nothing loaded beside it
            first = served.current
            assert first is not None
            await in_process(first, LONG)
            assert forks(first) == 1  # alone in memory: it may fork
            held = asyncio.create_task(in_process(first, HELD))
            await in_flight(first)
            publish(store_dir, 2)
            assert (await served.reload()).status == "loaded"
            second = served.current
            assert second is not None
            assert_same_answer(await second.predict(Query(LONG)), expected(2, LONG))
            assert forks(second) == 0  # v1 is still answering a request: no fork
            models.open_gate()
            await held
            del first, held
            for _ in range(1_000):  # once v1 is retired, v2 forks
                await in_process(second, LONG)
                if forks(second):
                    break
                await asyncio.sleep(0.01)
            assert forks(second) == 1
        finally:
            models.open_gate()
            await served.aclose()

    asyncio.run(scenario())


def test_a_retired_model_is_freed_though_it_was_frozen_at_start_up_in_a_cycle(
    store_dir: Path, models: RandomModels
) -> None:
    # The app freezes start-up's objects out of the collector's sight (gc.freeze), the first
    # model among them. A model in a reference cycle is freed only by the collector.
    async def scenario() -> None:
        served = manager(store_dir, models, model_process=False)
        await served.start()
        first = models.made[1]()
        assert first is not None
        first.held.append(first)
        del first
        gc.freeze()
        try:
            publish(store_dir, 2)
            assert (await served.reload()).status == "loaded"
            await eventually(lambda: models.made[1]() is None)
        finally:
            gc.unfreeze()
            await served.aclose()

    asyncio.run(scenario())


def test_a_refused_version_is_not_retried_until_its_folder_changes(
    store_dir: Path, models: RandomModels, caplog: pytest.LogCaptureFixture
) -> None:
    models.broken.add(2)

    async def scenario() -> None:
        served = manager(store_dir, models, model_process=False)
        await served.start()
        try:
            publish(store_dir, 2)
            for _ in range(5):  # five polls
                outcome = await served.reload(force=False)
                assert outcome.status == "refused"
                assert outcome.reason == "m/2/weights.safetensors is missing"
            assert models.loaded == [1, 2]  # loaded once, not on every poll
            assert served.current is not None and served.current.info.version == 1
            assert [r.version for r in served.refusals()] == [2]
            # An admin request always tries again; a changed folder is tried again by a poll.
            assert (await served.reload()).status == "refused"
            assert models.loaded == [1, 2, 2]
            models.broken.clear()
            publish(store_dir, 2, note="fixed")
            assert (await served.reload(force=False)).status == "loaded"
            assert served.current.info.version == 2
            assert served.refusals() == []
        finally:
            await served.aclose()

    with caplog.at_level(logging.ERROR, logger="nextword"):
        asyncio.run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused model m v2" in r.getMessage()]
    assert len(refusals) == 1  # one log line, not one per poll
    assert "still serving v1" in refusals[0]


def test_a_model_that_loads_but_predicts_nonsense_is_refused(
    store_dir: Path, models: RandomModels
) -> None:
    models.nonsense.add(2)

    async def scenario() -> None:
        served = manager(store_dir, models, model_process=False)
        await served.start()
        try:
            publish(store_dir, 2)
            outcome = await served.reload()
            assert outcome.status == "refused"
            assert outcome.reason == (
                "m/2/weights.safetensors: the probe prediction gave a probability of nan "
                "(weights not finite?): copy the version folder again or retrain"
            )
            assert [r.version for r in served.refusals()] == [2]
            current = served.current
            assert current is not None and current.info.version == 1
            assert_same_answer(await current.predict(Query("w5 w6 ")), expected(1, "w5 w6 "))
            assert models.loaded == [1, 2]
            # Not kept: the refused model goes with the collector's next pass (until then the
            # probe's exception, in a reference cycle, holds it).
            await eventually(lambda: collected(models.made[2]))
        finally:
            await served.aclose()

    asyncio.run(scenario())


# --- through the API, with the trained tiny model ----------------------------------------------


def _copy_version(model: TinyModel, store_dir: Path, version: int) -> Path:
    target = store_dir / model.name / str(version)
    shutil.copytree(model.path, target)
    return target


def _child_processes() -> set[int]:
    """This process's children, as Linux lists them."""
    return {
        int(pid)
        for task in Path("/proc/self/task").iterdir()
        for pid in (task / "children").read_text().split()
    }


@pytest.fixture
def served(tiny_model: TinyModel, tmp_path: Path) -> Callable[..., TestClient]:
    """A TestClient factory for a copy of the tiny model as v1 of a fresh store."""
    _copy_version(tiny_model, tmp_path, 1)

    def make(**settings: Any) -> TestClient:
        app = create_app(
            Settings(
                model_store=tmp_path, model_name="tiny", admin_key=SecretStr(ADMIN_KEY), **settings
            )
        )
        return TestClient(app)

    return make


@pytest.mark.slow
def test_a_replaced_model_and_its_model_process_are_freed(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    _copy_version(tiny_model, tmp_path, 1)

    async def concurrent_requests(backend: Backend) -> int:
        """Forks in all: eight requests at once go to the model process as a batch."""
        await asyncio.gather(*(backend.predict(Query(f"the {i}")) for i in range(8)))
        return forks(backend)

    async def scenario() -> None:
        models = ModelManager(Settings(model_store=tmp_path, model_name="tiny", model_process=True))
        await models.start()
        gc.freeze()  # as the app's start-up does
        try:
            first = models.current
            assert first is not None
            before = _child_processes()
            assert await concurrent_requests(first) == 1
            (process,) = _child_processes() - before
            freed = weakref.ref(first)
            del first
            _copy_version(tiny_model, tmp_path, 2)
            assert (await models.reload()).status == "loaded"
            await eventually(lambda: freed() is None)
            assert process not in _child_processes()  # its model process ended with it
            second = models.current
            assert second is not None and second.info.version == 2
            for _ in range(1_000):  # v2's process is forked once v1's retirement has ended
                if await concurrent_requests(second):
                    break
                await asyncio.sleep(0.01)
            assert forks(second) == 1
        finally:
            gc.unfreeze()
            await models.aclose()

    asyncio.run(scenario())


def _served_version(client: TestClient) -> int:
    version: int = client.get("/ready").json()["model"]["version"]
    return version


@pytest.mark.slow
def test_a_broken_new_version_is_refused_and_the_old_one_keeps_serving(
    served: Callable[..., TestClient],
    tiny_model: TinyModel,
    tmp_path: Path,
    break_model: Callable[[Path], str],
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
        assert str(tmp_path) not in refused["reason"]
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

    def counting_load(
        model_store: Path, name: str, version: int, cache_size: int, blocklist: Blocklist | None
    ) -> Predictor:
        loads.append(version)
        return real_load(model_store, name, version, cache_size=cache_size, blocklist=blocklist)

    monkeypatch.setattr(manager_module, "load_predictor", counting_load)
    with served(reload_interval_s=0.05) as client:
        _break_sha(_copy_version(tiny_model, tmp_path, 2))
        _wait_for(lambda: client.get("/models").json()["refused"])
        time.sleep(0.3)  # several more polls
        assert loads.count(2) == 1 and _served_version(client) == 1

        _copy_version(tiny_model, tmp_path, 3)
        _wait_for(lambda: _served_version(client) == 3)
        body = client.get("/models").json()
        assert [model["version"] for model in body["models"]] == [3]
        assert [r["version"] for r in body["refused"]] == [2]
        assert client.post("/predict", json={"text": "the cat"}).json()["model"] == {
            "name": "tiny",
            "version": 3,
        }


@pytest.mark.slow
def test_a_version_that_links_outside_the_store_is_refused(
    served: Callable[..., TestClient], tiny_model: TinyModel, tmp_path: Path
) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    shutil.copytree(tiny_model.path, outside)
    try:
        with served() as client:
            (tmp_path / "tiny" / "5").symlink_to(outside, target_is_directory=True)
            response = client.post("/admin/reload", params={"version": 5}, headers=ADMIN)
            assert response.status_code == 409
            assert "outside the model store" in response.json()["message"]
            # and 'latest' (now 5) is refused the same way, whatever the admin asks
            assert client.post("/admin/reload", headers=ADMIN).status_code == 409
            assert _served_version(client) == 1
    finally:
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
