"""Which files of app/ a POST /predict runs, from the route to the engine and back.

    python benchmarks/request_path.py [--store model_store --name ptb]

Serves the model in process (httpx.ASGITransport, lifespan run by hand) with the model process
off, so that a batch is computed on the event loop where it can be traced: the model process
runs the same Predictor code (app/inference/model_process.py receives its batch). Two requests
warm the caches up; the third, a new text, is traced with sys.setprofile, and every file of
app/ with a function called on its way is printed, in the order first reached, and whether it
was first reached from the route (its dependencies first) to the engine and back, or by the
middleware before and after it (issue 12 counts the former).
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


async def trace(settings: Settings) -> dict[str, bool]:
    app = create_app(settings)
    reached: dict[str, int] = {}  # file -> the call that first reached it
    calls = 0
    # The calls at which the route began (its dependencies, in routes.py, come first) and its
    # frame last returned.
    route: list[int] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal calls
        code = frame.f_code
        path = Path(code.co_filename)
        if not path.is_relative_to(APP):
            return
        in_routes = path.name == "routes.py"
        if event == "call":
            calls += 1
            reached.setdefault(str(path.relative_to(APP.parent)), calls)
            if in_routes and not route:
                route.append(calls)
        elif event == "return" and in_routes and code.co_name == "predict":
            # A coroutine's frame returns at each await too (the batch is computed in another
            # loop callback meanwhile): the route's span ends at its last return.
            del route[1:]
            route.append(calls)

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
    first, last = route[0], route[-1]
    return {name: first <= at <= last for name, at in reached.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", default="ptb")
    args = parser.parse_args()
    settings = Settings(model_store=args.store, model_name=args.name, model_process=False)
    files = asyncio.run(trace(settings))
    for name, in_route in files.items():
        print(f"{name:40} {'route to engine and back' if in_route else 'middleware'}")
    inside = sum(files.values())
    print(
        f"{len(files)} files of app/ ran, {inside} of them from the route to the engine and back "
        "(the rest before and after it: middleware, telemetry); under load, the model process "
        "adds app/inference/model_process.py"
    )


if __name__ == "__main__":
    main()
