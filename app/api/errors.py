"""Every error the API answers with, and the one place where errors become HTTP responses.

All error bodies have one shape, `ErrorResponse`:

    {"error": "invalid_request", "message": "text: ...", "fields": [{"field": "text", ...}]}

    RequestValidationError (pydantic)  422 invalid_request  a field missing, wrong or too long;
                                                            the body not JSON (field `body`)
    a number too long to read          422 invalid_request  e.g. top_k of 5,000 digits
    TextTooLong                        422 invalid_request  text over NEXTWORD_MAX_TEXT_CHARS
    TextHasNoWord                      422 invalid_request  POST /score: no word to score
    UnknownModel (app.serving)         422 invalid_request  `model` names no served model
    (BodyLimits middleware)            415 unsupported_media_type, 413 payload_too_large,
                                       431 request_header_fields_too_large
    (BodyDeadline middleware)          408 request_timeout      the body came too slowly;
                                       400 bad_request          a body in UTF-16 or UTF-32
    Unauthorized                       401 unauthorized         no or a wrong API / admin key
    ModelRefused                       409 model_refused        POST /admin/reload: not served
    ModelNotReady                      503 model_not_ready
    (InFlightLimit middleware)         503 overloaded           with Retry-After
    PredictionTimedOut                 504 timeout              no answer within the time-out
    HTTPException (routing, parsing)   its status: not_found, method_not_allowed, bad_request
    anything else                      500 internal_error, no detail (the server log has it)
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.serving.registry import UnknownModel


class FieldError(BaseModel):
    field: str = Field(description="The field at fault, e.g. `text`; `body` for the whole body")
    message: str
    type: str = Field(description="A stable, machine-readable kind, e.g. `string_too_long`")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: str = Field(description="A stable, machine-readable code", examples=["invalid_request"])
    message: str = Field(description="What went wrong, for people")
    fields: list[FieldError] = Field(default_factory=list)


class ApiError(Exception):
    """A domain error with a fixed HTTP status; subclasses say which."""

    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"
    headers: ClassVar[dict[str, str]] = {}  # sent with the response; never mutated

    def __init__(self, message: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or []


class ModelNotReady(ApiError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_not_ready"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class Unauthorized(ApiError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="nextword"'}


class ModelRefused(ApiError):
    """A version asked for by POST /admin/reload failed its checks; the old one still serves."""

    status = HTTPStatus.CONFLICT
    code = "model_refused"


class PredictionTimedOut(ApiError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    code = "timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"no answer within {seconds:g} s (NEXTWORD_PREDICT_TIMEOUT_S); retry later, or with "
            "a shorter text"
        )


class TextTooLong(ApiError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_request"

    def __init__(self, length: int, limit: int) -> None:
        reason = f"{length} characters is more than the {limit} this server accepts"
        field = FieldError(field="text", message=reason, type="too_long")
        super().__init__(f"text: {reason}", [field])


class TextHasNoWord(ApiError):
    """POST /score of a text that reads as no word: there is nothing to score."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_request"

    def __init__(self) -> None:
        reason = "has no word to score (it is empty, or only spaces and line breaks)"
        field = FieldError(field="text", message=reason, type="no_word")
        super().__init__(f"text: {reason}", [field])


def error_json(
    status: int, code: str, message: str, fields: list[FieldError] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, fields=fields or [])
    return JSONResponse(body.model_dump(mode="json"), status_code=status)


def _field_name(location: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "text") -> "text"; ("query", "version") -> "version"; ("body",) or
    # ("body", 12) (a JSON syntax error) -> "body".
    parts = [str(part) for part in location[1:] if isinstance(part, str)]
    return ".".join(parts) if parts and location[0] in ("body", "query") else "body"


def _validation_fields(error: RequestValidationError) -> list[FieldError]:
    fields = []
    for item in error.errors():
        message = str(item.get("msg", "invalid"))
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON ({reason} at position {item['loc'][-1]})"
        fields.append(
            FieldError(field=_field_name(item["loc"]), message=message, type=str(item.get("type")))
        )
    return fields


def _invalid_request(fields: list[FieldError]) -> JSONResponse:
    message = "; ".join(f"{item.field}: {item.message}" for item in fields)
    return error_json(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_request", message, fields)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an ErrorResponse."""

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return _invalid_request(_validation_fields(error))

    @app.exception_handler(UnknownModel)
    async def on_unknown_model(request: Request, error: UnknownModel) -> JSONResponse:
        # The body's `model` (/predict, /score) or the query's (/admin/reload): one field name.
        reason = f"no model {error.name!r} is served here; the models served are " + ", ".join(
            error.served
        )
        return _invalid_request([FieldError(field="model", message=reason, type="unknown_model")])

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        response = error_json(error.status, error.code, error.message, error.fields)
        response.headers.update(error.headers)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def on_http_exception(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == HTTPStatus.BAD_REQUEST and _number_too_long(error.__cause__):
            # The body is valid JSON, but Python refuses to read an integer of over 4,300
            # digits (sys.get_int_max_str_digits) and FastAPI answers 400 naming no field.
            # The route read the body before failing: request.body() has it.
            fields = _long_number_fields(await request.body())
            if fields:
                return _invalid_request(fields)
        status = HTTPStatus(error.status_code)
        code = status.phrase.lower().replace(" ", "_").replace("-", "_")
        response = error_json(status, code, str(error.detail))
        response.headers.update(error.headers or {})  # e.g. Allow, on a 405
        return response

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        # Never a traceback to the client. Starlette re-raises after this response is sent, so
        # the server's log still shows the whole traceback.
        return error_json(500, "internal_error", "internal server error")


def _number_too_long(cause: BaseException | None) -> bool:
    return type(cause) is ValueError and "integer string conversion" in str(cause)


class _LongNumber(int):
    """An integer too long to read, kept as its number of digits."""


def _long_number_fields(body: bytes) -> list[FieldError]:
    """The fields of `body` holding integers too long to read; [] if it cannot be read."""

    def bounded(digits: str) -> int:
        try:
            return int(digits)
        except ValueError:
            return _LongNumber(len(digits.lstrip("-")))

    try:
        document = json.loads(body, parse_int=bounded)
    except (ValueError, RecursionError):
        return []
    fields, stack = [], [(document, "")]
    while stack:  # not recursive: the document may be deep
        value, path = stack.pop()
        if isinstance(value, _LongNumber):
            message = f"a number of {int(value)} digits is out of range"
            fields.append(FieldError(field=path or "body", message=message, type="number_too_long"))
        elif isinstance(value, dict):
            stack.extend((item, f"{path}.{key}" if path else key) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, path) for item in value)
    return fields[::-1]
