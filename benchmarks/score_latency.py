"""POST /score of a 10,000-character text, and GET /health while it computes.

    nextword serve &                       # the shipped model on 127.0.0.1:8000
    python benchmarks/score_latency.py [--url http://127.0.0.1:8000] [--rounds 5]

The text is the start of PTB's validation split (../shared/data/ptb/valid.txt, cut at a word
within NEXTWORD_MAX_TEXT_CHARS' default), or words of the model's vocabulary drawn at random
when the corpus is absent. One request warms up; then, each round, one /score request is sent
while another connection polls /health back to back, and the figures printed are the /score
time and the slowest /health answer during it (medians over the rounds are printed last).
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "ptb" / "valid.txt"
MAX_CHARS = 10_000


def long_text() -> str:
    if CORPUS.is_file():
        text = CORPUS.read_text(encoding="utf-8")[:MAX_CHARS]
        return text[: text.rfind(" ")]
    words = ["the", "company", "said", "it", "expects", "to", "report", "a", "loss", "of", "N"]
    rng = random.Random(0)
    text = ""
    while len(text) < MAX_CHARS - 10:
        text += rng.choice(words) + " "
    return text.strip()


def one_round(client: httpx.Client, url: str, text: str) -> tuple[float, float, int]:
    """(seconds of /score, slowest /health in seconds during it, /health answers during it)."""
    done = threading.Event()
    health: list[float] = []

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=10) as poller:
            while not done.is_set():
                start = time.perf_counter()
                poller.get("/health").raise_for_status()
                health.append(time.perf_counter() - start)

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.2)  # the poller's connection is open and answering
    health.clear()
    start = time.perf_counter()
    response = client.post("/score", json={"text": text})
    elapsed = time.perf_counter() - start
    done.set()
    poller.join()
    response.raise_for_status()
    return elapsed, max(health, default=float("nan")), len(health)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    text = long_text()
    with httpx.Client(base_url=args.url, timeout=30) as client:
        warm = client.post("/score", json={"text": text})
        warm.raise_for_status()
        tokens = len(warm.json()["tokens"])
        print(f"text: {len(text)} characters, {tokens} tokens scored")
        scores, slowest = [], []
        for number in range(args.rounds):
            elapsed, worst, count = one_round(client, args.url, text)
            scores.append(elapsed)
            slowest.append(worst)
            print(
                f"round {number + 1}: /score {elapsed * 1000:.0f} ms; /health answered {count} "
                f"times meanwhile, the slowest in {worst * 1000:.1f} ms"
            )
    print(
        f"median: /score {statistics.median(scores) * 1000:.0f} ms, slowest /health "
        f"{statistics.median(slowest) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
