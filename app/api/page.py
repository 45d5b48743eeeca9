"""The type-ahead page: `GET /` and its script and style sheet, files in app/web/.

Plain HTML, JavaScript and CSS, shipped as package data (pyproject.toml) and served from the
package, like the docs' assets: no build step, no CDN. The page is open even when
NEXTWORD_API_KEY is set; it calls /predict and /models like any client, and asks for the key
when they answer 401.

Its Content-Security-Policy lets it load and call this server only, so a browser refuses any
request the page might make elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}


def install_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/web/` (neither in the OpenAPI document)."""

    @app.get("/", include_in_schema=False)
    async def typeahead_page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html", headers=HEADERS)

    app.mount("/web", StaticFiles(directory=WEB), name="web")
