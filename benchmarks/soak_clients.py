"""The soak test's clients (benchmarks/soak.py): each holds one connection and sends a mix of
valid predictions, invalid requests (each with the status it must get) and probes."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import httpx

JSON = {"content-type": "application/json"}


def request_mix() -> list[tuple[int, str, str, dict[str, Any]]]:
    """(weight, method, path, httpx arguments incl. the status expected) of each kind."""
    return [
        (70, "POST", "/predict", {"valid": True}),
        (3, "POST", "/predict", {"json": {"text": "a", "top_k": 0}, "expect": 422}),
        (3, "POST", "/predict", {"content": b'{"text": ', "headers": JSON, "expect": 422}),
        (3, "POST", "/predict", {"content": b'{"text": "a"}', "expect": 415}),
        (3, "POST", "/predict", {"content": b'{"text": "\xff"}', "headers": JSON, "expect": 400}),
        (2, "POST", "/predict", {"json": {"text": "x" * 20_000}, "expect": 422}),
        (2, "POST", "/predict", {"content": b" " * 70_000, "headers": JSON, "expect": 413}),
        (2, "GET", "/nothing", {"expect": 404}),
        (2, "GET", "/predict", {"expect": 405}),
        (5, "GET", "/models", {"expect": 200}),
        (5, "GET", "/ready", {"expect": 200}),
    ]


class Tally:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.connection_errors: Counter[str] = Counter()
        self.error_details: list[str] = []  # what was sent, when, and what failed
        self.latencies: list[float] = []  # seconds, valid predictions only
        self.versions: Counter[int] = Counter()  # which model answered


async def client_loop(
    base: str, mix: list[Any], words: list[str], until: float, tally: Tally, rng: random.Random
) -> None:
    # A client of its own with one connection, like one keyboard app's session: an error can be
    # told apart by what came before on its connection.
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        await _requests(client, mix, words, until, tally, rng)


async def _requests(
    client: httpx.AsyncClient, mix: list[Any], words: list[str], until: float, tally: Tally,
    rng: random.Random,
) -> None:  # fmt: skip
    weights = [item[0] for item in mix]
    before: list[str] = []  # the last requests on this connection, and how they ended
    while time.monotonic() < until:
        _, method, path, spec = rng.choices(mix, weights)[0]
        arguments = {k: v for k, v in spec.items() if k not in ("valid", "expect")}
        expect = spec.get("expect", 200)
        if spec.get("valid"):
            text = " ".join(rng.choices(words, k=rng.randint(0, 30)))
            arguments["json"] = {"text": text, "top_k": rng.randint(1, 10)}
        started = time.perf_counter()
        try:
            response = await client.request(method, path, **arguments)
        except httpx.TransportError as error:
            tally.connection_errors[type(error).__name__] += 1
            causes: list[str] = []
            cause = error.__cause__ or error.__context__
            while cause is not None and len(causes) < 4:
                causes.append(repr(cause))
                cause = cause.__cause__ or cause.__context__
            tally.error_details.append(
                f"{time.strftime('%H:%M:%S')} {type(error).__name__} on {method} {path} "
                f"(expecting {expect}) after {time.perf_counter() - started:.3f} s: {error!r}; "
                f"caused by {' <- '.join(causes) or 'nothing'}; before on this connection: "
                f"{' | '.join(before[-3:]) or 'nothing'}"
            )
            before.clear()  # a new connection next
            continue
        before.append(f"{method} {path} -> {response.status_code} at {time.strftime('%H:%M:%S')}")
        del before[:-3]
        tally.statuses[response.status_code] += 1
        if response.status_code != expect:
            tally.unexpected[f"{method} {path} -> {response.status_code} (not {expect})"] += 1
        elif spec.get("valid"):
            tally.latencies.append(time.perf_counter() - started)
            tally.versions[response.json()["model"]["version"]] += 1
