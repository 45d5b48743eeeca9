"""The continuous cache on short texts: perplexity of PTB valid cut into texts of 1, 2, 4 and 16
sentences (each scored from a fresh state, as /score and /predict read a request's own text),
without the cache, with the plain cache (no ramp) and with the model's stored settings.

    python benchmarks/cache_short_texts.py [--split ../shared/data/ptb/valid.txt]

The paper's evaluation is one stream, where the memory is always full; a request of one
sentence has a memory of a few pairs, and the ramp (λ n / (n + ramp)) is chosen for those.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from app.inference.loading import load_predictor
from app.inference.scoring import log_probabilities
from app.training.corpus import read_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=Path, default=Path("../shared/data/ptb/valid.txt"))
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--name", default="ptb")
    args = parser.parse_args()
    predictor = load_predictor(args.store, args.name)
    stored = predictor.info.continuous_cache
    if stored is None:
        raise SystemExit(f"{predictor.info.path} has no continuous cache")
    lines = read_lines(args.split)
    tokenizer = predictor.tokenizer
    settings = {
        "without": None,
        "plain cache (ramp 0)": dataclasses.replace(stored, ramp=0.0),
        f"stored (ramp {stored.ramp:g})": stored,
    }
    print(f"{predictor.info.name} v{predictor.info.version} on {args.split}: {stored.to_dict()}")
    print(f"{'sentences a text':>17}  " + "  ".join(f"{name:>22}" for name in settings))
    for size in (1, 2, 4, 16, len(lines)):
        row = []
        for cache in settings.values():
            total, count = 0.0, 0
            for start in range(0, len(lines), size):
                ids = [tokenizer.end_id, *tokenizer.encode_lines(lines[start : start + size])]
                scored = log_probabilities(predictor.weights, ids, cache)
                total, count = total + float(scored.sum()), count + len(scored)
            row.append(math.exp(-total / count))
        label = "all (one stream)" if size == len(lines) else str(size)
        print(f"{label:>17}  " + "  ".join(f"{value:>22.2f}" for value in row), flush=True)


if __name__ == "__main__":
    main()
