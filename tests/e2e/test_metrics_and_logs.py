"""A real `nextword serve` (its model process forked) under a short concurrent load: /metrics
read with prometheus-client's parser matches the load sent, counts made in the model process
included; with NEXTWORD_LOG_FORMAT=json its whole log is JSON, one access line a request with
its id and time, and never a key, a typed text or a query string."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.metrics import Scrape
from support.models import TinyModel
from support.server import serving

pytestmark = pytest.mark.slow

API_KEY = "e2e-api-key-0123456789abcdef"
# An unknown word in every text: it must never reach the log.
TYPED = "zyxqwv"
TEXTS = [
    f"{subject} {TYPED} {verb} " for subject in ("the cat", "a bird", "our neighbour")
    for verb in ("sees", "likes", "helps", "watches")
]  # fmt: skip
ROUNDS = 10  # each text sent this many times: the reading caches keep them
CONCURRENCY = 16  # several requests at once: batches go to the model process


async def load(url: str) -> list[int]:
    """Every text ROUNDS times, CONCURRENCY at a time; the statuses."""
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(text: str) -> int:
            async with gate:
                answer = await client.post(
                    "/predict", json={"text": text, "top_k": 2}, headers={"X-API-Key": API_KEY}
                )
                return answer.status_code

        return await asyncio.gather(*(one(text) for text in TEXTS * ROUNDS))


def test_metrics_match_the_load_and_the_json_log_has_a_line_per_request(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_LOG_FORMAT", "json")
    monkeypatch.setenv("NEXTWORD_API_KEY", API_KEY)
    sent = len(TEXTS) * ROUNDS
    with serving(tiny_model, tmp_path) as server:
        assert asyncio.run(load(server.url)) == [200] * sent
        traced = httpx.get(f"{server.url}/health", headers={"X-Request-ID": "trace-42"}, timeout=5)
        assert traced.headers["x-request-id"] == "trace-42"
        too_long = "x" * 200
        replaced = httpx.get(f"{server.url}/health", headers={"X-Request-ID": too_long}, timeout=5)
        assert replaced.headers["x-request-id"] != too_long
        # A control character (no HTTP client library sends one: written by hand).
        head = _raw_get(server.url, b"/health", b"X-Request-ID: bad\x01id\r\n")
        assert b"bad\x01id" not in head
        refused = httpx.post(
            f"{server.url}/predict?api_key={API_KEY}", json={"text": TYPED}, timeout=5
        )
        assert refused.status_code == 401
        response = httpx.get(f"{server.url}/metrics", timeout=5)
        assert response.status_code == 200
    metrics = Scrape.parse(response.text)
    log = server.output()

    # The counters sum to the load sent.
    assert metrics.total("nextword_requests_total", route="/predict", status="200") == sent
    assert metrics.total("nextword_requests_total", route="/predict") == sent + 1
    assert metrics.total("nextword_refusals_total", route="/predict", status="401") == 1
    assert metrics.total("nextword_request_duration_seconds_count", route="/predict") == sent + 1
    assert metrics.total("nextword_batch_size_sum", model="tiny") == sent
    batches = metrics.total("nextword_batch_size_count", model="tiny")
    assert batches < sent  # some were computed together
    # Every text was looked up once in a reading cache, in the server or in the model process;
    # those made in the forked process came back with its answers.
    hits = metrics.total("nextword_prefix_cache_hits_total", model="tiny")
    misses = metrics.total("nextword_prefix_cache_misses_total", model="tiny")
    assert hits + misses == sent
    in_child = metrics.matching("nextword_prefix_cache_hits_total", process="model_process")
    in_child += metrics.matching("nextword_prefix_cache_misses_total", process="model_process")
    assert sum(sample.value for sample in in_child) > 0
    assert hits >= sent - 2 * len(TEXTS)  # each text read at most once in each process
    assert metrics.total("nextword_model_info", version=str(tiny_model.version)) == 1
    assert metrics.total("nextword_requests_in_flight") == 0

    # Every line of the log is one JSON object, uvicorn's included.
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"].startswith("serving model tiny") for entry in entries)
    access = [entry for entry in entries if entry["logger"] == "nextword.access"]
    predictions = [entry for entry in access if entry["path"] == "/predict"]
    assert len(predictions) == sent + 1
    for entry in predictions:
        assert entry["method"] == "POST" and entry["status"] in (200, 401)
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        assert len(entry["request_id"]) == 16
    assert len({entry["request_id"] for entry in predictions}) == sent + 1
    (health,) = [entry for entry in access if entry["request_id"] == "trace-42"]
    assert (health["path"], health["status"], health["message"]) == (
        "/health",
        200,
        "GET /health 200",
    )
    assert _request_ids(access, "/health") == {"trace-42", replaced.headers["x-request-id"]}
    # Never a key, a text typed, a query string or a refused request id.
    for secret in (API_KEY, TYPED, "api_key", too_long, "bad\\u0001id", "bad\x01id"):
        assert secret not in log
    assert "Traceback" not in log


def _raw_get(url: str, path: bytes, headers: bytes) -> bytes:
    """The head of the answer to a GET written byte by byte (b"" if the server closed first)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\r\n\r\n")[0]


def _request_ids(access: list[dict[str, Any]], path: str) -> set[str]:
    return {entry["request_id"] for entry in access if entry["path"] == path}
