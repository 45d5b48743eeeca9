"""Micro-batching: who waits for what, on which thread, and what happens on errors and close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from app.inference.batcher import MicroBatcher


class Doubler:
    """The heavy part: each job doubled; records the batches and the threads they ran on."""

    def __init__(self, pause_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[str] = []
        self.pause_s = pause_s
        self.fail_on = fail_on

    def __call__(self, jobs: Sequence[int]) -> list[int]:
        self.batches.append(list(jobs))
        self.threads.append(threading.current_thread().name)
        time.sleep(self.pause_s)
        if self.fail_on in jobs:
            raise RuntimeError("boom")
        return [2 * job for job in jobs]


def finish(jobs: Sequence[int], doubled: list[int]) -> list[int]:
    assert threading.current_thread() is threading.main_thread()  # the light part: on the loop
    return doubled


def make_batcher(
    compute: Doubler, max_size: int, max_wait_s: float = 0.0
) -> MicroBatcher[int, list[int], int]:
    return MicroBatcher(compute, finish, max_size, max_wait_s)


def test_a_request_alone_is_computed_at_once_on_the_loop() -> None:
    compute = Doubler()

    async def main() -> int:
        batcher = make_batcher(compute, max_size=8, max_wait_s=10.0)
        started = time.monotonic()
        result = await batcher.submit(21)
        assert time.monotonic() - started < 1.0  # max_wait_s is not for a lone request
        await batcher.aclose()
        return result

    assert asyncio.run(main()) == 42
    assert compute.threads == [threading.main_thread().name]


def test_concurrent_requests_share_batches_on_the_worker_in_order() -> None:
    compute = Doubler(pause_s=0.01)

    async def main() -> list[int]:
        batcher = make_batcher(compute, max_size=16)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        stats = batcher.stats()
        await batcher.aclose()
        assert stats["batches"] == len(compute.batches) and stats["mean_batch_size"] > 1
        return list(results)

    assert asyncio.run(main()) == [2 * i for i in range(40)]
    assert max(len(batch) for batch in compute.batches) == 16  # max_size holds
    assert sorted(job for batch in compute.batches for job in batch) == list(range(40))
    assert all(name.startswith("nextword-batch") for name in compute.threads)


def test_the_event_loop_runs_on_while_a_batch_is_computed() -> None:
    compute = Doubler(pause_s=0.3)

    async def main() -> int:
        batcher = make_batcher(compute, max_size=8)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.gather(batcher.submit(1), batcher.submit(2))  # two: a worker batch
        task.cancel()
        await batcher.aclose()
        return ticks

    assert asyncio.run(main()) >= 10  # ~30 ticks while the worker slept 0.3 s


def test_a_batch_with_company_waits_for_more_up_to_max_wait() -> None:
    compute = Doubler()

    async def main() -> None:
        batcher = make_batcher(compute, max_size=8, max_wait_s=0.5)
        first = asyncio.gather(batcher.submit(1), batcher.submit(2))
        await asyncio.sleep(0.05)  # well within the wait: joins the same batch
        await asyncio.gather(first, batcher.submit(3))
        await batcher.aclose()

    asyncio.run(main())
    assert compute.batches == [[1, 2, 3]]


def test_an_error_reaches_every_request_of_its_batch_and_no_other() -> None:
    compute = Doubler(fail_on=3)

    async def main() -> list[object]:
        batcher = make_batcher(compute, max_size=4)
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(8)), return_exceptions=True
        )
        await batcher.aclose()
        return list(results)

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results[:4]] == ["RuntimeError"] * 4
    assert results[4:] == [8, 10, 12, 14]


def test_a_cancelled_request_leaves_the_others_answered() -> None:
    compute = Doubler(pause_s=0.05)

    async def main() -> list[int]:
        batcher = make_batcher(compute, max_size=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        tasks[3].cancel()
        done = [await t for i, t in enumerate(tasks) if i != 3]
        await batcher.aclose()
        return done

    assert asyncio.run(main()) == [0, 2, 4, 8]


def test_aclose_answers_the_queue_and_can_be_called_again() -> None:
    compute = Doubler(pause_s=0.05)

    async def main() -> list[int]:
        batcher = make_batcher(compute, max_size=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0.01)  # the first batch is on the worker, the rest queued
        await batcher.aclose()
        await batcher.aclose()
        after = await batcher.submit(10)  # a straggler is still answered, on the loop
        return [*await asyncio.gather(*tasks), after]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10, 20]


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Doubler(), finish, max_size=0)
