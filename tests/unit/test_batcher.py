"""Micro-batching: who waits for what, where it is computed, and what happens on errors and close.

The worker here is a stand-in (`offload`: an await of `pause_s`); the model process behind it
in the service is tested in test_model_process.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from app.inference.batcher import MicroBatcher, WorkerGone


class Doubler:
    """Each job doubled; records the batches, and where each was computed."""

    def __init__(
        self, pause_s: float = 0.0, fail_on: int | None = None, gone_after: int | None = None
    ) -> None:
        self.batches: list[list[int]] = []
        self.where: list[str] = []
        self.pause_s = pause_s
        self.fail_on = fail_on
        self.gone_after = gone_after  # worker batches answered before the worker "ends"

    def compute(self, jobs: Sequence[int]) -> list[int]:
        return self._record(jobs, "loop")

    async def alone(self, job: int) -> int:
        return self._record([job], "alone")[0]

    async def offload(self, jobs: Sequence[int]) -> list[int]:
        await asyncio.sleep(self.pause_s)  # the worker's time, during which the loop runs on
        if self.gone_after is not None and self.where.count("worker") >= self.gone_after:
            raise WorkerGone("the worker ended")
        return self._record(jobs, "worker")

    def _record(self, jobs: Sequence[int], where: str) -> list[int]:
        self.batches.append(list(jobs))
        self.where.append(where)
        if self.fail_on in jobs:
            raise RuntimeError("boom")
        return [2 * job for job in jobs]


def make_batcher(
    doubler: Doubler, max_size: int, max_wait_s: float = 0.0, worker: bool = True
) -> MicroBatcher[int, int]:
    return MicroBatcher(
        doubler.compute,
        max_size,
        max_wait_s,
        alone=doubler.alone,
        offload=doubler.offload if worker else None,
    )


def test_a_request_alone_is_computed_at_once_on_the_loop() -> None:
    doubler = Doubler(pause_s=10.0)

    async def main() -> int:
        batcher = make_batcher(doubler, max_size=8, max_wait_s=10.0)
        started = time.monotonic()
        result = await batcher.submit(21)
        assert time.monotonic() - started < 1.0  # neither max_wait_s nor the worker
        await batcher.aclose()
        return result

    assert asyncio.run(main()) == 42
    assert doubler.where == ["alone"]


def test_concurrent_requests_share_batches_on_the_worker_in_order() -> None:
    doubler = Doubler(pause_s=0.01)

    async def main() -> list[int]:
        batcher = make_batcher(doubler, max_size=16)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        stats = batcher.stats()
        await batcher.aclose()
        assert stats["batches"] == len(doubler.batches) and stats["mean_batch_size"] > 1
        assert stats["worker_batches"] == len(doubler.batches)
        return list(results)

    assert asyncio.run(main()) == [2 * i for i in range(40)]
    assert max(len(batch) for batch in doubler.batches) == 16  # max_size holds
    assert sorted(job for batch in doubler.batches for job in batch) == list(range(40))
    assert set(doubler.where) == {"worker"}


def test_after_company_a_lone_request_still_goes_to_the_worker() -> None:
    doubler = Doubler()

    async def main() -> None:
        batcher = make_batcher(doubler, max_size=8)
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
        await batcher.submit(3)  # within BUSY_WINDOW_S of the batch above
        await batcher.aclose()

    asyncio.run(main())
    assert doubler.where == ["worker", "worker"]


def test_without_a_worker_batches_are_computed_on_the_loop() -> None:
    doubler = Doubler()

    async def main() -> list[int]:
        batcher = make_batcher(doubler, max_size=4, worker=False)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        await batcher.aclose()
        return list(results)

    assert asyncio.run(main()) == [2 * i for i in range(6)]
    assert doubler.where == ["loop", "loop"] and doubler.batches == [[0, 1, 2, 3], [4, 5]]


def test_the_event_loop_runs_on_while_a_batch_is_computed() -> None:
    doubler = Doubler(pause_s=0.3)

    async def main() -> int:
        batcher = make_batcher(doubler, max_size=8)
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

    assert asyncio.run(main()) >= 10  # ~30 ticks while the worker took 0.3 s


def test_a_batch_with_company_waits_for_more_up_to_max_wait() -> None:
    doubler = Doubler()

    async def main() -> None:
        batcher = make_batcher(doubler, max_size=8, max_wait_s=0.5)
        first = asyncio.gather(batcher.submit(1), batcher.submit(2))
        await asyncio.sleep(0.05)  # well within the wait: joins the same batch
        await asyncio.gather(first, batcher.submit(3))
        await batcher.aclose()

    asyncio.run(main())
    assert doubler.batches == [[1, 2, 3]]


def test_an_error_reaches_every_request_of_its_batch_and_no_other() -> None:
    doubler = Doubler(fail_on=3)

    async def main() -> list[object]:
        batcher = make_batcher(doubler, max_size=4)
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(8)), return_exceptions=True
        )
        await batcher.aclose()
        return list(results)

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results[:4]] == ["RuntimeError"] * 4
    assert results[4:] == [8, 10, 12, 14]


def test_a_batch_whose_worker_ended_is_computed_on_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    doubler = Doubler(gone_after=1)

    async def main() -> tuple[list[int], dict[str, float]]:
        batcher = make_batcher(doubler, max_size=4)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        stats = batcher.stats()
        await batcher.aclose()
        return list(results), stats

    results, stats = asyncio.run(main())
    assert results == [2 * i for i in range(8)]  # nobody got an error
    assert doubler.where == ["worker", "loop"]
    assert stats["worker_losses"] == 1
    assert "the worker ended; its batch of 4 is computed on the event loop" in caplog.text


def test_a_cancelled_request_leaves_the_others_answered() -> None:
    doubler = Doubler(pause_s=0.05)

    async def main() -> list[int]:
        batcher = make_batcher(doubler, max_size=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        tasks[3].cancel()
        done = [await t for i, t in enumerate(tasks) if i != 3]
        await batcher.aclose()
        return done

    assert asyncio.run(main()) == [0, 2, 4, 8]


def test_aclose_answers_the_queue_and_can_be_called_again() -> None:
    doubler = Doubler(pause_s=0.05)

    async def main() -> list[int]:
        batcher = make_batcher(doubler, max_size=2)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0.01)  # the first batch is on the worker, the rest queued
        await batcher.aclose()
        await batcher.aclose()
        after = await batcher.submit(10)  # a straggler is still answered, on the loop
        return [*await asyncio.gather(*tasks), after]

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10, 20]
    assert doubler.where[0] == "worker" and set(doubler.where[1:]) == {"loop"}


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        make_batcher(Doubler(), max_size=0)
    with pytest.raises(ValueError):
        make_batcher(Doubler(), max_size=4, max_wait_s=-1)
