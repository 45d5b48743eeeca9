"""The error answers as the OpenAPI document shows them: what each status means here, with an
example body (`documented(...)`, passed as a route's `responses=`)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from app.api.errors import ErrorResponse

_TOO_LONG = "10001 characters is more than the 10000 this server accepts"
# status: (when, an example body)
_DOCUMENTED: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "The body could not be read: not UTF-8 (UTF-16 and UTF-32 included), nested too deep "
        "to parse, or a Content-Length that is not a number.",
        {"error": "bad_request", "message": "There was an error parsing the body", "fields": []},
    ),
    408: (
        "The body did not arrive within NEXTWORD_BODY_TIMEOUT_S; the connection is closed.",
        {
            "error": "request_timeout",
            "message": "the body did not arrive within 5 s (NEXTWORD_BODY_TIMEOUT_S)",
            "fields": [],
        },
    ),
    413: (
        "The body is larger than NEXTWORD_MAX_BODY_BYTES.",
        {"error": "payload_too_large", "message": "the body is over 65536 bytes", "fields": []},
    ),
    415: (
        "The body is not sent as `application/json`.",
        {
            "error": "unsupported_media_type",
            "message": "send the body as JSON with Content-Type: application/json "
            "(got 'text/plain')",
            "fields": [],
        },
    ),
    431: (
        "More than 100 headers, or more than 16 KiB of them.",
        {
            "error": "request_header_fields_too_large",
            "message": "at most 100 headers and 16384 bytes of them (got 120, 2400 bytes)",
            "fields": [],
        },
    ),
    422: (
        "A field is missing, unknown, of the wrong type or out of range; `fields` names it.",
        {
            "error": "invalid_request",
            "message": f"text: {_TOO_LONG}",
            "fields": [{"field": "text", "message": _TOO_LONG, "type": "too_long"}],
        },
    ),
    401: (
        "The key is missing or wrong: send it as `X-API-Key: <key>` or "
        "`Authorization: Bearer <key>`.",
        {"error": "unauthorized", "message": "this route needs an API key", "fields": []},
    ),
    409: (
        "The version failed its checks and is not served; the model served before still is.",
        {
            "error": "model_refused",
            "message": "tiny/2/weights.safetensors does not match the sha256 in its manifest",
            "fields": [],
        },
    ),
    503: (
        "`overloaded`: NEXTWORD_MAX_IN_FLIGHT requests are already being answered, or "
        "`model_not_ready`: the model is not loaded (starting or stopping). Retry after the "
        "`Retry-After` seconds.",
        {
            "error": "overloaded",
            "message": "the server is answering 128 requests already; retry after 1 s",
            "fields": [],
        },
    ),
    504: (
        "The answer took longer than NEXTWORD_PREDICT_TIMEOUT_S.",
        {
            "error": "timeout",
            "message": "no answer within 10 s (NEXTWORD_PREDICT_TIMEOUT_S); retry later",
            "fields": [],
        },
    ),
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses: the ErrorResponse schema, an example."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {
            "model": ErrorResponse,
            "description": _DOCUMENTED[status][0],
            "content": {"application/json": {"example": _DOCUMENTED[status][1]}},
        }
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            responses[status]["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
    return responses
