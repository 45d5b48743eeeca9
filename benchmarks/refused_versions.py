"""Memory of a server that refuses version after version: checking a version must cost bounded
memory and give it back.

    python benchmarks/refused_versions.py                 # 20 refused versions, under 3 minutes
    python benchmarks/refused_versions.py --json benchmarks/results/refused_versions.json

On loopback only: serves a temporary copy of the newest version of `model_store/ptb` with
polling on (NEXTWORD_RELOAD_INTERVAL_S=0.2), then publishes `--versions` broken versions one
after another, each through a hidden folder renamed into place, with correct sha256s in its
manifest, so that only the later checks can refuse it:

  * most carry a `tokenizer.json` of `--words` words (1,000,000 by default, about 14 MB) for
    weights of 10,000 words;
  * every fourth one has NaN in its weights instead.

It waits until GET /models lists each as refused, samples the memory of the server and of its
children (PSS, as benchmarks/soak.py) every 0.1 s throughout, and prints the memory at the start,
the peak and the end (after the last refusal and a 3 s settle). It passes (exit 0) when every
version was refused, the first version is still served, and the end is within 10 % of the start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_load import free_port, tree_memory_mb  # noqa: E402

from app import store  # noqa: E402  (after the path set-up, so it runs from a checkout)

MAX_GROWTH = 0.10
SETTLE_S = 3.0
DEADLINE_S = 170.0  # the whole run, start-up included


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=20, help="refused versions to publish")
    parser.add_argument("--words", type=int, default=1_000_000, help="oversized tokenizer words")
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--name", default="ptb")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def mib(pid: int) -> float:
    return tree_memory_mb(pid)["pss_mb"] * 1e6 / 2**20


class Sampler(threading.Thread):
    """PSS of the server and its children every 0.1 s, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.samples.append(mib(self.pid))


def big_tokenizer(source: Path, words: int) -> bytes:
    payload = json.loads((source / store.TOKENIZER).read_text(encoding="utf-8"))
    payload["vocabulary"] = payload["vocabulary"][:2] + [f"word{i:07d}" for i in range(words - 2)]
    return (json.dumps(payload, ensure_ascii=False, indent=1) + "\n").encode()


def publish(source: Path, model_dir: Path, number: int, tokenizer: bytes | None) -> None:
    """Version `number`: `source` with `tokenizer` in place of its own, or with NaN weights."""
    from safetensors.numpy import save_file

    work = model_dir / f".tmp-refused-{number}"
    shutil.copytree(source, work)
    if tokenizer is not None:
        (work / store.TOKENIZER).write_bytes(tokenizer)
    else:
        arrays = store.load_weights(work)
        arrays["output.bias"] = np.full_like(arrays["output.bias"], np.nan)
        save_file(arrays, str(work / store.WEIGHTS))
    manifest = json.loads((work / store.MANIFEST).read_text(encoding="utf-8"))
    for name in (store.TOKENIZER, store.WEIGHTS):
        manifest["files"][name] = store.sha256_file(work / name)
    manifest["version"] = number
    (work / store.MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.rename(work, model_dir / str(number))


def refused(client: httpx.Client, number: int) -> str | None:
    body = client.get("/models").json()
    for refusal in body["refused"]:
        if refusal["version"] == number:
            return str(refusal["reason"])
    return None


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    source = store.version_dir(args.store, args.name, "latest")
    model_dir = work / args.name
    shutil.copytree(source, model_dir / "1")
    tokenizer = big_tokenizer(source, args.words)
    port = free_port()
    env = {**os.environ, "NEXTWORD_RELOAD_INTERVAL_S": "0.2", "NEXTWORD_LOG_LEVEL": "warning"}
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(work), "--name", args.name,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
    events: list[str] = []
    reasons: dict[int, str] = {}
    sampler = Sampler(server.pid)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while True:
                if server.poll() is not None:
                    raise RuntimeError((work / "server.log").read_text())
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            client.post("/predict", json={"text": "the stock market", "top_k": 3})
            time.sleep(1.0)
            start = mib(server.pid)
            sampler.start()
            for index in range(args.versions):
                number = index + 2
                nan = index % 4 == 3
                publish(source, model_dir, number, None if nan else tokenizer)
                published = time.monotonic()
                while (reason := refused(client, number)) is None:
                    if time.monotonic() - started > DEADLINE_S:
                        raise TimeoutError(f"v{number} was not refused in time")
                    time.sleep(0.05)
                reasons[number] = reason
                seconds = time.monotonic() - published
                events.append(
                    f"v{number} ({'NaN weights' if nan else f'{args.words:,}-word tokenizer'}) "
                    f"refused in {seconds:.2f} s, memory {mib(server.pid):.0f} MiB"
                )
                shutil.rmtree(model_dir / str(number))  # the disk, not the server's memory
            time.sleep(SETTLE_S)
            end = mib(server.pid)
            served = client.get("/ready").json()["model"]["version"]
    finally:
        sampler.stopped.set()
        server.send_signal(signal.SIGTERM)
        exit_status = server.wait(timeout=60)
    peak = max([start, end, *sampler.samples])
    return {
        "versions_refused": len(reasons),
        "tokenizer_words": args.words,
        "tokenizer_bytes": len(tokenizer),
        "memory_mib": {"start": round(start, 1), "peak": round(peak, 1), "end": round(end, 1)},
        "end_within_10_percent_of_start": end <= start * (1 + MAX_GROWTH),
        "served_at_end": served,
        "reasons": sorted({reason[:160] for reason in reasons.values()}),
        "events": events,
        "exit_status": exit_status,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="nextword-refused-") as work:
        figures = run(args, Path(work))
    problems = []
    if figures["versions_refused"] != args.versions or figures["served_at_end"] != 1:
        problems.append("not every version was refused while version 1 kept serving")
    if not figures["end_within_10_percent_of_start"]:
        memory = figures["memory_mib"]
        problems.append(f"memory grew from {memory['start']:.0f} to {memory['end']:.0f} MiB")
    figures["passed"] = not problems
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
