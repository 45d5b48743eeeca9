"""/predict throughput at 32 connections with the JSON log against the text log.

    python benchmarks/log_format_bench.py      # ~1 minute; wrk and (optionally) ../shared/data

`nextword serve` (ptb alone) is started fresh for each run, NEXTWORD_LOG_FORMAT=text and =json
alternating, 3 rounds; each run sends distinct PTB prefixes for 4 s after a 1 s warm-up. Metrics
are always on (the telemetry layer has no off switch): both sides pay for them.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import bench_load as load

COMMAND = ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--models", "ptb", "--name", "ptb"]
BODIES = 20_000


def main() -> None:
    prefixes = load.distinct_prefixes(load.corpus_lines())
    folder = Path(tempfile.mkdtemp(prefix="log_format_bench-"))
    rates: dict[str, list[float]] = {"text": [], "json": []}
    run = 0
    for number in range(3):
        for form in rates:
            texts = prefixes[run * BODIES : (run + 1) * BODIES]
            bodies = load.write_bodies(texts, folder, f"bodies-{run}")
            run += 1
            log = folder / f"{form}-{number}.log"
            with load.serving(form, COMMAND, log, {"NEXTWORD_LOG_FORMAT": form}, 30) as server:
                load.wrk(server.port, bodies, 8, 1, 2000)  # warm-up
                result = load.wrk(server.port, bodies, 32, 4, BODIES)
            if result["non_2xx"]:
                raise SystemExit(f"{form}: {result['non_2xx']} answers were not 2xx")
            rates[form].append(result["requests_per_s"])
            print(f"round {number + 1} {form:4} {result['requests_per_s']:8.1f} req/s", flush=True)
    ratios = [j / t for j, t in zip(rates["json"], rates["text"], strict=True)]
    print(f"json / text by round {[round(r, 3) for r in ratios]}, "
          f"median {statistics.median(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
