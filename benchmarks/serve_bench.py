"""Serving benchmark: the service against the web framework's floor and a naive Keras server.

    python benchmarks/serve_bench.py            # ~14 minutes; needs `wrk` (apt-get install wrk)

In one run, on this machine, one server at a time on 127.0.0.1 (each stopped by its PID):

    service  `nextword serve` with the default model (model_store/ptb, latest version)
    floor    the same FastAPI / uvicorn stack and settings, an `async def` POST /predict that
             validates the request model and writes the service's body from a constant
    floor-model  the floor as earlier sessions measured it: the route returns the response
             model for FastAPI to validate and serialise (a lower ceiling, for comparison)
    naive    the same route calling the Keras model's `predict` once per request (model.keras)

wrk (one thread, a Lua script feeding distinct bodies) loads each at 1, 32 and 64 connections;
every body is a different prefix of a PTB sentence with a space after it (the next word is asked
for; valid + test: ~150,000 of them), never one repeated body. Each run is bounded in time
(--seconds) and in responses (the bodies it has). The service is also loaded at 1 and 32
connections with type-ahead's other requests: completions (each prefix with its last word half
typed) and phrases (`phrase_words: 3`).
It also measures, on the service: start-up (process start to GET /ready answering 200), resident
memory, and incremental typing (a request whose text is the previous one plus a word, 500 words
and more, against one-word requests), with the cache on and off.

Figures on this VM move by up to ±20 % from one run to the next, so the service, the floor and
the stack are measured in --rounds rounds (3), one after the other in each, each round with a
fresh server; every figure reported is the median over the rounds, and the ratios to the floor
are also given round by round (service and floor measured a minute apart). The naive server
(~15 req/s) is measured once.

Figures go to benchmarks/results/serve_bench.json and serve_bench.png, and to stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import bench_load as load

from app.inference.backend import BUSY_WINDOW_S

RESULTS = Path(__file__).with_name("results")
CONCURRENCY = (1, 32, 64)
# Type-ahead's other requests, loaded on the service alone: (name, connections).
KINDS = (("completion", 1), ("completion", 32), ("phrases", 1), ("phrases", 32))
# Typing is measured in this many bursts of one-word and typed requests, alternating.
TYPING_BURSTS = 4
TARGETS = {
    "throughput c32 service/floor >= 0.6": ("ratio_floor_c32", ">=", 0.6),
    "throughput c32 service/naive >= 100": ("ratio_naive_c32", ">=", 100.0),
    "p50 c1 service - floor <= 0.25 ms": ("p50_gap_c1_ms", "<=", 0.25),
    "typing (500+ words) / one-word p50 <= 1.2": ("typing_ratio_p50", "<=", 1.2),
    "completion c32 / next-word c32 throughput >= 0.9": ("completion_over_next_c32", ">=", 0.9),
    "ready <= 1 s after process start": ("service_ready_s", "<=", 1.0),
    "resident memory (PSS, model process included) <= 150 MB": ("service_memory_mb", "<=", 150.0),
}


def commands(store: Path) -> dict[str, list[str]]:
    model = ["--store", str(store), "--name", "ptb"]
    servers = str(Path(__file__).with_name("bench_servers.py"))
    return {
        # ptb alone (the store also holds wikitext2, which models_bench.py measures).
        "service": ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--models", "ptb", *model],
        "floor": [servers, "floor"],
        "floor-model": [servers, "floor-model"],
        "naive": [servers, "naive", *model],
        "stack": [servers, "stack", *model],
    }


def post(port: int, text: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"text": text, "top_k": 5})
        connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /predict answered {response.status}")
    finally:
        connection.close()


def measure_server(
    name: str, command: list[str], env: dict[str, str], slices: dict[str, Any], args: Any
) -> dict[str, Any]:
    log = Path(args.scratch) / f"{name}.log"
    ready_within = 180.0 if name == "naive" else 30.0
    with load.serving(name, command, log, env, ready_within) as server:
        figures: dict[str, Any] = {
            "ready_s": server.ready_s,
            "after_load": server.rss_mb(),
            "tensorflow_loaded": server.has_loaded("tensorflow"),
        }
        print(f"  {name:8} ready {server.ready_s:.3f} s after process start, resident "
              f"{figures['after_load']['rss_mb']:.1f} MB, TensorFlow loaded: "
              f"{figures['tensorflow_loaded']}", flush=True)  # fmt: skip
        load.wrk(server.port, slices["warm-up"], 8, 2, args.bodies)  # caches, allocator, TF graph
        for connections in CONCURRENCY:
            before = load.cpu_seconds(server.process.pid)
            run = load.wrk(
                server.port, slices[f"c{connections}"], connections, args.seconds, args.bodies
            )
            run["cpu_us_per_request"] = cpu_split(before, load.cpu_seconds(server.process.pid), run)
            figures[f"c{connections}"] = run
            if run["requests"] >= args.bodies:  # stopped by the bodies, not the clock
                print(f"  {name:8} c={connections}: CAPPED at {args.bodies} bodies: the rate "
                      f"is a lower bound (use fewer --seconds)", flush=True)  # fmt: skip
            print(f"  {name:8} c={connections:<3} {run['requests_per_s']:9.1f} req/s  "
                  f"p50 {run['p50_us'] / 1000:8.3f} ms  p99 {run['p99_us'] / 1000:8.3f} ms  "
                  f"({run['requests']} requests, {run['non_2xx']} non-2xx)",
                  flush=True)  # fmt: skip
            cpu = run["cpu_us_per_request"]
            print(f"  {name:8} c={connections:<3} CPU a request: server {cpu['server']:.0f} us, "
                  f"model process {cpu['model_process']:.0f} us, wrk {cpu['wrk']:.0f} us",
                  flush=True)  # fmt: skip
        figures["after_runs"] = server.rss_mb()
        after = figures["after_runs"]
        print(f"  {name:8} memory after the runs: PSS {after['pss_mb']:.1f} MB, RSS "
              f"{after['rss_mb']:.1f} MB, peak RSS {after['peak_mb']:.1f} MB "
              f"({after['processes']:.0f} processes)", flush=True)  # fmt: skip
        if name.startswith("service"):
            for kind, connections in KINDS:
                run = load.wrk(
                    server.port, slices[f"{kind}-c{connections}"], connections, args.seconds,
                    args.bodies,
                )  # fmt: skip
                figures[f"{kind}_c{connections}"] = run
                print(f"  {name:8} {kind} c={connections:<3} {run['requests_per_s']:9.1f} req/s"
                      f"  p50 {run['p50_us'] / 1000:8.3f} ms  p99 {run['p99_us'] / 1000:8.3f} ms"
                      f"  ({run['requests']} requests, {run['non_2xx']} non-2xx)",
                      flush=True)  # fmt: skip
            figures["typing"] = measure_typing(server.port, slices, args)
    return figures


def cpu_split(
    before: tuple[float, float], after: tuple[float, float], run: dict[str, Any]
) -> dict[str, float]:
    """The CPU a request cost during a run, in microseconds: the server's process (the event
    loop: HTTP, middleware, batching), its children (the model process) and the load generator.
    Two cores serve all three: their sum bounds the rate the machine can reach."""
    requests = max(run["requests"], 1)
    return {
        "server": (after[0] - before[0]) * 1e6 / requests,
        "model_process": (after[1] - before[1]) * 1e6 / requests,
        "wrk": run["wrk_cpu_s"] * 1e6 / requests,
    }


def measure_typing(port: int, slices: dict[str, Any], args: Any) -> dict[str, Any]:
    """c=1: one-word requests and a 500-word text typed on, a word a request, in alternating
    bursts (TYPING_BURSTS of each). A c=1 p50 moves by ±20 % from one second to the next on
    this VM, so each typing burst is compared with the one-word burst just before it, and the
    ratio reported is the median of those."""
    # Past the backend's busy window after the loads before: requests alone are computed on the
    # event loop, as a lone user's are (in the window they would go to the model process).
    time.sleep(2 * BUSY_WINDOW_S)
    post(port, args.typing_prime)  # the first typed text's prefix minus its last word
    bursts = []
    per_burst = args.typing // TYPING_BURSTS
    for one_word_file, typing_file in zip(slices["one-word"], slices["typing"], strict=True):
        one_word = load.wrk(port, one_word_file, 1, args.seconds, per_burst)
        typing = load.wrk(port, typing_file, 1, args.seconds, per_burst)
        bursts.append({"one_word": one_word, "typing_500_plus": typing})
    ratios = [b["typing_500_plus"]["p50_us"] / b["one_word"]["p50_us"] for b in bursts]
    result: dict[str, Any] = {
        "bursts": bursts,
        "ratio_p50_by_burst": [round(r, 3) for r in ratios],
        "ratio_p50": statistics.median(ratios),
        "ratio_mean": statistics.median(
            b["typing_500_plus"]["mean_us"] / b["one_word"]["mean_us"] for b in bursts
        ),
        "one_word_p50_us": statistics.median(b["one_word"]["p50_us"] for b in bursts),
        "typing_p50_us": statistics.median(b["typing_500_plus"]["p50_us"] for b in bursts),
    }
    print(f"  typing: one-word p50 {result['one_word_p50_us'] / 1000:.3f} ms, "
          f"{args.typing_words}+ words typed "
          f"on p50 {result['typing_p50_us'] / 1000:.3f} ms (medians of {len(bursts)} bursts); "
          f"ratio by burst {result['ratio_p50_by_burst']}", flush=True)  # fmt: skip
    return result


def summarise(servers: dict[str, dict[str, Any]]) -> dict[str, float]:
    service, floor, naive = servers["service"], servers["floor"], servers["naive"]
    summary: dict[str, float] = {}
    for c in CONCURRENCY:
        rate = service[f"c{c}"]["requests_per_s"]
        summary[f"ratio_floor_c{c}"] = rate / floor[f"c{c}"]["requests_per_s"]
        if naive[f"c{c}"]["requests"]:  # none within a short --seconds: no ratio
            summary[f"ratio_naive_c{c}"] = rate / naive[f"c{c}"]["requests_per_s"]
    summary["p50_gap_c1_ms"] = (service["c1"]["p50_us"] - floor["c1"]["p50_us"]) / 1000
    for kind, c in KINDS:
        if f"{kind}_c{c}" in service:
            ours = service[f"{kind}_c{c}"]
            summary[f"{kind}_over_next_c{c}"] = (
                ours["requests_per_s"] / service[f"c{c}"]["requests_per_s"]
            )
            summary[f"{kind}_p50_c{c}_ms"] = ours["p50_us"] / 1000
    summary["typing_ratio_p50"] = service["typing"]["ratio_p50"]
    summary["typing_ratio_mean"] = service["typing"]["ratio_mean"]
    if "service_no_cache" in servers:
        off = servers["service_no_cache"]["typing"]
        summary["typing_ratio_p50_no_cache"] = off["ratio_p50"]
    if "floor-model" in servers:  # the floor as earlier sessions measured it
        for c in CONCURRENCY:
            summary[f"ratio_floor_model_c{c}"] = (
                service[f"c{c}"]["requests_per_s"]
                / servers["floor-model"][f"c{c}"]["requests_per_s"]
            )
    if "stack" in servers:  # the service's app without the model: where the rest goes
        stack = servers["stack"]
        for c in CONCURRENCY:
            summary[f"stack_over_floor_c{c}"] = (
                stack[f"c{c}"]["requests_per_s"] / floor[f"c{c}"]["requests_per_s"]
            )
        summary["p50_gap_c1_ms_stack"] = (stack["c1"]["p50_us"] - floor["c1"]["p50_us"]) / 1000
    summary["service_ready_s"] = service["ready_s"]
    summary["service_memory_mb"] = service["after_runs"]["pss_mb"]
    summary["service_rss_sum_mb"] = service["after_runs"]["rss_mb"]
    summary["service_peak_mb"] = service["after_runs"]["peak_mb"]
    summary["service_tensorflow_loaded"] = float(service["tensorflow_loaded"])
    return summary


def median_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One figures dict from several rounds': each number the median of its values (anything
    else, such as the list of typing bursts, is the first round's: every round is in the
    report's "rounds")."""
    first = rounds[0]
    if isinstance(first, dict):
        return {key: median_figures([r[key] for r in rounds]) for key in first}
    if isinstance(first, int | float) and not isinstance(first, bool):
        return statistics.median(rounds)
    return first


def by_round(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """The service's ratios to the floor (and the stack's) in each round."""
    out: dict[str, list[float]] = {}
    for name, floor_name in (("service", "floor"), ("stack", "floor"), ("service", "floor-model")):
        if name not in rounds or floor_name not in rounds:
            continue
        pairs = list(zip(rounds[name], rounds[floor_name], strict=False))
        if floor_name != "floor":  # only the throughput ratios against the older floor
            for c in CONCURRENCY:
                out[f"{name}_over_floor_model_c{c}"] = [
                    round(ours[f"c{c}"]["requests_per_s"] / other[f"c{c}"]["requests_per_s"], 3)
                    for ours, other in pairs
                ]
            continue
        for c in CONCURRENCY:
            out[f"{name}_over_floor_c{c}"] = [
                round(ours[f"c{c}"]["requests_per_s"] / floor[f"c{c}"]["requests_per_s"], 3)
                for ours, floor in pairs
            ]
        out[f"{name}_p50_gap_c1_ms"] = [
            round((ours["c1"]["p50_us"] - floor["c1"]["p50_us"]) / 1000, 3) for ours, floor in pairs
        ]
    return out


def verdicts(summary: dict[str, float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, (key, sign, bound) in TARGETS.items():
        if key not in summary:
            out[label] = {"value": None, "met": False}
            continue
        value = summary[key]
        met = value >= bound if sign == ">=" else value <= bound
        out[label] = {"value": round(value, 3), "met": met}
    return out


def plot(servers: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        name for name in ("service", "floor", "floor-model", "naive", "stack") if name in servers
    ]
    figure, (rates, latencies) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(names)
    labels = [str(c) for c in CONCURRENCY]
    for i, name in enumerate(names):
        color = f"C{i}"  # one colour a server, in both panels
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(CONCURRENCY))]
        rates.bar(xs, [servers[name][f"c{c}"]["requests_per_s"] for c in CONCURRENCY], width,
                  label=name, color=color)  # fmt: skip
        for stat, style in (("p50", "-"), ("p99", "--")):
            values = [servers[name][f"c{c}"][f"{stat}_us"] / 1000 for c in CONCURRENCY]
            latencies.plot(labels, values, style, marker="o", color=color, label=f"{name} {stat}")
    rates.set_xticks(range(len(CONCURRENCY)), [f"c={c}" for c in CONCURRENCY])
    rates.set_yscale("log")
    rates.set_ylabel("requests / s (log)")
    rates.set_title("Throughput")
    rates.legend()
    latencies.set_yscale("log")
    latencies.set_xlabel("connections")
    latencies.set_ylabel("latency, ms (log)")
    latencies.set_title("Latency")
    latencies.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--seconds", type=float, default=8.0, help="longest run (default 8)")
    parser.add_argument("--bodies", type=int, default=40_000, help="most requests a run")
    parser.add_argument("--typing", type=int, default=800, help="requests a typing run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of service/floor/stack")
    parser.add_argument("--skip", nargs="*", default=[], help="servers not to run (debugging)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    lines = load.corpus_lines()
    prefixes = load.distinct_prefixes(lines)
    typed = load.typing_texts(lines, 499, args.typing + 1)
    args.typing_prime, args.typing_words = typed[0], 500
    words = list(dict.fromkeys(w + " " for t in prefixes[:50_000] for w in t.split()))
    started = time.time()
    environment = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "machine": platform.processor() or platform.machine(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_average_before": load.load_average(),
        "distinct_prefixes": len(prefixes),
    }
    print(f"{len(prefixes)} distinct prefixes; load average {environment['load_average_before']}")
    rounds: dict[str, list[dict[str, Any]]] = {}
    with load.scratch() as folder:
        args.scratch = folder
        tmp = Path(folder)
        n = args.bodies
        slices: dict[str, Any] = {
            name: load.write_bodies(prefixes[i * n : (i + 1) * n], tmp, name)
            for i, name in enumerate(["warm-up", "c1", "c32", "c64"])
        }
        # The prefixes in another order (the next-word runs use them all), half as many a run:
        # the service alone is loaded with these.
        reordered = load.distinct_prefixes(lines, seed=1)
        for i, (kind, connections) in enumerate(KINDS):
            texts = reordered[i * n // 2 : (i + 1) * n // 2]
            if kind == "completion":
                slices[f"{kind}-c{connections}"] = load.write_bodies(
                    load.being_typed(texts), tmp, f"{kind}-c{connections}"
                )
            else:
                slices[f"{kind}-c{connections}"] = load.write_bodies(
                    texts, tmp, f"{kind}-c{connections}", phrase_words=3
                )
        per_burst = args.typing // TYPING_BURSTS
        slices["one-word"] = [
            load.write_bodies(words[i * per_burst : (i + 1) * per_burst], tmp, f"one-word-{i}")
            for i in range(TYPING_BURSTS)
        ]
        slices["typing"] = [
            load.write_bodies(
                typed[1 + i * per_burst : 1 + (i + 1) * per_burst], tmp, f"typing-{i}"
            )
            for i in range(TYPING_BURSTS)
        ]
        cmd = commands(args.store)
        plan: list[tuple[str, list[str], dict[str, str]]] = [
            ("service", cmd["service"], {}),
            ("floor", cmd["floor"], {}),
            ("stack", cmd["stack"], {}),
            ("floor-model", cmd["floor-model"], {}),
        ]
        for number in range(1, args.rounds + 1):
            for name, command, env in plan:
                if name not in args.skip:
                    print(f"{name} (round {number} of {args.rounds}):", flush=True)
                    figures = measure_server(name, command, env, slices, args)
                    rounds.setdefault(name, []).append(figures)
        if "naive" not in args.skip:
            print("naive:", flush=True)
            env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
            rounds["naive"] = [measure_server("naive", cmd["naive"], env, slices, args)]
        if "service" not in args.skip:
            print("service, cache off (typing only):", flush=True)
            with load.serving("service_no_cache", cmd["service"], tmp / "nocache.log",
                              {"NEXTWORD_CACHE_SIZE": "0"}, 30.0) as server:  # fmt: skip
                typing = measure_typing(server.port, slices, args)
                rounds["service_no_cache"] = [{"typing": typing}]
    servers = {name: median_figures(figures) for name, figures in rounds.items()}
    environment["load_average_after"] = load.load_average()
    environment["seconds"] = round(time.time() - started, 1)
    report: dict[str, Any] = {
        "environment": environment,
        "servers": servers,  # medians over the rounds
        "by_round": by_round(rounds),
        "rounds": rounds,
    }
    complete = {"service", "floor", "naive"} <= servers.keys()
    if complete:
        summary = summarise(servers)
        report["summary"] = {k: round(v, 4) for k, v in summary.items()}
        report["targets"] = verdicts(summary)
        print(json.dumps(report["summary"], indent=1))
        print("round by round:", json.dumps(report["by_round"]))
        for label, verdict in report["targets"].items():
            print(f"  {'met   ' if verdict['met'] else 'MISSED'} {label}: {verdict['value']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_bench.json").write_text(json.dumps(report, indent=1) + "\n")
    if complete:
        plot(servers, args.out / "serve_bench.png")
    print(f"written {args.out / 'serve_bench.json'}")


if __name__ == "__main__":
    main()
