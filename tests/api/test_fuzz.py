"""Fuzzing the API from its own OpenAPI document with schemathesis: every operation, valid and
invalid input, with and without keys. No answer may be a 5xx, and every answer must match what
the document promises (status, content type, headers, body schema)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig
from support.models import TinyModel

from app.api.app import create_app
from app.settings import Settings

pytestmark = pytest.mark.slow

API_KEY = "fuzz-api-key-0123456789"
ADMIN_KEY = "fuzz-admin-key-0123456789"
# Either header may carry a key (app.api.security): this pair opens the model routes and the
# admin routes alike. Schemathesis also sends requests without them (its `ignored_auth` check).
KEYS = {"X-API-Key": API_KEY, "Authorization": f"Bearer {ADMIN_KEY}"}

# 413 is how this API rejects a body over NEXTWORD_MAX_BODY_BYTES (documented on /predict);
# schemathesis does not count it as a rejection by default. A schema-valid text can reach it
# when every character is sent as a JSON escape (6 bytes a character).
CONFIG = SchemathesisConfig.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

[checks.positive_data_acceptance]
expected-statuses = ["2XX", 401, 403, 404, 409, 413]
"""
)


@pytest.fixture(scope="module")
def api_schema(tiny_model: TinyModel) -> Iterator[Any]:
    app = create_app(
        Settings(
            model_store=tiny_model.store,
            model_name=tiny_model.name,
            model_version="latest",
            api_key=SecretStr(API_KEY),
            admin_key=SecretStr(ADMIN_KEY),
        )
    )
    # from_asgi runs the app's lifespan itself (the model is loaded) and calls it in-process.
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    # Shown with `pytest -s`: what the fuzzing reached, by operation and status.
    for (operation, status), count in sorted(ANSWERS.items()):
        print(f"fuzz: {operation:<22} {status}  x{count}")


ANSWERS: Counter[tuple[str, int]] = Counter()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,  # a contended CI machine must not turn slowness into failures
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples every run: a failure can be reproduced
    database=None,  # nothing written to .hypothesis/
)
def test_api_matches_its_schema(case: Any) -> None:
    response = case.call_and_validate(headers=KEYS)
    ANSWERS[f"{case.method} {case.path}", response.status_code] += 1
