"""End to end: `nextword serve` as a real process on a real port, `nextword predict`, and no
TensorFlow anywhere on the serving path."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.models import TinyModel
from support.server import REPO, free_port, serving

from app import serve_cli
from app.cli import main

pytestmark = pytest.mark.slow


def test_serve_answers_over_http_and_stops_cleanly(tiny_model: TinyModel, tmp_path: Path) -> None:
    with serving(tiny_model, tmp_path) as server:
        response = httpx.post(
            server.url + "/predict", json={"text": "our neighbour watches ", "top_k": 2}, timeout=5
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["tokens"] == ["<eos>", "our", "neighbour", "watches"]
        assert body["next_word"] in {"the", "a"}  # learned: an object comes next
        assert len(body["predictions"]) == 2
        health = httpx.get(server.url + "/health", timeout=5).json()
        assert health == {"status": "ok", "in_flight": 0}
        assert httpx.get(server.url + "/docs", timeout=5).status_code == 200

        # A graceful stop ends with status 0 (tests/test_shutdown.py: under load).
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
    output = server.output()
    assert f"serving model tiny v{tiny_model.version}" in output
    assert "Application shutdown complete" in output
    assert "Traceback" not in output


def _exchange(connection: socket.socket, request: bytes) -> bytes:
    """Send one request and read one whole response (it has a Content-Length)."""
    connection.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(body) < length:
        body += connection.recv(65536)
    return head


def test_a_body_refused_as_too_large_is_drained_and_the_connection_kept(
    tiny_model: TinyModel, tmp_path: Path
) -> None:
    # Closing with the body unread would reset the connection, which can destroy the 413.
    with (
        serving(tiny_model, tmp_path) as server,
        socket.create_connection(
            ("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10
        ) as connection,
    ):
        too_large = b"x" * 200_000  # over the 64 KiB default, under DRAIN_BYTES
        head = _exchange(
            connection,
            b"POST /predict HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(too_large), too_large),
        )
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" not in head.lower()
        body = b'{"text": "our neighbour"}'
        head = _exchange(  # the same connection answers the next request
            connection,
            b"POST /predict HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert head.startswith(b"HTTP/1.1 200"), head


def test_serve_without_a_model_exits_with_one_line(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(tmp_path / "empty"),
        "--name", "ptb", "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3  # EXIT_STARTUP_FAILED
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in result.stderr
    assert "cannot serve: no versions of model 'ptb'" in errors[0]
    assert "nextword train" in errors[0]  # ... and how to fix it


def test_serve_answers_for_two_models(tiny_model: TinyModel, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    for name in ("tiny", "twin"):
        shutil.copytree(tiny_model.path, store_dir / name / "1")
    model = TinyModel(store_dir, "tiny", 1)
    with serving(model, tmp_path, more=["--models", "twin,tiny"]) as server:
        ready = httpx.get(server.url + "/ready", timeout=5).json()
        assert ready["model"] == {"name": "tiny", "version": 1}  # --name: the default
        assert ready["models"] == [{"name": "twin", "version": 1}, {"name": "tiny", "version": 1}]
        for name in ("twin", "tiny"):
            body = {"text": "our neighbour watches ", "model": name}
            answer = httpx.post(server.url + "/predict", json=body, timeout=5).json()
            assert answer["model"] == {"name": name, "version": 1}
    assert "serving 2 models, tiny by default" in server.output()


def test_serve_refuses_a_model_missing_from_the_store_in_one_line(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXTWORD_MODELS", "tiny,wikitext2")
    assert main(["serve", "--store", str(tiny_model.store), "--name", "tiny"]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"nextword: error: NEXTWORD_MODELS (models): no model 'wikitext2' in {tiny_model.store} "
        "(it has: tiny)\n"
    )


def test_serve_refuses_a_bad_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXTWORD_PORT", "70000")
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("nextword: error: NEXTWORD_PORT (port): ")


def test_predict_prints_the_top_words(
    tiny_model: TinyModel, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ["--store", str(tiny_model.store), "--name", "tiny", "--version", "1"]
    # A trailing space: the words after the text (without it, its last word is completed).
    assert main(["predict", "the teacher helps a dragon ", "--top-k", "3", *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tiny v1 read: <eos> the teacher helps a <unk>"
    assert lines[1] == "unknown words: dragon"
    assert len(lines) == 5
    _, probability = lines[2].split()
    assert 0 < float(probability) <= 1

    assert main(["predict", "the cat", "--top-k", "0", *model]) == 2
    assert "--top-k must be between 1 and 100" in capsys.readouterr().err


def test_predict_without_a_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "the cat", "--store", str(tmp_path), "--name", "ptb"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nextword: error: no versions of model 'ptb'")
    assert error.count("\n") == 1


# --- no TensorFlow on the serving path ----------------------------------------------------------


def test_serving_does_not_import_tensorflow(tiny_model: TinyModel) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from fastapi.testclient import TestClient
        from app.api.app import create_app
        from app.cli import main
        from app.settings import Settings

        settings = Settings(model_store=Path({str(tiny_model.store)!r}),
                            model_name="tiny", model_version={tiny_model.version})
        with TestClient(create_app(settings)) as client:
            response = client.post("/predict", json={{"text": "the cat"}})
            assert response.status_code == 200, response.text
        assert main(["predict", "the", "cat", "--store", str(settings.model_store),
                     "--name", "tiny", "--version", "{tiny_model.version}"]) == 0
        print("HEAVY", sorted({{m.split(".")[0] for m in sys.modules}} & {{"tensorflow", "keras"}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_serve_hands_its_connection_settings_to_uvicorn(
    tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[Any] = []

    class Recorder:
        def __init__(self, config: Any) -> None:
            configs.append(config)
            self.started = True

        def run(self) -> None:
            pass

    monkeypatch.setattr(serve_cli, "_server_class", lambda: Recorder)
    monkeypatch.setenv("NEXTWORD_KEEP_ALIVE_S", "42")
    monkeypatch.setenv("NEXTWORD_SHUTDOWN_TIMEOUT_S", "3")
    arguments = ["serve", "--store", str(tiny_model.store), "--name", tiny_model.name]
    assert main(arguments) == 0
    assert configs[0].timeout_keep_alive == 42  # above the clients' idle time-out (README)
    assert configs[0].timeout_graceful_shutdown == 3
    assert configs[0].server_header is False
