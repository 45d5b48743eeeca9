"""GET /metrics, read with prometheus-client's own parser after real requests to the app in
process (the lifespan run, the tiny model served); X-Request-ID on every answer."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.types import Message
from support.fakes import FakeBackend
from support.metrics import Scrape
from support.models import TinyModel

from app import store
from app.api.app import create_app
from app.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.slow  # the app loads the trained tiny model

METRICS_KEY = "metrics-key-with-enough-characters"
API_KEY = "api-key-with-enough-characters-1"
ADMIN_KEY = "admin-key-with-enough-characters-2"
# Typed on word by word, and sent twice: the reading cache keeps what was read.
TEXTS = ["the cat", "the cat sees", "the cat sees the ", "the dog ", "the cat sees the "]


def scrape(client: TestClient, **headers: str) -> Scrape:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape.parse(response.text)


def test_the_metrics_count_every_answer_the_app_gave(
    tiny_model: TinyModel, settings_for: Callable[..., Settings]
) -> None:
    with TestClient(create_app(settings_for(tiny_model)), raise_server_exceptions=False) as client:
        for text in TEXTS:
            assert client.post("/predict", json={"text": text}).status_code == 200
        assert client.post("/score", json={"text": "the cat sees the ball"}).status_code == 200
        for _ in range(3):
            assert client.get("/health").status_code == 200
        assert client.get("/nowhere/at/all?key=abc").status_code == 404
        assert client.get("/nowhere/else").status_code == 404
        assert client.get("/predict").status_code == 405
        assert client.post("/predict", content="the cat").status_code == 415  # not JSON
        assert client.post("/predict", json={"text": "the", "top_k": 0}).status_code == 422
        metrics = scrape(client)

    answers = {
        ("/predict", "200"): len(TEXTS), ("/score", "200"): 1, ("/health", "200"): 3,
        ("other", "404"): 2, ("/predict", "405"): 1, ("/predict", "415"): 1,
        ("/predict", "422"): 1,
    }  # fmt: skip
    found = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for sample in metrics.matching("nextword_requests_total")
    }
    assert found == answers  # (the scrape itself is counted once it has answered)
    refused = {key: count for key, count in answers.items() if int(key[1]) >= 400}
    assert {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for sample in metrics.matching("nextword_refusals_total")
    } == refused
    for route in ("/predict", "/score", "/health", "other"):
        sent = sum(count for (where, _), count in answers.items() if where == route)
        buckets = metrics.buckets("nextword_request_duration_seconds", route=route)
        assert buckets[0][0] <= 0.0001 and buckets[-1] == (math.inf, sent)  # sub-millisecond
        assert [count for _, count in buckets] == sorted(count for _, count in buckets)
        assert metrics.total("nextword_request_duration_seconds_count", route=route) == sent
        assert metrics.total("nextword_request_duration_seconds_sum", route=route) > 0
    assert metrics.total("nextword_requests_in_flight") == 0

    version = str(tiny_model.version)
    assert metrics.total("nextword_model_info", name="tiny", version=version) == 1
    assert metrics.total("nextword_model_loads_total", model="tiny", version=version) == 1
    assert metrics.matching("nextword_model_refusals_total") == []
    # Each text predicted was one batch here (one request at a time), each looked up once in
    # the reading cache; the score read its text (a look-up too).
    assert metrics.total("nextword_batch_size_count", model="tiny") == len(TEXTS)
    assert metrics.total("nextword_batch_size_sum", model="tiny") == len(TEXTS)
    assert metrics.buckets("nextword_batch_size", model="tiny")[0] == (1.0, len(TEXTS))
    hits = metrics.total("nextword_prefix_cache_hits_total", model="tiny")
    misses = metrics.total("nextword_prefix_cache_misses_total", model="tiny")
    assert hits + misses == len(TEXTS) + 1
    assert hits >= 3  # typed on from a text kept, and the same text again
    assert metrics.total("process_resident_memory_bytes") > 0
    assert metrics.types["nextword_requests"] == "counter"
    assert metrics.types["nextword_request_duration_seconds"] == "histogram"


def _copy_version(model: TinyModel, store_dir: Path, version: int) -> Path:
    target = store_dir / model.name / str(version)
    shutil.copytree(model.path, target)
    return target


def test_model_loads_and_refusals_are_counted_by_version(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    _copy_version(tiny_model, tmp_path, 1)
    settings = Settings(model_store=tmp_path, model_name="tiny", admin_key=SecretStr(ADMIN_KEY))
    admin = {"X-API-Key": ADMIN_KEY}
    with TestClient(create_app(settings)) as client:
        _copy_version(tiny_model, tmp_path, 2)
        (_copy_version(tiny_model, tmp_path, 3) / store.WEIGHTS).unlink()
        assert client.post("/admin/reload", params={"version": 2}, headers=admin).is_success
        for _ in range(2):  # an admin asks twice: refused twice
            reload = client.post("/admin/reload", params={"version": 3}, headers=admin)
            assert reload.status_code == 409
        metrics = scrape(client)
    loads = metrics.matching("nextword_model_loads_total", model="tiny")
    assert {sample.labels["version"]: sample.value for sample in loads} == {"1": 1, "2": 1}
    refusals = metrics.matching("nextword_model_refusals_total", model="tiny")
    assert {sample.labels["version"]: sample.value for sample in refusals} == {"3": 2}
    (served,) = metrics.matching("nextword_model_info")
    assert served.labels == {"name": "tiny", "version": "2"} and served.value == 1


# --- who may read them ---------------------------------------------------------------------------


def test_metrics_are_open_like_health_when_no_metrics_key_is_set(
    tiny_model: TinyModel, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for(tiny_model, api_key=SecretStr(API_KEY))
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json={"text": "the cat"}).status_code == 401
        metrics = scrape(client)  # no key
        document = client.get("/openapi.json").json()
    assert metrics.total("nextword_requests_total", route="/predict", status="401") == 1
    assert "security" not in document["paths"]["/metrics"]["get"]
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-API-Key": METRICS_KEY}, 200),
        ({"Authorization": f"Bearer {METRICS_KEY}"}, 200),  # what Prometheus sends
        ({}, 401),
        ({"X-API-Key": API_KEY}, 401),  # the prediction key is not the metrics key
        ({"X-API-Key": METRICS_KEY[:-1]}, 401),
    ],
)
def test_the_metrics_key_guards_metrics_when_set(
    tiny_model: TinyModel,
    settings_for: Callable[..., Settings],
    headers: dict[str, str],
    status: int,
) -> None:
    settings = settings_for(
        tiny_model, api_key=SecretStr(API_KEY), metrics_key=SecretStr(METRICS_KEY)
    )
    app = create_app(settings)
    with TestClient(app) as client:
        response = client.get("/metrics", headers=headers)
        assert response.status_code == status, response.text
        assert METRICS_KEY not in response.text
        assert client.get("/health").status_code == 200  # the probes stay open
        assert client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"metrics_key": ADMIN_KEY, "admin_key": ADMIN_KEY}, "must differ from NEXTWORD_METRICS"),
        ({"metrics_key": "short"}, r"NEXTWORD_METRICS_KEY .*at least 16 characters"),
        ({"log_format": "xml"}, r"NEXTWORD_LOG_FORMAT .*'text' or 'json'"),
    ],
)
def test_bad_metrics_and_log_settings_stop_the_server_in_one_line(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as refused:
        load_settings(**given)
    assert ADMIN_KEY not in str(refused.value)


def test_the_log_format_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXTWORD_LOG_FORMAT", "JSON")
    assert load_settings().log_format == "json"


# --- X-Request-ID --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        "abc-123",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "Root=1-5759e988-bd862e3fe1be46a9",
        "x" * 128,
    ],
)
def test_a_well_formed_request_id_is_kept(fake_client: TestClient, sent: str) -> None:
    for response in (
        fake_client.post("/predict", json={"text": "a"}, headers={"X-Request-ID": sent}),
        fake_client.get("/nowhere", headers={"X-Request-ID": sent}),
    ):
        assert response.headers["x-request-id"] == sent


@pytest.mark.parametrize(
    "sent",
    [
        "x" * 129,  # too long
        "two words",
        "semi;colon",
        'quote"d',
        "tab\there",
        "bell\x07",
        "caf\xe9",  # (Latin-1 on the wire)
        "",
    ],
)
def test_a_malformed_request_id_is_replaced_never_echoed(
    fake_client: TestClient, sent: str
) -> None:
    response = fake_client.post(
        "/predict", json={"text": "a"}, headers=[("X-Request-ID", sent.encode("latin-1"))]
    )
    assert response.status_code == 200
    made = response.headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{16}", made) and made != sent


def test_every_answer_carries_a_request_id_of_its_own(
    fake_client: TestClient, fake_backend: FakeBackend
) -> None:
    answers = [
        fake_client.post("/predict", json={"text": "a"}),  # 200
        fake_client.get("/health"),  # 200
        fake_client.get("/nowhere"),  # 404
        fake_client.post("/predict", content="a"),  # 415, refused by a middleware
        fake_client.post("/predict", content="x" * 70_000, headers=_json()),  # 413
        fake_client.post("/predict", json={"top_k": 2}),  # 422
    ]
    fake_backend.fails = RuntimeError("a bug")
    answers.append(fake_client.post("/predict", json={"text": "a"}))  # 500
    assert [answer.status_code for answer in answers] == [200, 200, 404, 415, 413, 422, 500]
    ids = [answer.headers["x-request-id"] for answer in answers]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch("[0-9a-f]{16}", made) for made in ids)
    assert all(len(answer.headers.get_list("x-request-id")) == 1 for answer in answers)


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_a_request_whose_client_went_away_is_counted_as_499_not_as_refused(
    fake_client: TestClient,
) -> None:
    async def gone() -> Message:
        return {"type": "http.disconnect"}  # before its body arrived

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": "/predict",
        "raw_path": b"/predict", "query_string": b"", "scheme": "http", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "server": ("test", 80), "client": ("test", 1),
    }  # fmt: skip
    asyncio.run(asyncio.wait_for(fake_client.app(scope, gone, send), 10))
    assert sent == []  # nobody to answer
    metrics = scrape(fake_client)
    assert metrics.total("nextword_requests_total", route="/predict", status="499") == 1
    assert metrics.matching("nextword_refusals_total") == []
