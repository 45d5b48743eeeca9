"""Requests framed ambiguously or falsely, sent as raw bytes to a real `nextword serve`:
request smuggling (Content-Length and Transfer-Encoding together, two lengths, an obfuscated
Transfer-Encoding), Content-Length lies and malformed heads. Each gets one answer, the JSON error
body, and the connection is closed: nothing hidden in the body is ever answered as a request."""

from __future__ import annotations

import gzip
import json
import re
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from support.models import TinyModel
from support.server import Server, serving

pytestmark = pytest.mark.slow

BODY = b'{"text":"a"}'
HEAD = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
# A request hidden in the body: answered, it would be a 404 for /smuggled.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] \d{3} ")

CHUNKED = b"Transfer-Encoding: chunked\r\n"
END = b"0\r\n\r\n"  # the last chunk


def length(value: bytes) -> bytes:
    return b"Content-Length: " + value + b"\r\n"


REFUSED_BY_THE_HTTP_LAYER = {
    "CL.TE": HEAD + length(b"5") + CHUNKED + b"\r\n" + END + SMUGGLED,
    "TE.CL": HEAD + CHUNKED + length(b"4") + b"\r\n%x\r\n%s\r\n" % (len(SMUGGLED), SMUGGLED) + END,
    "two Content-Lengths": HEAD + length(b"12") + length(b"50") + b"\r\n" + BODY + SMUGGLED,
    "a list of lengths": HEAD + length(b"12, 12") + b"\r\n" + BODY,
    "Transfer-Encoding xchunked": HEAD
    + CHUNKED.replace(b" chunked", b" xchunked")
    + length(b"12")
    + b"\r\n"
    + BODY
    + SMUGGLED,
    "Transfer-Encoding with a space": HEAD
    + CHUNKED.replace(b":", b" :")
    + b"\r\n"
    + END
    + SMUGGLED,
    "chunked, identity": HEAD + CHUNKED.replace(b"chunked", b"chunked, identity") + b"\r\n" + END,
    "a negative length": HEAD + length(b"-1") + b"\r\n" + BODY,
    "a length of 26 digits": HEAD + length(b"9" * 26) + b"\r\n" + BODY,
    "a length with a sign": HEAD + length(b"+12") + b"\r\n" + BODY,
    "a length that is not a number": HEAD + length(b"abc") + b"\r\n" + BODY,
    "a length shorter than the body": HEAD + length(b"5") + b"\r\n" + BODY,
    "a chunk size of 20 digits": HEAD + CHUNKED + b"\r\n" + b"f" * 20 + b"\r\n",
    "lines ended by LF alone": (HEAD + length(b"12") + b"\r\n").replace(b"\r\n", b"\n") + BODY,
    "a folded header": HEAD + b"X-A: a\r\n b\r\n" + length(b"12") + b"\r\n" + BODY,
    "NUL in a header": HEAD + b"X-A: a\x00b\r\n" + length(b"12") + b"\r\n" + BODY,
    "a malformed request line": b"POST /predict HTTP/9\r\nHost: test\r\n\r\n",
}


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tiny_model, tmp_path_factory.mktemp("framing")) as running:
        yield running
    assert "Traceback" not in running.output()


def exchange(server: Server, raw: bytes) -> bytes:
    """Send `raw`, then read until the server closes the connection (or 3 s pass)."""
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=3) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65_536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            data += b"<still open>"
    return data


@pytest.mark.parametrize("raw", REFUSED_BY_THE_HTTP_LAYER.values(), ids=REFUSED_BY_THE_HTTP_LAYER)
def test_ambiguous_framing_is_one_400_with_the_error_body_then_closed(
    server: Server, raw: bytes
) -> None:
    answer = exchange(server, raw)
    assert len(STATUS_LINE.findall(answer)) == 1, answer  # nothing smuggled was answered
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/json" in head and b"connection: close" in head
    assert json.loads(body)["error"] == "bad_request"  # whole: the connection was closed after


def test_a_chunked_body_is_read_as_one(server: Server) -> None:
    chunked = CHUNKED + b"Connection: close\r\n\r\nc;ext=1\r\n%s\r\n" % BODY + END
    answer = exchange(server, HEAD + chunked)
    assert answer.startswith(b"HTTP/1.1 200 ") and len(STATUS_LINE.findall(answer)) == 1, answer


def test_a_length_longer_than_the_body_waits_for_the_body_deadline_only(server: Server) -> None:
    # The default deadline, 5 s: the answer is 408, not an endless wait.
    address = urlsplit(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(HEAD + length(b"100") + b"\r\n" + BODY)
        answer = sock.recv(65_536)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


@pytest.mark.parametrize(
    ("name", "body", "status"),
    [
        ("top_k 1e400 (infinity to Python)", b'{"text":"a","top_k":1e400}', 422),
        ("top_k NaN", b'{"text":"a","top_k":NaN}', 422),
        ("top_k -Infinity", b'{"text":"a","top_k":-Infinity}', 422),
        ("top_k of 5,000 digits", b'{"text":"a","top_k":' + b"9" * 5000 + b"}", 422),
        ("a gzip body, not declared", gzip.compress(BODY), 400),
        ("a body in Latin-1", '{"text":"café"}'.encode("latin-1"), 400),
        ("a body in UTF-16", '{"text":"a"}'.encode("utf-16"), 400),
    ],
)
def test_odd_numbers_and_encodings_get_the_error_body(
    server: Server, name: str, body: bytes, status: int
) -> None:
    raw = HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = exchange(server, raw)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    error = json.loads(payload)
    assert error["error"] == ("invalid_request" if status == 422 else "bad_request"), error
    if status == 422:
        assert [field["field"] for field in error["fields"]] == ["top_k"], error
