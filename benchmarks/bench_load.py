"""What `serve_bench.py` is made of: request bodies, server processes, wrk runs, memory."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("wrk_bodies.lua")
CORPORA = [REPO.parent / "shared" / "data" / "ptb" / name for name in ("valid.txt", "test.txt")]

# --- request bodies ------------------------------------------------------------------------


def corpus_lines() -> list[list[str]]:
    """Sentences of real text (PTB valid + test), or of a generated text when they are absent."""
    lines = [
        line.split()
        for path in CORPORA
        if path.is_file()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    if lines:
        return lines
    rng = random.Random(0)  # fallback: a patterned text with a 2,000-word vocabulary
    words = [f"w{i}" for i in range(2000)]
    return [rng.choices(words, k=rng.randint(5, 30)) for _ in range(8000)]


def distinct_prefixes(lines: Sequence[Sequence[str]], seed: int = 0) -> list[str]:
    """Every distinct prefix of every sentence (1 word up to the whole) and a space after it
    (the next word is asked for), shuffled."""
    seen: dict[str, None] = {}
    for words in lines:
        for end in range(1, len(words) + 1):
            seen.setdefault(" ".join(words[:end]) + " ")
    prefixes = list(seen)
    random.Random(seed).shuffle(prefixes)
    return prefixes


def being_typed(prefixes: Sequence[str]) -> list[str]:
    """Each prefix with its last word half typed ("the company sa"): completion requests."""
    texts = []
    for prefix in prefixes:
        head, _, last = prefix.rstrip().rpartition(" ")
        typed = last[: max(1, len(last) // 2)]
        texts.append(f"{head} {typed}" if head else typed)
    return texts


def typing_texts(lines: Sequence[Sequence[str]], start: int, count: int) -> list[str]:
    """A document typed a word at a time: its first `start` words, then one more each time,
    each with the space after it (the next word is asked for).

    Sentences are separate lines, as in a text box where each ends with Enter.
    """
    units: list[str] = []
    for words in lines:
        units += [("\n" if i == 0 and units else " ") + word for i, word in enumerate(words)]
        if len(units) >= start + count:
            break
    return ["".join(units[:end]).lstrip() + " " for end in range(start, start + count)]


def write_bodies(texts: Sequence[str], folder: Path, name: str, **more: Any) -> Path:
    """One /predict body a line: each text with top_k 5 and the fields in `more`."""
    path = folder / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as sink:
        for text in texts:
            sink.write(json.dumps({"text": text, "top_k": 5, **more}) + "\n")
    return path


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    ready_s: float  # from process start to the first 200 on GET /ready

    def rss_mb(self) -> dict[str, float]:
        """The server's memory now: its process and its children (the model process)."""
        return tree_memory_mb(self.process.pid)

    def has_loaded(self, library: str) -> bool:
        """Whether a shared library whose path contains `library` is mapped in the process."""
        return library in Path(f"/proc/{self.process.pid}/maps").read_text()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the service forks a model process under load)."""
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:  # it has just exited
            continue
        found += [int(child) for child in children]
        frontier += [int(child) for child in children]
    return found


def tree_memory_mb(pid: int) -> dict[str, float]:
    """Memory of a process and its descendants, in MB (10^6 bytes).

    rss_mb: their VmRSS added up, which counts pages they share (a forked child's copy-on-write
    pages, the libraries) once per process; pss_mb: their proportional set sizes added up, each
    shared page split between its sharers: what the server as a whole holds; peak_mb: their
    VmHWM added up (an upper bound of the peak RSS).
    """
    totals = {"rss_mb": 0.0, "pss_mb": 0.0, "peak_mb": 0.0, "processes": 0.0}
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        found = dict(re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status))
        pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
        totals["rss_mb"] += int(found["VmRSS"]) * 1024 / 1e6
        totals["peak_mb"] += int(found["VmHWM"]) * 1024 / 1e6
        totals["pss_mb"] += int(pss.group(1)) * 1024 / 1e6 if pss else 0.0
        totals["processes"] += 1
    return totals


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system, seconds) used so far by process `pid`, and by its descendants
    alive now (the model process): read before and after a run, the difference is the run's."""
    tick = os.sysconf("SC_CLK_TCK")
    own = children = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
        if member == pid:
            own = used
        else:
            children += used
    return own, children


def _get_status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


@contextmanager
def serving(
    name: str, command: Sequence[str], log: Path, env: dict[str, str], ready_within: float
) -> Iterator[Server]:
    """Start a server on 127.0.0.1, wait for GET /ready, and stop it (by its PID) afterwards."""
    port = free_port()
    full = [sys.executable, *command, "--port", str(port)]
    with log.open("wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(
            full, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: see {log}")
            try:
                if _get_status(port, "/ready") == 200:
                    break
            except OSError:
                pass  # not listening yet
            if time.perf_counter() - start > ready_within:
                raise RuntimeError(f"{name} not ready within {ready_within} s: see {log}")
            time.sleep(0.005)
        yield Server(name, port, process, time.perf_counter() - start)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- load ----------------------------------------------------------------------------------


def wrk(port: int, bodies: Path, connections: int, seconds: float, limit: int) -> dict[str, float]:
    """One wrk run: at most `seconds` and `limit` responses, one body of the file each."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s",
        "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(bodies), str(limit),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's own CPU: the client's share
    found = re.search(r"^RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(found.group(1))
    result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    result["connections"] = connections
    result["wrk_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="serve_bench-")


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]
