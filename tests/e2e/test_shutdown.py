"""The server under load: past its limit it refuses at once, past the time-out it answers 504,
and on SIGTERM a real `nextword serve` stops accepting, answers every request it had accepted
in full, and exits with status 0."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support.fakes import FakeModels
from support.models import OBJECTS, SUBJECTS, VERBS, TinyModel
from support.server import REPO, serving

from app.api.app import create_app
from app.api.routes import get_models
from app.inference.predictor import ModelInfo, Prediction, Query
from app.settings import Settings

pytestmark = pytest.mark.slow

# --- overload and time-outs: refused at once, never queued without bound -----------------------


class BlockingBackend:
    """A stand-in backend that holds every prediction until `release` is set (or 10 s pass)."""

    info = ModelInfo("blocking", 1, Path("blocking/1"), 3, {}, {})

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.texts: list[str] = []

    async def predict(self, query: Query) -> Prediction:
        self.started += 1
        self.texts.append(query.text)
        async with asyncio.timeout(10):
            await self.release.wait()
        return Prediction(("word",), (1.0,), ("<eos>",), ())


def _app_with(backend: BlockingBackend, tiny_model: TinyModel, **settings: Any) -> Any:
    app = create_app(Settings(model_store=tiny_model.store, model_name=tiny_model.name, **settings))
    app.dependency_overrides[get_models] = lambda: FakeModels(backend)
    return app


def test_past_max_in_flight_the_answer_is_503_at_once(tiny_model: TinyModel) -> None:
    blocking = BlockingBackend()
    app = _app_with(blocking, tiny_model, max_in_flight=2)

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [
                asyncio.create_task(client.post("/predict", json={"text": f"held {n}"}))
                for n in range(2)
            ]
            async with asyncio.timeout(10):
                while blocking.started < 2:  # both are inside the backend now
                    await asyncio.sleep(0.01)
            refused = await client.post("/predict", json={"text": "one too many"})
            health = await client.get("/health")  # probes are never refused
            blocking.release.set()
            return await asyncio.gather(*held), refused, health

    held, refused, health = asyncio.run(scenario())
    assert [response.status_code for response in held] == [200, 200]
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "overloaded"
    assert health.status_code == 200
    assert sorted(blocking.texts) == ["held 0", "held 1"]  # not the third


def test_a_prediction_past_its_time_out_is_a_504(tiny_model: TinyModel) -> None:
    blocking = BlockingBackend()
    app = _app_with(blocking, tiny_model, predict_timeout_s=0.2)
    with TestClient(app) as client:
        response = client.post("/predict", json={"text": "slow"})
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "timeout"
    assert "NEXTWORD_PREDICT_TIMEOUT_S" in response.json()["message"]
    assert blocking.texts == ["slow"]


# --- graceful shutdown ------------------------------------------------------------------------


IN_FLIGHT = 8
# ~100k words: about half a second of forward pass each, so they are still running at SIGTERM.
WORDS_PER_REQUEST = 100_000


def _long_text(seed: int) -> str:
    # A different text for each request: no cache can answer one from another. A trailing
    # space: the next word is predicted (over the whole vocabulary, top_k of them).
    words = " ".join(SUBJECTS + VERBS + OBJECTS).split()
    return " ".join(random.Random(seed).choices(words, k=WORDS_PER_REQUEST)) + " "


def _wait_until_in_flight(url: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    seen = -1
    while time.monotonic() < deadline:
        seen = httpx.get(url + "/health", timeout=5).json()["in_flight"]
        if seen >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"only {seen} of {count} requests in flight after {within} s")


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_MAX_TEXT_CHARS", "1000000")
    monkeypatch.setenv("NEXTWORD_MAX_BODY_BYTES", str(4 * 1024 * 1024))
    monkeypatch.setenv("NEXTWORD_PREDICT_TIMEOUT_S", "120")  # slow machines: no 504 here
    monkeypatch.setenv("NEXTWORD_SHUTDOWN_TIMEOUT_S", "120")  # nor a cut-off drain
    bodies = [{"text": _long_text(seed), "top_k": 3} for seed in range(IN_FLIGHT)]

    def ask(url: str, body: dict[str, object]) -> tuple[httpx.Response, float]:
        response = httpx.post(url + "/predict", json=body, timeout=120)
        return response, time.monotonic()

    with serving(tiny_model, tmp_path) as server, ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures = [pool.submit(ask, server.url, body) for body in bodies]
        # SIGTERM once the server is answering all of them: a connection it has not read a
        # request from yet is closed at shutdown (uvicorn's rule), which is not what we test.
        _wait_until_in_flight(server.url, IN_FLIGHT, within=60)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(server.url + "/health", timeout=2)
        results = [future.result(timeout=120) for future in futures]
        status = server.process.wait(timeout=120)

    for response, _ in results:
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 3  # a complete body
    finished_after_signal = sum(done > signalled for _, done in results)
    print(f"{finished_after_signal} of {IN_FLIGHT} requests finished after SIGTERM")
    assert finished_after_signal >= 1, "no request was still in flight at SIGTERM"
    assert status == 0
    log = server.output()
    assert "Waiting for background tasks to complete" in log or "Shutting down" in log
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


def test_a_port_already_taken_is_a_start_up_failure_exit_3(tiny_model: TinyModel) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "app.cli", "serve", "--store", str(tiny_model.store),
            "--name", tiny_model.name, "--port", str(port),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "address already in use" in result.stderr.lower()
