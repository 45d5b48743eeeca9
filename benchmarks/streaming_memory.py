"""Corpora larger than memory: peak RSS of `nextword train` on a generated corpus of 1 GB or more
against the same run on a 10 MB one, and tokens/s of the streamed input against in-memory ids.

    nice -n 19 python benchmarks/streaming_memory.py                # 10 MB and 1,100 MB
    python benchmarks/streaming_memory.py --big-mb 100 --skip-throughput   # a quick look

Memory: each corpus is written to a temporary folder (deleted at the end) as lines of 12 words
drawn from a Zipf distribution over 5,000 words; one validation file (0.2 MB, the same generator)
serves both runs. Each run is a fresh `python -m app.cli train` process, the same settings but
the corpus (vocabulary pass, ids written to disk, `--max-windows` windows of training, validation,
publishing into a scratch store); its peak RSS is the kernel's ru_maxrss of that process.

Throughput: app.training.trainer.train() on Penn Treebank (recipes/ptb-short.toml's model) for
`--windows` windows, with the ids in memory and with the same ids streamed from a token file,
alternating, `--rounds` times each; the median tokens/s of each (training time only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PTB = REPO.parent / "shared" / "data" / "ptb"
WORDS = 5_000
WORDS_A_LINE = 12
MODEL = ["--embedding-dim", "128", "--hidden-units", "128", "--batch-size", "32", "--bptt", "35"]


def generate(path: Path, megabytes: float, seed: int) -> None:
    """Write about `megabytes` MB of text fast: numpy draws the words, bytes.join writes them."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array([f"w{i}".encode() for i in range(WORDS)], dtype=object)
    weights = 1.0 / np.arange(1, WORDS + 1)
    weights /= weights.sum()
    target = int(megabytes * 1e6)
    written = 0
    with path.open("wb") as handle:
        while written < target:
            words = vocabulary[rng.choice(WORDS, size=(20_000, WORDS_A_LINE), p=weights)]
            block = b"\n".join(b" ".join(line) for line in words) + b"\n"
            handle.write(block)
            written += len(block)


def peak_rss_of_training(corpus: Path, valid: Path, store: Path, windows: int) -> dict[str, float]:
    """Run `nextword train` in a fresh process; its peak RSS (MB), wall time and tokens."""
    command = [sys.executable, "-m", "app.cli", "train", str(corpus), "--valid", str(valid)]
    command += ["--preset", "ptb", "--max-vocab", "10000", *MODEL, "--epochs", "1"]
    command += ["--max-windows", str(windows), "--store", str(store), "--name", corpus.stem]
    command += ["--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = store.parent / f"{corpus.stem}.log"
    started = time.perf_counter()
    with log.open("wb") as output_file:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output_file, stderr=output_file
        )
        _, status, usage = os.wait4(process.pid, 0)
    output = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training on {corpus} failed:\n{output[-2000:]}")
    tokens = re.search(r"corpus: ([\d,]+) / ", output)
    return {
        "corpus_mb": round(corpus.stat().st_size / 1e6, 1),
        "train_tokens": int(tokens.group(1).replace(",", "")) if tokens else 0,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KB on Linux
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def throughput(windows: int, rounds: int, scratch: Path) -> dict[str, float]:
    """Median training tokens/s on PTB: ids in memory against ids streamed from disk."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from app.tokenizer import Tokenizer
    from app.training.config import load_recipe, make_config
    from app.training.corpus import read_lines
    from app.training.stream import write_ids
    from app.training.trainer import train

    recipe = load_recipe(REPO / "recipes" / "ptb-short.toml")
    recipe.update(train=str(PTB / "train.txt"), valid="", test="", store=str(scratch))
    config = make_config(None, **{**recipe, "epochs": 1, "max_windows": windows})
    lines = read_lines(PTB / "train.txt")
    tokenizer = Tokenizer.build(lines, config.tokenizer_config(), config.max_vocab)
    in_memory = tokenizer.encode_lines(lines)
    streamed, _ = write_ids(lines, tokenizer, scratch / "ptb.ids")
    valid = tokenizer.encode_lines(read_lines(PTB / "valid.txt"))[:2000]  # not timed
    rates: dict[str, list[float]] = {"in_memory": [], "streamed": []}
    for _ in range(rounds):
        for name, ids in (("in_memory", in_memory), ("streamed", streamed)):
            result = train(ids, valid, tokenizer.size, config, log=lambda _: None, verbose=False)
            rates[name].append(result.train_tokens_per_second)
    medians = {name: round(statistics.median(values)) for name, values in rates.items()}
    return {
        **{f"{name}_tokens_per_second": value for name, value in medians.items()},
        "streamed_over_in_memory": round(medians["streamed"] / medians["in_memory"], 3),
        "rounds": {name: [round(v) for v in values] for name, values in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=float, default=10)
    parser.add_argument("--big-mb", type=float, default=1100)
    parser.add_argument("--windows", type=int, default=300, help="training windows a run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput runs of each kind")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--tmp", type=Path, default=None, help="where the corpora are written")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/streaming.json")
    args = parser.parse_args()
    results: dict[str, object] = {"windows": args.windows}
    with tempfile.TemporaryDirectory(prefix="nextword-bench-", dir=args.tmp) as folder:
        scratch = Path(folder)
        valid = scratch / "valid.txt"
        generate(valid, 0.2, seed=99)
        sizes = [] if args.skip_memory else [("small", args.small_mb), ("big", args.big_mb)]
        for label, megabytes in sizes:
            corpus = scratch / f"{label}.txt"
            started = time.perf_counter()
            generate(corpus, megabytes, seed=1)
            written = time.perf_counter() - started
            run = peak_rss_of_training(corpus, valid, scratch / "store", args.windows)
            corpus.unlink()
            results[label] = {**run, "generate_seconds": round(written, 1)}
            print(f"{label}: {json.dumps(results[label])}", flush=True)
        small, big = results.get("small"), results.get("big")
        if isinstance(small, dict) and isinstance(big, dict):
            results["big_over_small_rss"] = round(big["peak_rss_mb"] / small["peak_rss_mb"], 3)
            print(f"peak RSS, big / small: {results['big_over_small_rss']}", flush=True)
        if not args.skip_throughput and PTB.is_dir():
            results["throughput_ptb"] = throughput(args.windows, args.rounds, scratch)
            print(f"throughput: {json.dumps(results['throughput_ptb'])}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
