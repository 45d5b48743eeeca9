"""Which files of app/ a POST /predict runs, from the route to the engine and back.

    python benchmarks/request_path.py [--store model_store --name ptb]

Serves the model in process (httpx.ASGITransport, lifespan run by hand) with the model process
off, so that a batch is computed on the event loop where it can be traced: the model process
runs the same Predictor code (app/inference/model_process.py receives its batch). Two requests
warm the caches up; the third, a new text, is traced with sys.setprofile, and every file of
app/ with a function called on its way is printed, in the order first reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.api.app import create_app
from app.settings import Settings

APP = Path(__file__).resolve().parents[1] / "app"


async def trace(settings: Settings) -> list[str]:
    app = create_app(settings)
    seen: dict[str, None] = {}

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(APP):
                seen.setdefault(str(path.relative_to(APP.parent)), None)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            for text in ("the company said", "the company said it"):
                (await client.post("/predict", json={"text": text})).raise_for_status()
            sys.setprofile(profile)
            try:
                response = await client.post("/predict", json={"text": "a new text to read"})
            finally:
                sys.setprofile(None)
            response.raise_for_status()
    return list(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", default="ptb")
    args = parser.parse_args()
    settings = Settings(model_store=args.store, model_name=args.name, model_process=False)
    files = asyncio.run(trace(settings))
    for name in files:
        print(name)
    print(
        f"{len(files)} files of app/ ran; under load, the model process adds "
        "app/inference/model_process.py"
    )


if __name__ == "__main__":
    main()
