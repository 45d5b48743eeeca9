"""app.logs.JsonFormatter: one JSON object a line, with the request's fields and id."""

from __future__ import annotations

import json
import logging
import re
import sys

from app.logs import REQUEST_ID, JsonFormatter


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("nextword", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("serving model %s v%d", "ptb", 3))
    entry = json.loads(line)
    assert entry.keys() == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"]) == ("warning", "nextword")
    assert entry["message"] == "serving model ptb v3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_an_access_line_has_the_request_fields_in_order() -> None:
    fields = {"method": "POST", "path": "/predict", "status": 200, "duration_ms": 1.5}
    access = record("%s %s %d", "POST", "/predict", 200, **fields, request_id="abc")
    entry = json.loads(JsonFormatter().format(access))
    assert list(entry) == ["time", "level", "logger", "message", *fields, "request_id"]
    assert entry["message"] == "POST /predict 200" and entry["duration_ms"] == 1.5


def test_a_line_written_while_a_request_is_answered_carries_its_id() -> None:
    token = REQUEST_ID.set("0123456789abcdef")
    try:
        entry = json.loads(JsonFormatter().format(record("refused POST /predict: no key")))
    finally:
        REQUEST_ID.reset(token)
    assert entry["request_id"] == "0123456789abcdef"
    assert "request_id" not in json.loads(JsonFormatter().format(record("after")))


def test_a_traceback_stays_inside_its_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        failed = record("Exception in ASGI application")
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: bad\nvalue" in json.loads(line)["exception"]
