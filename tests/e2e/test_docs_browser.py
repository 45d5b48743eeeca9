"""/docs and /redoc render in a real (headless) browser with no internet: the assets are local."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import TinyModel
from support.server import Server, serving

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"headless Chromium ({CHROMIUM}) not installed"
    ),
]


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tiny_model, tmp_path_factory.mktemp("docs-server")) as server:
        yield server


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--no-first-run", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
        "--dump-dom", url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_renders_the_operations(server: Server, tmp_path: Path) -> None:
    dom = rendered_dom(server.url + "/docs", tmp_path)
    # Swagger UI draws one block per operation from /openapi.json: only there if its script
    # (served by the app) loaded and ran.
    assert 'data-path="/predict"' in dom
    assert "opblock-summary-path" in dom
    assert "Predict the next word" in dom


def test_redoc_renders_the_operations(server: Server, tmp_path: Path) -> None:
    dom = rendered_dom(server.url + "/redoc", tmp_path)
    # The operation's summary and path, drawn by ReDoc's script from /openapi.json.
    assert "Predict the next word" in dom
    assert "/predict" in dom
