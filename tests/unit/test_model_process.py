"""The model process: batches computed in a forked child, and what happens when it fails or ends."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from app.inference.batcher import WorkerGone

from app.inference.model_process import (
    NICENESS,
    ModelProcess,
    ModelProcessError,
    ModelProcessGone,
)


def doubling() -> Callable[[Sequence[int]], list[tuple[int, int]]]:
    """Built in the child: each job doubled, with the process that computed it."""
    pid = os.getpid()

    def compute(jobs: Sequence[int]) -> list[tuple[int, int]]:
        if 13 in jobs:
            raise ValueError("unlucky job")
        if -1 in jobs:
            time.sleep(60)  # stuck
        return [(2 * job, pid) for job in jobs]

    return compute


def gone(pid: int) -> bool:
    """Whether a process has exited (or is a zombie nobody reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_a_batch_is_computed_in_a_child_process_in_order() -> None:
    async def main() -> tuple[list[tuple[int, int]], int | None]:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        results = await process.run([1, 2, 3])
        again = await process.run([4])
        child = process.pid
        assert child is not None
        # Nicer than the server: the event loop goes first when they contend for the cores.
        niceness = os.getpriority(os.PRIO_PROCESS, child) - os.getpriority(os.PRIO_PROCESS, 0)
        assert niceness == min(NICENESS, 19 - os.getpriority(os.PRIO_PROCESS, 0))
        await process.aclose()
        assert gone(child)
        return results + again, child

    results, child = asyncio.run(main())
    assert [value for value, _ in results] == [2, 4, 6, 8]
    assert {pid for _, pid in results} == {child} and child != os.getpid()


def test_batches_sent_before_the_first_is_answered_are_answered_in_order() -> None:
    async def main() -> list[list[tuple[int, int]]]:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        answers = await asyncio.gather(*(process.run([i, 10 * i]) for i in range(1, 6)))
        assert process.forks == 1
        await process.aclose()
        return list(answers)

    answers = asyncio.run(main())
    assert [[value for value, _ in answer] for answer in answers] == [
        [2 * i, 20 * i] for i in range(1, 6)
    ]


def test_an_error_in_the_child_reaches_the_caller_and_the_child_goes_on() -> None:
    async def main() -> list[tuple[int, int]]:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        with pytest.raises(ModelProcessError, match="ValueError: unlucky job"):
            await process.run([12, 13])
        results = await process.run([5])
        assert process.forks == 1
        await process.aclose()
        return results

    assert [value for value, _ in asyncio.run(main())] == [10]


def test_a_child_that_died_is_reported_and_replaced_by_the_next_run() -> None:
    async def main() -> None:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        await process.run([1])
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        owed = await asyncio.gather(process.run([2]), process.run([4]), return_exceptions=True)
        assert all(isinstance(error, ModelProcessGone) for error in owed)  # both batches owed
        assert isinstance(owed[0], WorkerGone)  # which the batcher computes on the loop
        assert gone(first) and process.pid is None
        ((value, pid),) = await process.run([3])
        assert value == 6 and pid not in (first, os.getpid()) and process.forks == 2
        await process.aclose()
        await process.aclose()  # idempotent

    asyncio.run(main())


def test_a_stuck_child_is_killed_and_replaced() -> None:
    async def main() -> None:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling, 0.5)
        await process.run([1])
        stuck = process.pid
        assert stuck is not None
        started = time.monotonic()
        owed = await asyncio.gather(process.run([-1]), process.run([2]), return_exceptions=True)
        assert time.monotonic() - started < 5
        assert all(isinstance(error, ModelProcessGone) for error in owed)
        assert gone(stuck)
        ((value, _),) = await process.run([3])
        assert value == 6 and process.forks == 2
        await process.aclose()

    asyncio.run(main())


def test_a_fork_that_fails_is_reported_as_the_process_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)

    async def main() -> None:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        with pytest.raises(ModelProcessGone, match="could not be forked"):
            await process.run([1])  # which the batcher then computes on the loop
        assert process.pid is None and process.forks == 0

    asyncio.run(main())


def test_the_child_keeps_none_of_the_parents_sockets() -> None:
    # A listening socket the child kept open would go on accepting connections after the
    # server closed it at shutdown.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main() -> None:
        process: ModelProcess[int, list[tuple[int, int]]] = ModelProcess(doubling)
        await process.run([1])
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        await process.aclose()

    asyncio.run(main())


def test_the_child_ends_when_the_parent_dies_without_closing_it() -> None:
    script = (
        "import asyncio, os, sys\n"
        "from tests.test_model_process import doubling\n"
        "from app.inference.model_process import ModelProcess\n"
        "async def main():\n"
        "    process = ModelProcess(doubling)\n"
        "    await process.run([1])\n"
        "    print(process.pid, flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert done.returncode == 0, done.stderr
    child = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)
