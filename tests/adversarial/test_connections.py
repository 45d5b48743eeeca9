"""The HTTP connection's own bounds (app.api.connections), on a real `nextword serve` over raw
sockets: a connection that sends nothing, headers sent a byte at a time, headers too large to
keep, the rest of a refused body sent slowly, idle keep-alive connections past the cap, and a
SIGTERM while slow clients hold connections."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.models import TinyModel
from support.server import Server, serving

from app.api import connections
from app.api.connections import HEAD_BYTES

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1
MAX_CONNECTIONS = 8
HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"
PREDICT_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n"
)


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTWORD_HEADER_TIMEOUT_S", str(HEADER_TIMEOUT_S))
        patch.setenv("NEXTWORD_BODY_TIMEOUT_S", str(BODY_TIMEOUT_S))
        patch.setenv("NEXTWORD_KEEP_ALIVE_S", str(KEEP_ALIVE_S))
        patch.setenv("NEXTWORD_MAX_CONNECTIONS", str(MAX_CONNECTIONS))
        with serving(tiny_model, tmp_path_factory.mktemp("connections")) as running:
            yield running
    assert "Traceback" not in running.output()


def connect(server: Server) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def read_until_closed(sock: socket.socket, within: float = 10.0) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed (monotonic)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65_536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic()


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def answer_of(sock: socket.socket, request: bytes) -> bytes:
    """One whole answer on a kept connection (the bodies here are small: one recv each)."""
    sock.sendall(request)
    sock.settimeout(5)
    data = sock.recv(65_536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")]
    length = int(lengths[0].split(b":")[1])
    while len(body) < length:
        body += sock.recv(65_536)
    return head + b"\r\n\r\n" + body


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(server: Server) -> None:
    with connect(server) as sock:
        opened = time.monotonic()
        data, closed = read_until_closed(sock)
    assert data == b""  # no request, nothing to answer
    assert HEADER_TIMEOUT_S - 0.3 < closed - opened < HEADER_TIMEOUT_S + 1.5


def test_headers_sent_a_byte_at_a_time_get_408_at_the_deadline(server: Server) -> None:
    with connect(server) as sock:
        opened = time.monotonic()
        try:
            for byte in HEALTH[:-2]:  # never the blank line that ends the headers
                sock.send(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while still sending, as it should be
        data, closed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b'"error":"request_timeout"' in data and b"connection: close" in data
    assert closed - opened < HEADER_TIMEOUT_S + 1.5  # the bytes did not extend it


def test_a_later_request_dribbled_after_keep_alive_gets_408(server: Server) -> None:
    with connect(server) as sock:
        assert answer_of(sock, HEALTH).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        try:
            for byte in HEALTH[:-2]:
                sock.send(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert closed - started < HEADER_TIMEOUT_S + 1.5


def test_headers_too_large_are_refused_while_they_arrive(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * (HEAD_BYTES + 1_000))
        data, _ = read_until_closed(sock)  # nothing more is sent: the answer is not reset
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert b'"error":"request_header_fields_too_large"' in data
    with connect(server) as sock:
        assert answer_of(sock, HEALTH).startswith(b"HTTP/1.1 200 ")


def test_the_rest_of_a_refused_body_must_come_in_time(server: Server) -> None:
    refused = PREDICT_HEAD.replace(b"application/json", b"text/plain")  # 415, body read
    with connect(server) as sock:
        assert answer_of(sock, refused + b"a" * 10).startswith(b"HTTP/1.1 415 ")
        started = time.monotonic()
        try:
            for _ in range(50):  # a byte every 0.1 s: 5 s for the 90 bytes left
                sock.send(b"a")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = read_until_closed(sock)
    assert data == b""
    assert closed - started < BODY_TIMEOUT_S + 1.5
    # Sent in time, the rest is dropped and the connection is idle: closed after keep-alive.
    with connect(server) as sock:
        assert answer_of(sock, refused + b"a" * 10).startswith(b"HTTP/1.1 415 ")
        sock.sendall(b"a" * 90)
        done = time.monotonic()
        data, closed = read_until_closed(sock)
    assert data == b""
    assert KEEP_ALIVE_S - 0.3 < closed - done < KEEP_ALIVE_S + 1.5


def test_past_the_cap_the_longest_idle_connection_makes_room(server: Server) -> None:
    idle = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in idle:
            sock.sendall(HEALTH)
            time.sleep(0.02)  # an order the server sees
        for sock in idle:
            assert sock.recv(65_536).startswith(b"HTTP/1.1 200 ")
        with connect(server) as new:  # one too many: the first idle one is closed for it
            assert answer_of(new, HEALTH).startswith(b"HTTP/1.1 200 ")
        data, _ = read_until_closed(idle[0], within=KEEP_ALIVE_S / 2)
        assert data == b""
    finally:
        for sock in idle:
            sock.close()


def test_a_flood_of_idle_keep_alive_connections_leaves_room_for_new_clients(
    server: Server,
) -> None:
    flood: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS * 8):  # each asks once, then stays open, idle
            sock = connect(server)
            flood.append(sock)
            assert answer_of(sock, HEALTH).startswith(b"HTTP/1.1 200 ")
        for _ in range(MAX_CONNECTIONS * 2):  # every new client is answered
            with connect(server) as new:
                assert answer_of(new, HEALTH).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.2)
        still_open = [sock for sock in flood if is_open(sock)]
        assert len(still_open) < MAX_CONNECTIONS  # the rest were closed to make room
    finally:
        for sock in flood:
            sock.close()


def test_past_the_cap_with_none_idle_a_request_gets_503(server: Server) -> None:
    time.sleep(KEEP_ALIVE_S + 0.5)  # the connections of the tests before are gone
    busy = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in busy:
            sock.sendall(PREDICT_HEAD)  # and no body: each is reading its body, not idle
        time.sleep(0.3)
        with connect(server) as new:
            answer = answer_of(new, PREDICT_HEAD.replace(b"100", b"2") + b"{}")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b'"error":"overloaded"' in answer and b"retry-after: 1" in answer
        with connect(server) as probe:  # the probes are answered all the same
            assert answer_of(probe, HEALTH).startswith(b"HTTP/1.1 200 ")
        with connect(server) as silent:  # past the limit, a second to send a request
            opened = time.monotonic()
            data, closed = read_until_closed(silent)
        assert data == b"" and closed - opened < HEADER_TIMEOUT_S - 1, closed - opened
        for sock in busy:  # and the busy ones end at their body deadline, as before
            assert read_until_closed(sock)[0].startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in busy:
            sock.close()


def test_sigterm_with_slow_clients_still_drains_and_exits_0(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_HEADER_TIMEOUT_S", "30")
    monkeypatch.setenv("NEXTWORD_BODY_TIMEOUT_S", str(BODY_TIMEOUT_S))
    with serving(tiny_model, tmp_path) as running:
        nothing, head, body = connect(running), connect(running), connect(running)
        head.sendall(HEALTH[:10])
        body.sendall(PREDICT_HEAD + b'{"text": ')
        time.sleep(0.3)
        running.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        status = running.process.wait(timeout=15)
        stopped = time.monotonic() - signalled
        answers = [read_until_closed(sock, within=2)[0] for sock in (nothing, head, body)]
        for sock in (nothing, head, body):
            sock.close()
    assert status == 0, running.output()
    assert stopped < BODY_TIMEOUT_S + 3  # the slow body ends at its deadline, not later
    assert answers[0] == answers[1] == b""  # no request under way: closed at once
    assert answers[2].startswith(b"HTTP/1.1 408 "), answers[2]
    assert "Traceback" not in running.output()


@pytest.mark.parametrize(
    ("limits", "raised_to", "warned"),
    [
        ((512, 20_000), 1_088, False),  # raised to what the cap needs
        ((512, 600), 600, True),  # as far as the hard limit allows, and said so
        ((4_096, 20_000), None, False),  # enough already: left alone
    ],
)
def test_the_open_files_limit_is_raised_to_fit_the_cap(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    limits: tuple[int, int],
    raised_to: int | None,
    warned: bool,
) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(connections.resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(connections.resource, "setrlimit", lambda _, value: set_to.append(value))
    connections.allow_open_files(1_088)
    assert set_to == ([] if raised_to is None else [(raised_to, limits[1])])
    assert ("NEXTWORD_MAX_CONNECTIONS to 536 or less" in caplog.text) == warned
