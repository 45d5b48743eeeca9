"""Slow uploads do not shut everyone else out: a real server with 150 connections that sent
their headers and no body (more than NEXTWORD_MAX_IN_FLIGHT, 128) still answers every normal
/predict at once, and each slow connection gets 408 and is closed at the body deadline."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from support.models import TinyModel
from support.server import serving

pytestmark = pytest.mark.slow

SLOW = 150  # connections sending headers, then nothing
NORMAL = 50  # /predict requests sent meanwhile
BODY_TIMEOUT_S = 3.0
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n"
)


def _read_all(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (or `within` passes)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65_536):
            data += chunk
    except TimeoutError:
        pass
    return data


def test_slow_bodies_hold_no_slot_and_get_408(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTWORD_BODY_TIMEOUT_S", str(BODY_TIMEOUT_S))
    with serving(tiny_model, tmp_path) as server:
        address = urlsplit(server.url)
        slow: list[socket.socket] = []
        try:
            started = time.monotonic()
            for _ in range(SLOW):
                sock = socket.create_connection((address.hostname, address.port), timeout=5)
                sock.sendall(REQUEST)
                slow.append(sock)
            latencies = []
            with httpx.Client(base_url=server.url, timeout=5) as client:
                time.sleep(0.3)  # the server has every slow request's headers by now
                assert client.get("/health").json()["in_flight"] == 0
                for n in range(NORMAL):
                    before = time.monotonic()
                    response = client.post("/predict", json={"text": f"the cat {n}"})
                    latencies.append(time.monotonic() - before)
                    assert response.status_code == 200, response.text
            assert time.monotonic() - started < BODY_TIMEOUT_S  # all before the deadline
            assert max(latencies) < 1.0, f"slowest normal request: {max(latencies):.3f} s"

            answers = [_read_all(sock, within=BODY_TIMEOUT_S + 5) for sock in slow]
            waited = time.monotonic() - started
        finally:
            for sock in slow:
                sock.close()
        for answer in answers:  # each answered 408 with the error body, then closed
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"error":"request_timeout"' in answer
            assert b"connection: close" in answer.lower()
        assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 5
        print(  # the figures, shown with -s
            f"{SLOW} slow connections, {NORMAL} normal requests: slowest "
            f"{max(latencies) * 1000:.1f} ms, median "
            f"{sorted(latencies)[NORMAL // 2] * 1000:.1f} ms; 408s after {waited:.2f} s"
        )


def test_a_body_sent_a_byte_a_second_still_ends_at_the_deadline(
    tiny_model: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline is for the whole body: bytes that keep arriving do not extend it."""
    # Half-way between two of the client's bytes (sent a second apart): a byte that reached the
    # server just after it closed would make its kernel reset the connection, and the reset
    # can destroy the 408 before the client reads it.
    deadline_s = BODY_TIMEOUT_S + 0.5
    monkeypatch.setenv("NEXTWORD_BODY_TIMEOUT_S", str(deadline_s))
    with serving(tiny_model, tmp_path) as server:
        address = urlsplit(server.url)
        with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
            sock.sendall(REQUEST)
            started = time.monotonic()
            sent = 0
            # A byte, then a second's wait for an answer, until one comes (100 bytes: 100 s).
            while time.monotonic() - started < deadline_s + 5:
                sock.send(b" ")
                sent += 1
                if select.select([sock], [], [], 1.0)[0]:
                    break
            ended = time.monotonic() - started
            answer = _read_all(sock, within=5)
        assert "Traceback" not in server.output()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"error":"request_timeout"' in answer
    assert sent >= deadline_s - 1  # it did keep sending until the deadline
    assert deadline_s - 0.5 < ended < deadline_s + 2, f"ended after {ended:.2f} s"
