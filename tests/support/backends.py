"""Helpers for the tests of the Backend and its model process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from app.inference.backend import Backend
from app.inference.predictor import Prediction, Predictor, Query
from support.answers import assert_same_answer

T = TypeVar("T")


forks = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the model process is forked (Linux only here)"
)


def queries(count: int, top_k: int = 3) -> list[Query]:
    """Distinct texts of varied length over the random model's words w2 ... w299, each asking
    for the word after it (a trailing space)."""
    texts = [
        " ".join([f"w{2 + i}", *(f"w{2 + (7 * i + j) % 298}" for j in range(i % 9))]) + " "
        for i in range(count)
    ]
    return [Query(text, top_k) for text in texts]


def check(answers: Sequence[Prediction], asked: Sequence[Query], reference: Predictor) -> None:
    assert len(answers) == len(asked)
    for query, answer in zip(asked, answers, strict=True):
        assert_same_answer(answer, reference.predict(*query))


def run(main: Callable[[Backend], Awaitable[T]], backend: Backend) -> T:
    """Run `main(backend)` in a new event loop, and close the backend after it."""

    async def around() -> T:
        try:
            return await main(backend)
        finally:
            await backend.aclose()

    return asyncio.run(around())


async def turns(count: int) -> None:
    """Let the event loop run `count` turns (no time passes)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], within_s: float = 20.0) -> None:
    """Wait, letting the loop run, until `condition()` holds (a test failure if never)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "waited in vain"
        await asyncio.sleep(0.005)


def children() -> set[int]:
    """This process's children that have not exited."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(parent) == os.getpid() and state != "Z":
                found.add(int(entry))
    return found
