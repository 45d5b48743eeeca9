"""Nothing secret in the logs: a real server's access log shows method, path and status only,
never a query string (where a careless client may put a key) nor the client's address."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest
from support.models import TinyModel
from support.server import serving

from app.serve_cli import AccessLogRedaction

pytestmark = pytest.mark.slow

API_KEY = "the-real-api-key-0123456789"
SECRETS = ["SECRETVALUE123", "abc", API_KEY, "hunter2hunter2hunter2"]


def test_access_log_has_no_query_string_nor_client_address(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_API_KEY", API_KEY)
    monkeypatch.setenv("NEXTWORD_LOG_LEVEL", "debug")  # the most the server ever logs
    body = {"text": "the cat", "top_k": 1}
    with serving(tiny_model, tmp_path) as server:
        # A key in the URL is refused, whether it is wrong or the real one.
        for key in ("SECRETVALUE123", API_KEY):
            answer = httpx.post(f"{server.url}/predict?api_key={key}", json=body, timeout=5)
            assert answer.status_code == 401, answer.text
            assert key not in answer.text
        health = httpx.get(f"{server.url}/health?token=abc", timeout=5)
        assert health.status_code == 200
        answer = httpx.get(f"{server.url}/nowhere?password=hunter2hunter2hunter2", timeout=5)
        assert answer.status_code == 404
        answer = httpx.post(
            f"{server.url}/predict?x=1", json=body, headers={"X-API-Key": API_KEY}, timeout=5
        )
        assert answer.status_code == 200, answer.text
    output = server.output()
    lines = output.splitlines()
    for secret in SECRETS:
        assert [line for line in lines if secret in line] == [], output
    assert "?" not in "".join(line for line in lines if re.search(r" [A-Z]+ /", line)), output
    # Method, path and status, and nothing else.
    assert re.search(r"^INFO: +POST /predict 401$", output, re.MULTILINE), output
    assert re.search(r"^INFO: +GET /health 200$", output, re.MULTILINE), output
    assert re.search(r"^INFO: +GET /nowhere 404$", output, re.MULTILINE), output
    assert re.search(r"^INFO: +POST /predict 200$", output, re.MULTILINE), output
    assert "127.0.0.1:" not in output.replace(server.url, "")
    assert "Traceback" not in output


def test_an_upgrade_request_is_answered_as_http_with_one_warning(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    """The server has no WebSocket routes and loads no WebSocket library: a request asking to
    upgrade (a WebSocket handshake, curl --http2's h2c) is answered as the HTTP request it is,
    with uvicorn's one warning and not its advice to install a WebSocket library."""
    upgrades = [
        {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
         "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": ""},
    ]  # fmt: skip
    with serving(tiny_model, tmp_path) as server:
        for headers in upgrades:
            answer = httpx.get(f"{server.url}/health", headers=headers, timeout=5)
            assert answer.status_code == 200, answer.text
    output = server.output()
    assert output.count("Unsupported upgrade request.") == 2, output
    assert "WebSocket library" not in output, output


def _record(*args: object, msg: str = '%s - "%s %s HTTP/%s" %d') -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)


def test_the_filter_rewrites_the_record_itself() -> None:
    """Every handler of uvicorn.access sees the redacted record, not only the server's own."""
    record = _record("10.0.0.7:51234", "POST", "/predict?api_key=SECRETVALUE123", "1.1", 401)
    assert AccessLogRedaction().filter(record) is True
    assert record.getMessage() == "POST /predict 401"
    assert "SECRETVALUE123" not in repr(record.__dict__)
    assert "10.0.0.7" not in repr(record.__dict__)


def test_a_record_of_another_shape_loses_its_query_strings() -> None:
    record = _record("/a?token=abc", "b?key=SECRETVALUE123", msg='%s "GET %s"')
    AccessLogRedaction().filter(record)
    assert record.getMessage() == '/a "GET b"'
