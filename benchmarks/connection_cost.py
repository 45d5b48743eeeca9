"""What the bounded connection (app/api/connections.py) costs a request: `nextword serve` as
shipped against the same server with uvicorn's own httptools connection, wrk against each in
turn.

    python benchmarks/connection_cost.py                 # 3 rounds, 5 s a run, about 1 minute
    python benchmarks/connection_cost.py --rounds 5 --seconds 8

On loopback only; serves a temporary copy of the newest version of `model_store/ptb`. Each round
runs `wrk -t1 -c32` on GET /health and on POST /predict (one fixed body) against both servers,
alternating which goes first; prints the requests a second of each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_load import free_port  # noqa: E402

from app import store  # noqa: E402

# `nextword serve` with uvicorn's httptools connection in place of the bounded one.
STOCK = """
import sys
import app.api.connections
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
app.api.connections.bounded_protocol = lambda settings: HttpToolsProtocol
from app.cli import main
sys.exit(main())
"""
PREDICT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text": "the company said it expects"}'
"""


def routes(script: Path) -> list[tuple[str, str, Path | None]]:
    return [("health", "/health", None), ("predict", "/predict", script)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--name", default="ptb")
    return parser.parse_args()


def start(prefix: list[str], work: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [*prefix, "serve", "--store", str(work), "--name", name, "--port", str(port)]
    log = (work / f"server-{port}.log").open("wb")
    server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server, port
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready")


def wrk(port: int, path: str, seconds: int, script: Path | None) -> float:
    command = ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}{path}"]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"answers other than 2xx:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def main() -> int:
    args = parse_args()
    runs: dict[str, dict[str, list[float]]] = {
        kind: {"bounded": [], "stock": []} for kind in ("health", "predict")
    }
    with tempfile.TemporaryDirectory(prefix="nextword-connection-cost-") as folder:
        work = Path(folder)
        shutil.copytree(store.version_dir(args.store, args.name, "latest"), work / args.name / "1")
        script = work / "predict.lua"
        script.write_text(PREDICT_LUA)
        servers = {
            "bounded": start([sys.executable, "-m", "app.cli"], work, args.name),
            "stock": start([sys.executable, "-c", STOCK], work, args.name),
        }
        try:
            for round_index in range(args.rounds):
                order = ["bounded", "stock"] if round_index % 2 == 0 else ["stock", "bounded"]
                for kind, path, lua in routes(script):
                    for name in order:
                        rate = wrk(servers[name][1], path, args.seconds, lua)
                        runs[kind][name].append(rate)
                        print(f"round {round_index + 1} {kind:8} {name:8} {rate:9.0f} req/s")
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(timeout=30)
    medians = {
        kind: {name: round(statistics.median(rates)) for name, rates in found.items()}
        for kind, found in runs.items()
    }
    print(json.dumps({"runs": runs, "medians": medians}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
