"""Training benchmark on Penn Treebank: tokens/s, seconds per epoch, validation/test perplexity.

It also measures this machine's float32 matrix-multiply peak with NumPy in the same run, and
reports training throughput as a fraction of it (counting the model's multiply-adds per token).

    python benchmarks/train_ptb.py --recipe recipes/ptb-short.toml [--store /tmp/bench_store]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GEMM rate NumPy reaches here (all cores), in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool, caches
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def training_flops_per_token(architecture: dict[str, int | bool]) -> float:
    """Multiply-add FLOPs to train on one token: forward x 3 (forward + two backward products)."""
    vocab = int(architecture["vocab_size"])
    embedding = int(architecture["embedding_dim"])
    hidden = int(architecture["hidden_units"])
    output_in = embedding if architecture["tied"] else hidden
    forward = 2 * (embedding * hidden + hidden * hidden + output_in * vocab)
    if architecture["tied"] and embedding != hidden:
        forward += 2 * hidden * embedding  # projection
    return 3.0 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=Path("recipes/ptb-short.toml"))
    parser.add_argument("--store", default=None, help="model store to publish into")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from app.training.config import make_config
    from app.training.job import run_training

    peak_before = matmul_peak_gflops()
    config = make_config(args.recipe, store=args.store)
    published = run_training(config)
    peak = max(peak_before, matmul_peak_gflops())
    manifest = json.loads((published.path / "manifest.json").read_text())
    training = manifest["training"]
    flops = training_flops_per_token(manifest["architecture"])
    achieved = training["tokens_per_second"] * flops / 1e9
    figures = {
        "recipe": str(args.recipe),
        "model": str(published.path),
        "epochs": training["epochs_run"],
        "seconds_per_epoch": [round(r["seconds"], 1) for r in training["history"]],
        "tokens_per_second": training["tokens_per_second"],
        "valid_perplexity": manifest["metrics"]["valid"]["perplexity"],
        "test_perplexity": manifest["metrics"]["test"]["perplexity"],
        "wall_seconds": training["wall_seconds"],
        "numpy_matmul_peak_gflops": round(peak, 1),
        "training_gflops": round(achieved, 1),
        "fraction_of_peak": round(achieved / peak, 3),
    }
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
