"""Both shipped models in one server, and what the continuous cache costs when served.

    python benchmarks/models_bench.py           # ~5 minutes; needs `wrk` and ../shared/data

One `nextword serve` on 127.0.0.1 serving every model of the store (ptb and wikitext2), loaded
with wrk as serve_bench.py does (one distinct body a request, never one repeated):

    ptb cache on      PTB prefixes, the default request (the continuous cache mixed in)
    ptb cache off     the same prefixes with "continuous_cache": false
    wikitext2         WikiText-2 prefixes with "model": "wikitext2" (its cache on)

each at 1 and 32 connections, in --rounds rounds (the three kinds one after the other in each:
figures on this VM move by up to 20 % from one minute to the next), medians reported. Then, at
c=1, typing in a long text: a 1,000-word PTB text typed on a word a request (the cache's memory
full: N pairs) against one-word requests, in alternating bursts, as serve_bench.py measures
typing with 500 words.

Figures go to benchmarks/results/models_bench.json and to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import bench_load as load
import serve_bench

RESULTS = Path(__file__).with_name("results")
WIKITEXT = load.REPO.parent / "shared" / "data" / "wikitext-2"
KINDS = {
    "ptb_cache_on": {},
    "ptb_cache_off": {"continuous_cache": False},
    "wikitext2": {"model": "wikitext2"},
}
# (name in the summary, wrk's figure, divided by)
FIGURES = (("req_per_s", "requests_per_s", 1), ("p50_ms", "p50_us", 1e3))
TARGETS = {
    "c32 throughput, cache on / cache off >= 0.85": ("cache_on_over_off_c32", ">=", 0.85),
    "typing (1,000 words) / one-word p50 <= 1.3": ("typing_1000_ratio_p50", "<=", 1.3),
}


def wikitext_lines() -> list[list[str]]:
    lines = [
        line.split()
        for name in ("valid.txt", "test.txt")
        for line in (WIKITEXT / name).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("=")  # headings: " = Title = "
    ]
    if not lines:
        raise SystemExit(f"no WikiText-2 text in {WIKITEXT}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--seconds", type=float, default=8.0, help="longest run (default 8)")
    parser.add_argument("--bodies", type=int, default=30_000, help="most requests a run")
    parser.add_argument("--typing", type=int, default=800, help="requests a typing run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if subprocess.run(["which", "wrk"], capture_output=True).returncode != 0:
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    ptb = load.distinct_prefixes(load.corpus_lines())
    wikitext = load.distinct_prefixes(wikitext_lines())
    typed = load.typing_texts(load.corpus_lines(), 999, args.typing + 1)
    args.typing_prime, args.typing_words = typed[0], 1000
    words = list(dict.fromkeys(w + " " for t in ptb[:50_000] for w in t.split()))
    # Distinct bodies for every run: 2 runs a round draw from each corpus's prefixes.
    n = min(args.bodies, min(len(ptb), len(wikitext)) // (2 * args.rounds))
    per_burst = args.typing // serve_bench.TYPING_BURSTS
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {}
    with load.scratch() as folder:
        tmp = Path(folder)
        slices: dict[str, Any] = {}
        for number in range(args.rounds):
            for c_index, connections in enumerate((1, 32)):
                part = slice((2 * number + c_index) * n, (2 * number + c_index + 1) * n)
                for kind, more in KINDS.items():
                    texts = wikitext if kind == "wikitext2" else ptb
                    name = f"{kind}-r{number}-c{connections}"
                    slices[name] = load.write_bodies(texts[part], tmp, name, **more)
        slices["one-word"] = [
            load.write_bodies(words[i * per_burst : (i + 1) * per_burst], tmp, f"one-word-{i}")
            for i in range(serve_bench.TYPING_BURSTS)
        ]
        slices["typing"] = [
            load.write_bodies(
                typed[1 + i * per_burst : 1 + (i + 1) * per_burst], tmp, f"typing-{i}"
            )
            for i in range(serve_bench.TYPING_BURSTS)
        ]
        command = ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--store", str(args.store)]
        with load.serving("service", command, tmp / "service.log", {}, 60.0) as server:
            memory = server.rss_mb()
            print(f"both models ready {server.ready_s:.3f} s after process start, PSS "
                  f"{memory['pss_mb']:.1f} MB", flush=True)  # fmt: skip
            load.wrk(server.port, slices["ptb_cache_on-r0-c32"], 8, 2, n)  # warm-up
            load.wrk(server.port, slices["wikitext2-r0-c32"], 8, 2, n)
            for number in range(args.rounds):
                for connections in (1, 32):
                    for kind in KINDS:
                        name = f"{kind}-r{number}-c{connections}"
                        run = load.wrk(server.port, slices[name], connections, args.seconds, n)
                        if run["non_2xx"]:
                            raise SystemExit(f"{name}: {run['non_2xx']} answers were not 2xx")
                        runs.setdefault(f"{kind}_c{connections}", []).append(run)
                        print(f"  round {number + 1} {kind:14} c={connections:<3} "
                              f"{run['requests_per_s']:9.1f} req/s  p50 "
                              f"{run['p50_us'] / 1000:7.3f} ms  p99 {run['p99_us'] / 1000:7.3f}"
                              f" ms  ({run['requests']} requests, {run['non_2xx']} non-2xx)",
                              flush=True)  # fmt: skip
            typing = serve_bench.measure_typing(server.port, slices, args)
            after = server.rss_mb()
    medians = {key: serve_bench.median_figures(values) for key, values in runs.items()}
    on_off = [
        on["requests_per_s"] / off["requests_per_s"]
        for on, off in zip(runs["ptb_cache_on_c32"], runs["ptb_cache_off_c32"], strict=True)
    ]
    summary: dict[str, Any] = {
        "cache_on_over_off_c32": statistics.median(on_off),
        "cache_on_over_off_c32_by_round": [round(r, 3) for r in on_off],
        "typing_1000_ratio_p50": typing["ratio_p50"],
        **{
            f"{key}_{figure}": medians[key][stat] / scale
            for key in medians
            for figure, stat, scale in (
                ("req_per_s", "requests_per_s", 1),
                ("p50_ms", "p50_us", 1e3),
            )
        },
        "ready_s": server.ready_s,
        "pss_mb_after_start": memory["pss_mb"],
        "pss_mb_after_runs": after["pss_mb"],
    }
    report = {
        "environment": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
            "seconds": round(time.time() - started, 1),
            "load_average_after": load.load_average(),
        },
        "summary": summary,
        "targets": {
            label: {
                "value": round(summary[key], 3),
                "met": summary[key] >= bound if sign == ">=" else summary[key] <= bound,
            }
            for label, (key, sign, bound) in TARGETS.items()
        },
        "runs": runs,
        "typing": typing,
    }
    print(json.dumps(summary, indent=1))
    for label, verdict in report["targets"].items():
        print(f"  {'met   ' if verdict['met'] else 'MISSED'} {label}: {verdict['value']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models_bench.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"written {args.out / 'models_bench.json'}")


if __name__ == "__main__":
    main()
