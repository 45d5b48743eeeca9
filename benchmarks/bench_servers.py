"""The reference servers `serve_bench.py` measures the service against.

    python benchmarks/bench_servers.py floor --port 8101
    python benchmarks/bench_servers.py floor-model --port 8104
    python benchmarks/bench_servers.py naive --port 8102 [--store model_store --name ptb]
    python benchmarks/bench_servers.py stack --port 8103 [--store model_store --name ptb]

floor: the framework's own ceiling. A FastAPI app of the class the service uses, with an
`async def` POST /predict that validates the same request model (PredictRequest) and writes the
same body (schemas.predict_body) from a constant prediction: every cost of the service except
the model, the middleware and the dependencies.

naive: what one would write first. The same route, as a plain `def` (FastAPI's thread pool),
reading the text with the service's own tokenizer rules and calling the Keras model's
`predict` (model.keras of the same version) once per request.

stack: not a target, a diagnosis. The service's own app (`create_app`: its middleware, routes,
dependencies, model manager and error handling), the model loaded as usual, but
`Backend.predict` answering a constant prediction: what the service costs apart from the model.

All run under uvicorn with the settings `nextword serve` uses (one worker, uvicorn's default
event loop and HTTP parser: uvloop and httptools when installed, log level info with the access
log, no server header), and listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi_offline import FastAPIOffline

from app.api.schemas import PredictRequest, PredictResponse, predict_body
from app.inference.predictor import ModelInfo, Prediction, Query

# The README's example answer: five words and a six-token prefix, a typical response's size.
CONSTANT = Prediction(
    words=("to", "a", "the", "its", "an"),
    probabilities=(0.57105243, 0.08370883, 0.06800114, 0.028622506, 0.017542979),
    tokens=("<eos>", "the", "company", "said", "it", "expects"),
    unknown_words=(),
)
CONSTANT_INFO = ModelInfo("ptb", 3, Path("."), 10_000, {}, {})


async def _ready() -> dict[str, str]:
    return {"status": "ready"}  # the model (if any) is loaded before the server listens


def floor_app() -> FastAPI:
    app = FastAPIOffline(title="floor")
    app.get("/ready")(_ready)

    @app.post("/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> Response:
        return Response(predict_body(CONSTANT, CONSTANT_INFO), media_type="application/json")

    # As the service does: /predict tried first, so the floor stays a ceiling.
    app.router.routes.insert(0, app.router.routes.pop())
    return app


def floor_model_app() -> FastAPI:
    """The floor as earlier sessions measured it: the route returns the response model, which
    FastAPI validates and serialises (slower than writing the body directly)."""
    app = FastAPIOffline(title="floor-model")
    app.get("/ready")(_ready)
    body = PredictResponse.model_validate_json(predict_body(CONSTANT, CONSTANT_INFO))

    @app.post("/predict")
    async def predict(request: PredictRequest) -> PredictResponse:
        return PredictResponse.model_validate(body.model_dump())

    app.router.routes.insert(0, app.router.routes.pop())
    return app


def naive_app(store: Path, name: str, version: str) -> FastAPI:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import app.training.model  # registers the custom output layer, for loading
    from app.inference.loading import load_predictor
    from app.inference.predictor import FIRST_WORD_ID

    # The NumPy predictor is loaded only for its tokenizer and reading rules; Keras computes.
    reader = load_predictor(store, name, version, cache_size=0)
    model = keras.saving.load_model(reader.info.path / "model.keras")
    hidden = int(reader.info.architecture["hidden_units"])
    vocabulary = reader.tokenizer.vocabulary
    app = FastAPIOffline(title="naive")
    app.get("/ready")(_ready)

    @app.post("/predict", response_model=PredictResponse)
    def predict(body: PredictRequest) -> Response:
        reading = reader.read(body.text)
        tokens = np.array([reading.ids], dtype=np.int32)
        scores, _ = model.predict([tokens, np.zeros((1, hidden), np.float32)], verbose=0)
        last = scores[0, -1].astype(np.float64)  # (vocab,)
        probabilities = np.exp(last - last.max())
        probabilities /= probabilities.sum()
        first = 0 if body.include_special else FIRST_WORD_ID
        best = np.argsort(-probabilities[first:], kind="stable")[: body.top_k] + first
        prediction = Prediction(
            tuple(vocabulary[i] for i in best),
            tuple(float(probabilities[i]) for i in best),
            reading.tokens,
            reading.unknown_words,
        )
        return Response(predict_body(prediction, reader.info), media_type="application/json")

    return app


async def _constant_prediction(self: object, query: Query) -> Prediction:
    return CONSTANT


def stack_app(store: Path, name: str) -> FastAPI:
    from app.api.app import create_app
    from app.inference.backend import Backend
    from app.settings import load_settings

    # On the class, not through dependency_overrides: FastAPI analyses an override's signature
    # again on every request, which would cost more than what is measured.
    Backend.predict = _constant_prediction  # type: ignore[method-assign]
    return create_app(load_settings(model_store=store, model_name=name))


def serve(app: Any, port: int, own_access_line: bool = False) -> None:
    """uvicorn with the options `nextword serve` passes it (app/serve_cli.py). An app that
    writes its `own_access_line` (the service's, app.api.telemetry) has uvicorn's turned off,
    as `nextword serve` does; the others have uvicorn's: one line a request for every server."""
    import uvicorn

    from app.serve_cli import _log_config

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="info",
        log_config=_log_config("info"),
        access_log=not own_access_line,
        server_header=False,
    )
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["floor", "floor-model", "naive", "stack"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", default="ptb")
    parser.add_argument("--version", default="latest")
    args = parser.parse_args()
    if args.kind == "floor":
        serve(floor_app(), args.port)
    elif args.kind == "floor-model":
        serve(floor_model_app(), args.port)
    elif args.kind == "stack":
        serve(stack_app(args.store, args.name), args.port, own_access_line=True)
    else:
        serve(naive_app(args.store, args.name, args.version), args.port)


if __name__ == "__main__":
    main()
