"""Log lines as JSON, one object a line (NEXTWORD_LOG_FORMAT=json), and the request id they carry.

    {"time": "2026-12-01T05:16:00.123Z", "level": "info", "logger": "nextword.access",
     "message": "POST /predict 200", "method": "POST", "path": "/predict", "status": 200,
     "duration_ms": 1.234, "request_id": "3f2a9c0d41b7e685"}

Every line has time (UTC), level, logger and message; a request's access line (written by
app.api.telemetry) adds method, path, status and duration_ms; any line written while a request
is answered has its request_id; an error's traceback is in `exception`. The text format
(the default) is uvicorn's. Neither ever holds a key, a body (the texts users type), a query
string, a header or a client's address: the app does not log them.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

# The id of the request being answered, in the task answering it (set by app.api.telemetry).
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# What an access line adds to a log record (`extra=`), in the order shown.
REQUEST_FIELDS = ("method", "path", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON (non-ASCII characters escaped: any log pipeline reads
    it, and no control character can start a line of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = (0, "")  # the last second written, and its text

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self._utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in REQUEST_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        request_id = fields.get("request_id") or REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)

    def _utc(self, created: float) -> str:
        """`created` (Unix time) in ISO 8601, UTC, to the millisecond: 2026-12-01T05:16:00.123Z.
        The date and time are made once a second (one tuple: safe across threads)."""
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int((created - second) * 1000):03d}Z"
