"""The error contract as a client sees it: one JSON shape for every refusal."""

from __future__ import annotations

from typing import Any

import httpx


def assert_client_error(response: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    """`response` is a `status` with the error body, naming `field` first when one is given;
    the body, for more checks."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "fields"} and body["message"]
    if field is not None:
        assert field in [f["field"] for f in body["fields"]]
        assert body["message"].startswith(f"{field}:")
    return body
