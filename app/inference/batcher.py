"""Micro-batching: the output layers of concurrent requests in one matrix product, off the loop.

Each request reads its text and runs its recurrent steps on the event loop (a step or two, with
the state cache), then submits a job here and waits. A batch is computed in two parts:

    offload(jobs)          the heavy part, one NumPy call that releases the GIL throughout
                           (the output layer: ~0.2 ms and 10 MB of weights a row)
    finish(jobs, offload)  the light rest, on the loop (softmax, top-k: ~20 µs a row)

and where the heavy part runs depends on what else is going on:

    alone (nothing else submitted, no batch running, no company for BUSY_WINDOW_S)
        on the event loop, at the end of this loop turn: no thread hop and no waiting, so a
        lone request costs what the model costs.
    with others (several submitted in the same turn, a batch running, or recently so)
        queued; when the worker thread is free, up to `max_size` queued jobs go to it as one
        batch, while the loop goes on parsing and answering other requests.

Why one call on the worker: Python code holds the GIL, and the event loop runs Python all the
time under load. Each time a worker thread comes back from NumPy it waits for the GIL, up to
the interpreter's switch interval (5 ms). Measured with a busy Python thread beside it, a
16-row batch took 30 ms as six NumPy calls and 8 ms as one (3 ms with no other thread).

Why "recently": under load, requests reach the batcher one loop turn apart as often as not, and
each would find it idle and be computed on the loop, which then does all the work while the
worker's core idles. Once requests have been seen together, they go to the worker for the
next BUSY_WINDOW_S, and the queue that builds up while a batch runs keeps batches coming.

The event loop itself never runs more than one job's heavy part at a time. A queued job waits
for the batch running and its own (or more when over `max_size` are queued). With
`max_wait_s` > 0, a batch that has company but is not full waits that long for more before it
starts (fewer, fuller batches for more latency); a lone request never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

J = TypeVar("J")
X = TypeVar("X")
R = TypeVar("R")

# After requests were last seen together, how long lone ones still go to the worker.
BUSY_WINDOW_S = 0.5


class MicroBatcher(Generic[J, X, R]):
    """Computes `finish(jobs, offload(jobs))` (one result per job, in order) over batches.

    Lives on one event loop; `offload` must be thread-safe (it runs on the loop or on the
    batcher's one worker thread, never on both at once); `finish` always runs on the loop.
    """

    def __init__(
        self,
        offload: Callable[[Sequence[J]], X],
        finish: Callable[[Sequence[J], X], list[R]],
        max_size: int,
        max_wait_s: float = 0.0,
    ) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be 1 or more and max_wait_s 0 or more")
        self._offload = offload
        self._finish = finish
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._flush: asyncio.Handle | None = None  # a flush is scheduled
        self._running: asyncio.Task[None] | None = None  # a batch is on the worker
        self._executor: ThreadPoolExecutor | None = None  # made when first needed
        self._closed = False
        self._waited = False  # the batch being formed has waited max_wait_s already
        self._busy_until = 0.0  # loop time until which a lone request goes to the worker too
        self.batches = 0  # batches run, on the loop or the worker
        self.rows = 0  # jobs in them
        self.worker_batches = 0
        self.worker_seconds = 0.0  # from handing a batch to the worker to having its results

    def run(self, jobs: Sequence[J]) -> list[R]:
        """Compute a batch here and now (the blocking path; also after `aclose`)."""
        return self._finish(jobs, self._offload(jobs))

    async def submit(self, job: J) -> R:
        """The result for one job, computed alone or in a batch."""
        if self._closed:  # a straggler after aclose: answered, on the loop
            return self.run([job])[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((job, future))
        if self._running is None and self._flush is None:
            # At the end of this loop turn, so that requests submitted in the same turn join.
            self._flush = loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        self._flush = None
        self._queue = [(job, future) for job, future in self._queue if not future.done()]
        if self._running is not None or not self._queue or self._closed:
            return  # the running batch starts the next when it ends; aclose answers the rest
        loop = asyncio.get_running_loop()
        if 1 < len(self._queue) < self.max_size and self.max_wait_s > 0 and not self._waited:
            self._waited = True
            self._flush = loop.call_later(self.max_wait_s, self._start_batch)
            return
        self._waited = False
        batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
        if len(batch) > 1:
            self._busy_until = loop.time() + BUSY_WINDOW_S
        if len(batch) == 1 and loop.time() >= self._busy_until:
            self._settle(batch, lambda jobs: self._offload(jobs))  # alone: on the loop, now
        else:
            self._running = loop.create_task(self._run_on_worker(batch))

    async def _run_on_worker(self, batch: list[tuple[J, asyncio.Future[R]]]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="nextword-batch")
        jobs = [job for job, _ in batch]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            heavy = await loop.run_in_executor(self._executor, self._offload, jobs)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:
            self._fail(batch, error)
        else:
            self.worker_batches += 1
            self.worker_seconds += time.perf_counter() - started
            self._settle(batch, lambda _: heavy)
        finally:
            self._running = None
            if self._queue and self._flush is None:
                self._waited = True  # they have waited for this batch: no more
                self._start_batch()

    def _settle(
        self, batch: list[tuple[J, asyncio.Future[R]]], heavy: Callable[[Sequence[J]], X]
    ) -> None:
        """Finish a batch on the loop and hand each request its result (or the error)."""
        jobs = [job for job, _ in batch]
        try:
            results = self._finish(jobs, heavy(jobs))
        except Exception as error:
            self._fail(batch, error)
            return
        self.batches += 1
        self.rows += len(jobs)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[J, asyncio.Future[R]]], error: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Finish the batch running and answer those queued; stop the worker. Idempotent."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._running is not None:
            await asyncio.shield(self._running)
        queued = [(job, future) for job, future in self._queue if not future.done()]
        self._queue = []
        if queued:
            self._settle(queued, lambda jobs: self._offload(jobs))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def stats(self) -> dict[str, float]:
        worker, seconds = self.worker_batches, self.worker_seconds
        return {
            "batches": self.batches,
            "worker_batches": worker,
            "mean_batch_size": round(self.rows / self.batches, 2) if self.batches else 0.0,
            "mean_worker_batch_ms": round(1000 * seconds / worker, 3) if worker else 0.0,
        }
