"""Slow and flooding clients against a real server, and refused versions published while it
serves: the minutes-long part of the adversarial suite (the fast cases are tests/adversarial).

    python benchmarks/adversarial.py               # about 2 minutes
    python benchmarks/adversarial.py --json benchmarks/results/adversarial.json

On loopback only. Serves a temporary copy of the newest version of `model_store/ptb` with the
default limits (NEXTWORD_BODY_TIMEOUT_S 5 s, NEXTWORD_HEADER_TIMEOUT_S 10 s,
NEXTWORD_MAX_CONNECTIONS 1024) and polling on, then, one phase after the other:

  slow bodies    `--slow` connections send their headers (Content-Length: 100), then a body byte
                 a second; meanwhile another client sends `--normal` /predict requests, paced
                 over the body deadline. Each slow connection must end with 408 at the deadline.
  slow headers   the same, with the headers sent a byte a second: 408 at the header deadline.
  idle flood     `--idle` connections that send nothing and `--kept` that send one request and
                 stay open (past NEXTWORD_MAX_CONNECTIONS together); then `--normal` requests,
                 each on a new connection.
  refused        `--versions` versions published one after another while a client keeps sending
                 /predict, each with a 1,000,000-word tokenizer.json (benchmarks/
                 refused_versions.py makes them); the memory (PSS of the server and its model
                 process) before and after.

It passes (exit 0) when every normal request got 200 within 1 s, every slow connection got 408
within 1.5 s of its deadline, every version was refused with the first one still served, the
memory after the versions is within 10 % of before, the server exits 0 on SIGTERM, and its log
has no traceback. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_load import free_port  # noqa: E402
from refused_versions import Sampler, big_tokenizer, mib, publish, refused  # noqa: E402

from app import store  # noqa: E402

BODY_TIMEOUT_S = 5.0  # the defaults, which the server runs with
HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1024
MAX_LATENCY_S = 1.0
LATE_S = 1.5  # how long after its deadline a slow connection may end
MAX_GROWTH = 0.10
BODY_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n"
)
SLOW_HEAD = b"POST /predict HTTP/1.1\r\nHost: bench\r\nX-Slow: "
HEALTH = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", type=int, default=200, help="slow connections a phase")
    parser.add_argument("--normal", type=int, default=100, help="normal requests a phase")
    parser.add_argument("--idle", type=int, default=2000, help="connections sending nothing")
    parser.add_argument("--kept", type=int, default=1000, help="idle after one request")
    parser.add_argument("--versions", type=int, default=20, help="refused versions")
    parser.add_argument("--words", type=int, default=1_000_000, help="oversized tokenizer words")
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    parser.add_argument("--name", default="ptb")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def drip(socks: list[socket.socket], byte: bytes, limit_s: float) -> list[tuple[float, bytes]]:
    """Send `byte` a second on every socket until the server answers or closes it (at most
    `limit_s`); for each: when (time.monotonic()) its answer came or it closed, and the answer's
    first line (b"" when closed without one, b"still open" past the limit)."""
    started = time.monotonic()
    ended: dict[socket.socket, tuple[float, bytes]] = {}
    open_ones = set(socks)
    next_drop = started + 1.0
    while open_ones and time.monotonic() - started < limit_s:
        readable, _, _ = select.select(
            list(open_ones), [], [], max(0, next_drop - time.monotonic())
        )
        for sock in readable:
            try:
                data = sock.recv(65_536)
            except OSError:
                data = b""
            ended[sock] = (time.monotonic(), data.split(b"\r\n", 1)[0])
            open_ones.discard(sock)
        if time.monotonic() >= next_drop:
            next_drop += 1.0
            for sock in list(open_ones):
                with contextlib.suppress(OSError):  # closed: its answer comes at the next select
                    sock.send(byte)
    return [ended.get(sock, (time.monotonic(), b"still open")) for sock in socks]


def normal_requests(port: int, count: int, spread_s: float) -> dict[str, Any]:
    """`count` /predict requests on one kept connection, one every `spread_s / count` s."""
    statuses: dict[str, int] = {}
    latencies = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for index in range(count):
            before = time.monotonic()
            answer = client.post("/predict", json={"text": f"the company said {index}"})
            latencies.append(time.monotonic() - before)
            statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
            time.sleep(max(0.0, spread_s / count - latencies[-1]))
    return {"statuses": statuses, **latency_figures(latencies)}


def latency_figures(latencies: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def slow_phase(
    port: int, args: argparse.Namespace, head: bytes, byte: bytes, deadline: float
) -> dict[str, Any]:
    socks, sent = [], []
    for _ in range(args.slow):
        sock = connect(port)
        sock.sendall(head)
        socks.append(sock)
        sent.append(time.monotonic())
    results: list[tuple[float, bytes]] = []
    dripping = threading.Thread(
        target=lambda: results.extend(drip(socks, byte, deadline + 10)), daemon=True
    )
    dripping.start()
    time.sleep(0.5)  # every slow request's first bytes are in
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        in_flight = client.get("/health").json()["in_flight"]
    normal = normal_requests(port, args.normal, spread_s=deadline - 1.5)
    dripping.join(timeout=deadline + 15)
    for sock in socks:
        sock.close()
    ends = [end - start for (end, _), start in zip(results, sent, strict=True)]
    lines: dict[str, int] = {}
    for _, line in results:
        key = line.decode("latin-1") or "closed without an answer"
        lines[key] = lines.get(key, 0) + 1
    return {
        "slow_connections": args.slow,
        "in_flight_while_they_wait": in_flight,
        "normal": normal,
        "slow_answers": lines,
        "slow_ended_s": {
            "deadline": deadline,
            "first": round(min(ends), 2),
            "last": round(max(ends), 2),
        },
    }


def idle_flood(port: int, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    flood = []
    for index in range(args.idle + args.kept):
        if time.monotonic() - started > 60:
            break
        sock = connect(port)
        if index >= args.idle:
            sock.sendall(HEALTH)  # and the answer is left unread: idle after one request
        flood.append(sock)
    opened_s = time.monotonic() - started
    latencies, statuses = [], {}
    for index in range(args.normal):  # each on a new connection: there must be room
        before = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            body = json.dumps({"text": f"the market {index}"})
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            status = connection.getresponse().status
        finally:
            connection.close()
        latencies.append(time.monotonic() - before)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    time.sleep(0.5)
    still_open = sum(1 for sock in flood if _is_open(sock))
    for sock in flood:
        sock.close()
    return {
        "flood_connections": len(flood),
        "opened_in_s": round(opened_s, 1),
        "normal_on_new_connections": {"statuses": statuses, **latency_figures(latencies)},
        "flood_still_open_after": still_open,
    }


def _is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while data := sock.recv(65_536):  # the unread answer of a kept connection
            del data
        return False  # closed
    except BlockingIOError:
        return True
    except OSError:
        return False


def refused_while_serving(
    port: int, pid: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    source = store.version_dir(args.store, args.name, "latest")
    tokenizer = big_tokenizer(source, args.words)
    stop = threading.Event()
    statuses: dict[str, int] = {}

    def keep_asking() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while not stop.wait(0.02):
                status = str(client.post("/predict", json={"text": "shares fell"}).status_code)
                statuses[status] = statuses.get(status, 0) + 1

    asking = threading.Thread(target=keep_asking, daemon=True)
    asking.start()
    time.sleep(2.0)
    before = mib(pid)
    sampler = Sampler(pid)
    sampler.start()
    seconds = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for index in range(args.versions):
            number = index + 2
            publish(source, work / args.name, number, tokenizer)
            published = time.monotonic()
            while refused(client, number) is None:
                if time.monotonic() - published > 60:
                    raise TimeoutError(f"v{number} was not refused within 60 s")
                time.sleep(0.05)
            seconds.append(time.monotonic() - published)
            shutil.rmtree(work / args.name / str(number))
        time.sleep(3.0)
        after = mib(pid)
        served = client.get("/ready").json()["model"]["version"]
    sampler.stopped.set()
    stop.set()
    asking.join(timeout=15)
    return {
        "versions_refused": len(seconds),
        "tokenizer_bytes": len(tokenizer),
        "refused_in_s": {
            "median": round(statistics.median(seconds), 2),
            "max": round(max(seconds), 2),
        },
        "pss_mib": {
            "before": round(before, 1),
            "peak": round(max([before, after, *sampler.samples]), 1),
            "after": round(after, 1),
        },
        "growth": round(after / before - 1, 3),
        "served_at_end": served,
        "normal_meanwhile": statuses,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    source = store.version_dir(args.store, args.name, "latest")
    shutil.copytree(source, work / args.name / "1")
    port = free_port()
    env = {**os.environ, "NEXTWORD_RELOAD_INTERVAL_S": "0.2"}
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--store",
        str(work),
        "--name",
        args.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = work / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=sink)
    figures: dict[str, Any] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(600):
                if server.poll() is not None:
                    raise RuntimeError(log.read_text())
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        figures["pss_mib_at_start"] = round(mib(server.pid), 1)
        print("slow bodies ...", flush=True)
        figures["slow_bodies"] = slow_phase(port, args, BODY_HEAD, b" ", BODY_TIMEOUT_S)
        print("slow headers ...", flush=True)
        figures["slow_headers"] = slow_phase(port, args, SLOW_HEAD, b"a", HEADER_TIMEOUT_S)
        print("idle flood ...", flush=True)
        figures["idle_flood"] = idle_flood(port, args)
        figures["pss_mib_after_the_clients"] = round(mib(server.pid), 1)
        print("refused versions ...", flush=True)
        figures["refused_versions"] = refused_while_serving(port, server.pid, args, work)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            figures["exit_status"] = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            figures["exit_status"] = "killed after 30 s"
    output = log.read_text(encoding="utf-8", errors="replace")
    figures["log"] = {
        "lines": output.count("\n"),
        "tracebacks": output.count("Traceback"),
        # A refused version is logged at ERROR, by design: any other ERROR line is a problem.
        "refusals": output.count("ERROR:    refused model"),
        "other_errors": [
            line[:200]
            for line in output.splitlines()
            if line.startswith("ERROR") and not line.startswith("ERROR:    refused model")
        ][:10],
        "warnings": sorted(
            {line[:120] for line in output.splitlines() if line.startswith("WARNING")}
        ),
    }
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures


def problems_in(figures: dict[str, Any], args: argparse.Namespace) -> list[str]:
    problems = []
    for phase in ("slow_bodies", "slow_headers"):
        found = figures.get(phase)
        if not found:
            continue
        normal = found["normal"]
        if normal["statuses"] != {"200": args.normal} or normal["max_ms"] > MAX_LATENCY_S * 1000:
            problems.append(f"{phase}: normal requests {normal}")
        ended = found["slow_ended_s"]
        if found["slow_answers"] != {"HTTP/1.1 408 Request Timeout": args.slow}:
            problems.append(f"{phase}: slow connections answered {found['slow_answers']}")
        deadline = ended["deadline"]
        if not deadline - 0.5 < ended["first"] <= ended["last"] < deadline + LATE_S:
            problems.append(f"{phase}: slow connections ended {ended}")
    flood = figures.get("idle_flood")
    if flood:
        normal = flood["normal_on_new_connections"]
        if normal["statuses"] != {"200": args.normal} or normal["max_ms"] > MAX_LATENCY_S * 1000:
            problems.append(f"idle flood: normal requests {normal}")
    versions = figures.get("refused_versions")
    if versions:
        if versions["versions_refused"] != args.versions or versions["served_at_end"] != 1:
            problems.append("not every version was refused with version 1 serving on")
        if versions["growth"] > MAX_GROWTH:
            problems.append(f"memory grew {versions['growth']:.1%} over the refused versions")
        if set(versions["normal_meanwhile"]) != {"200"}:
            problems.append(f"normal requests meanwhile: {versions['normal_meanwhile']}")
    if figures.get("exit_status") != 0:
        problems.append(f"exit status {figures.get('exit_status')} on SIGTERM")
    if figures["log"]["tracebacks"] or figures["log"]["other_errors"]:
        problems.append(f"the server's log: {figures['log']}")
    return problems


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="nextword-adversarial-") as work:
        figures = run(args, Path(work))
    problems = problems_in(figures, args)
    figures["passed"] = not problems
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
