"""Soak test: a real `nextword serve` under steady mixed load while new versions are published.

    python benchmarks/soak.py                      # 5 minutes, concurrency 64, model_store/ptb
    python benchmarks/soak.py --minutes 1 --json benchmarks/results/soak_1min.json

What it does, on loopback only:
  1. copies the newest version of the model into a temporary store (the repository's own
     model_store/ is only read), and serves it with polling on (NEXTWORD_RELOAD_INTERVAL_S);
  2. runs `--concurrency` clients for the whole time, each sending a mix of valid predictions,
     invalid requests (each with the 4xx it must get) and /models, /ready calls;
  3. at 20 % and 70 % of the time publishes a good new version (weights perturbed by 0.1 %),
     at 45 % a broken one (weights changed after their sha256 was recorded), each through a
     hidden folder renamed into place, as `nextword train` does;
  4. samples the server's memory (PSS, its model process included) every second, then once
     more when the load has stopped and the last swap has settled, and stops the server with
     SIGTERM.

It passes (exit 0) with no 5xx, no connection errors, every answer the status expected of it,
both good versions served, the broken one refused, exit status 0 on SIGTERM, and resident
memory at the end less than 10 % above where it was after warm-up (15 % of the run, before the
first new version: one model loaded then, one at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_load import free_port, tree_memory_mb  # noqa: E402
from soak_clients import Tally, client_loop, request_mix  # noqa: E402

from app import store  # noqa: E402  (after the path set-up, so it runs from a checkout)

MAX_GROWTH = 0.10
WARM_UP = 0.15  # fraction of the run
PUBLISH = ((0.20, False), (0.45, True), (0.70, False))  # (fraction of the run, broken)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long (default 5)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--name", default="ptb")
    parser.add_argument("--poll", type=float, default=1.0, help="NEXTWORD_RELOAD_INTERVAL_S")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


# --- publishing versions ------------------------------------------------------------------------


def publish_copy(source: Path, model_dir: Path, *, broken: bool, seed: int) -> int:
    """Copy `source` to the next version through a hidden folder; perturb or corrupt weights."""
    from safetensors.numpy import save_file

    work = model_dir / f".tmp-soak-{seed}"
    shutil.copytree(source, work)
    arrays = store.load_weights(work)
    rng = np.random.default_rng(seed)
    perturbed = {
        key: (value * (1 + 1e-3 * rng.standard_normal(value.shape))).astype(value.dtype)
        for key, value in arrays.items()
    }
    save_file(perturbed, str(work / store.WEIGHTS))
    manifest = json.loads((work / store.MANIFEST).read_text())
    manifest["files"][store.WEIGHTS] = store.sha256_file(work / store.WEIGHTS)
    number = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1
    manifest["version"] = number
    (work / store.MANIFEST).write_text(json.dumps(manifest, indent=2))
    if broken:  # one byte changed after the sha256 was recorded: the check must catch it
        data = bytearray((work / store.WEIGHTS).read_bytes())
        data[-1] ^= 0xFF
        (work / store.WEIGHTS).write_bytes(bytes(data))
    os.rename(work, model_dir / str(number))
    return number


# --- the server ---------------------------------------------------------------------------------


def resident_mib(pid: int) -> float:
    """The server's proportional set size (PSS), its model process included, in MiB."""
    return tree_memory_mb(pid)["pss_mb"] * 1e6 / 2**20


async def wait_for(check: Any, within: float) -> float:
    """Seconds until `check()` (async) is true; raises TimeoutError after `within`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise TimeoutError
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def start_server(work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "NEXTWORD_RELOAD_INTERVAL_S": str(args.poll),
        "NEXTWORD_LOG_LEVEL": "warning",  # refusals are errors: still logged
        "NEXTWORD_MAX_IN_FLIGHT": str(max(128, 2 * args.concurrency)),  # no 503 at this load
    }
    command = [
        sys.executable, "-m", "app.cli", "serve", "--store", str(work), "--name", args.name,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with (work / "server.log").open("wb") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
    return server, f"http://127.0.0.1:{port}"


class Run:
    """One soak run against a started server; the figures are gathered as it goes."""

    def __init__(self, client: httpx.AsyncClient, model_dir: Path, duration: float) -> None:
        self.client = client
        self.model_dir = model_dir
        self.duration = duration
        self.started = time.monotonic()
        self.until = self.started + duration
        self.events: list[str] = []
        self.memory: list[tuple[float, float]] = []  # (seconds in, MiB)

    async def sample_memory(self, pid: int) -> None:
        while time.monotonic() < self.until:
            self.memory.append((time.monotonic() - self.started, resident_mib(pid)))
            await asyncio.sleep(1.0)

    async def publish(self) -> None:
        for fraction, broken in PUBLISH:
            await asyncio.sleep(
                max(0.0, self.started + fraction * self.duration - time.monotonic())
            )
            seed = int(100 * fraction)
            number = await asyncio.to_thread(
                publish_copy, self.model_dir / "1", self.model_dir, broken=broken, seed=seed
            )
            check = self._refused(number) if broken else self._served(number)
            seconds = await wait_for(check, 60)
            self.events.append(
                f"t={time.monotonic() - self.started:.1f}s v{number} published "
                f"({'broken' if broken else 'good'}): {'refused' if broken else 'served'} "
                f"{seconds:.1f} s later"
            )

    def _served(self, number: int) -> Any:
        async def check() -> bool:
            return bool((await self.client.get("/ready")).json()["model"]["version"] == number)

        return check

    def _refused(self, number: int) -> Any:
        async def check() -> bool:
            body = (await self.client.get("/models")).json()
            return number in [refusal["version"] for refusal in body["refused"]]

        return check


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    source = store.version_dir(args.store, args.name, "latest")
    model_dir = work / args.name
    shutil.copytree(source, model_dir / "1")
    vocabulary = json.loads((source / store.TOKENIZER).read_text())["vocabulary"]
    words = [*vocabulary[2:2000], "dragon", "кот", "😀"]  # unknown words too
    server, base = start_server(work, args)
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:  # probes, publishing

            async def ready() -> bool:
                if server.poll() is not None:
                    raise RuntimeError((work / "server.log").read_text())
                try:
                    return (await client.get("/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, 120)
            run = Run(client, model_dir, args.minutes * 60)
            seeds = random.Random(0)
            mix = request_mix()
            loops = [
                client_loop(base, mix, words, run.until, tally, random.Random(seeds.random()))
                for _ in range(args.concurrency)
            ]
            await asyncio.gather(run.sample_memory(server.pid), run.publish(), *loops)
            for _ in range(5):  # settling: the last old model is closed once its requests end
                await asyncio.sleep(1.0)
                run.memory.append((time.monotonic() - run.started, resident_mib(server.pid)))
            final = (await client.get("/models")).json()
    finally:
        server.send_signal(signal.SIGTERM)
        exit_status = server.wait(timeout=60)
    log = (work / "server.log").read_text(errors="replace")
    return summarise(args, tally, run, final, exit_status, log)


def summarise(
    args: argparse.Namespace, tally: Tally, run: Run, final: dict[str, Any], exit_status: int,
    log: str,
) -> dict[str, Any]:  # fmt: skip
    latencies = sorted(tally.latencies)
    served = sum(tally.statuses.values())
    warm = [mib for seconds, mib in run.memory if seconds >= WARM_UP * run.duration]

    def percentile(q: float) -> float | None:
        return round(1000 * latencies[int(len(latencies) * q)], 1) if latencies else None

    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "requests": served,
        "requests_per_second": round(served / run.duration, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "server_errors": sum(n for status, n in tally.statuses.items() if status >= 500),
        "unexpected": dict(tally.unexpected),
        "connection_errors": dict(tally.connection_errors),
        "connection_error_details": tally.error_details[:20],
        "predictions_by_version": dict(sorted(tally.versions.items())),
        "predict_p50_ms": percentile(0.50),
        "predict_p99_ms": percentile(0.99),
        "rss_mib": {
            "start": run.memory[0][1] if run.memory else None,
            "after_warm_up": warm[0] if warm else None,
            "peak": max((mib for _, mib in run.memory), default=None),
            "end": run.memory[-1][1] if run.memory else None,
        },
        "rss_every_5_s": [round(mib) for _, mib in run.memory[::5]],
        "rss_settling": [round(mib, 1) for _, mib in run.memory[-5:]],
        "events": run.events,
        "final_model": final["models"][0]["version"],
        "refused": [(r["version"], r["reason"][:120]) for r in final["refused"]],
        "refusal_log_lines": sum("refused model" in line for line in log.splitlines()),
        # An old model closed at its grace limit, not when its last request ended: a stuck one.
        "closed_with_requests_in_flight": log.count("requests still in flight"),
        "tracebacks": log.count("Traceback"),
        # Anything else the server warned about (e.g. a request its HTTP parser refused).
        "server_warnings": [
            line
            for line in log.splitlines()
            if ("WARNING" in line or "ERROR" in line) and "refused model" not in line
        ][:10],
        "exit_status": exit_status,
    }


def verdict(figures: dict[str, Any]) -> list[str]:
    problems = []
    if figures["server_errors"]:
        problems.append(f"{figures['server_errors']} answers were 5xx")
    if figures["connection_errors"]:
        problems.append(f"connection errors: {figures['connection_errors']}")
    if figures["unexpected"]:
        problems.append(f"unexpected statuses: {figures['unexpected']}")
    if figures["tracebacks"] or figures["closed_with_requests_in_flight"]:
        problems.append("the server log has tracebacks or models closed under requests")
    if figures["exit_status"] != 0:
        problems.append(f"exit status {figures['exit_status']} after SIGTERM")
    if figures["final_model"] != 4 or [v for v, _ in figures["refused"]] != [3]:
        problems.append(f"served v{figures['final_model']}, refused {figures['refused']}")
    rss = figures["rss_mib"]
    if rss["after_warm_up"] and rss["end"] > rss["after_warm_up"] * (1 + MAX_GROWTH):
        problems.append(f"memory grew from {rss['after_warm_up']:.0f} to {rss['end']:.0f} MiB")
    return problems


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="nextword-soak-") as work:
        figures = asyncio.run(soak(args, Path(work)))
    problems = verdict(figures)
    figures["passed"] = not problems
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
