"""Micro-batching: concurrent requests computed together, off the event loop.

A job is one request's whole model work (read the text, step the recurrent layer, score the
vocabulary). Where it runs depends on what else is going on:

    alone (nothing else submitted, no batch running, no company for BUSY_WINDOW_S)
        on the event loop, at the end of this loop turn (`alone`): no hop to another process
        and no waiting, so a lone request costs what the model costs.
    with others (several submitted in the same turn, a batch running, or recently so)
        queued; while the worker holds fewer than WORKER_DEPTH batches (one computing, the
        next waiting its turn), up to `max_size` queued jobs go to it as one batch (`offload`:
        the model process, on the other core), while the loop goes on parsing and answering
        other requests. Without a worker, or when it has gone, a batch is computed on the loop
        (`compute`), one at a time.

Why "recently": under load, requests reach the batcher one loop turn apart as often as not, and
each would find it idle and be computed on the loop, which then does all the work while the
worker's core idles. Once requests have been seen together, they go to the worker for the
next BUSY_WINDOW_S, and the queue that builds up while a batch runs keeps batches coming.

A queued job waits for the batches ahead of it and its own.
With `max_wait_s` > 0, a batch that has company but is not full waits that long for more before
it starts (fewer, fuller batches for more latency); a lone request never waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

logger = logging.getLogger("nextword")

# After requests were last seen together, how long lone ones still go to the worker.
BUSY_WINDOW_S = 0.5
# Batches the worker holds at once. Two measured ~25 % more requests/s at c=32 than one (three
# runs each, 1,520-1,760 against 1,200-1,370); three or four were not clearly better.
WORKER_DEPTH = 2


class WorkerGone(Exception):
    """Raised by an `offload` whose worker ended: the batch is computed on the loop instead."""


class MicroBatcher(Generic[J, R]):
    """Computes one result per job, over batches; lives on one event loop.

    `compute(jobs)` is the blocking computation; `alone(job)` a lone job's, on the loop (it may
    yield the loop on long work); `offload(jobs)` the same results from the worker, if any.
    """

    def __init__(
        self,
        compute: Callable[[Sequence[J]], list[R]],
        max_size: int,
        max_wait_s: float = 0.0,
        *,
        alone: Callable[[J], Awaitable[R]] | None = None,
        offload: Callable[[Sequence[J]], Awaitable[list[R]]] | None = None,
    ) -> None:
        if max_size < 1 or max_wait_s < 0:
            raise ValueError("max_size must be 1 or more and max_wait_s 0 or more")
        self._compute = compute
        self._alone = alone
        self._offload = offload
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._queue: list[tuple[J, asyncio.Future[R]]] = []
        self._flush: asyncio.Handle | None = None  # a flush is scheduled
        self._running: set[asyncio.Task[None]] = set()  # batches (or a lone job) under way
        # Batches the worker may hold at once: the next is already there when it finishes one,
        # so it never waits for the loop to read an answer and send more.
        self.depth = WORKER_DEPTH if offload is not None else 1
        self._closed = False
        self._waited = False  # the batch being formed has waited max_wait_s already
        self._busy_until = 0.0  # loop time until which a lone request goes to the worker too
        self.batches = 0  # batches run, on the loop or the worker
        self.rows = 0  # jobs in them
        self.worker_batches = 0
        self.worker_seconds = 0.0  # from handing a batch to the worker to having its results
        self.worker_losses = 0  # batches the worker did not answer (computed on the loop)

    def run(self, jobs: Sequence[J]) -> list[R]:
        """Compute a batch here and now (the blocking path; also after `aclose`)."""
        return self._compute(jobs)

    async def submit(self, job: J) -> R:
        """The result for one job, computed alone or in a batch."""
        if self._closed:  # a straggler after aclose: answered, on the loop
            return self.run([job])[0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((job, future))
        if len(self._running) < self.depth and self._flush is None:
            # At the end of this loop turn, so that requests submitted in the same turn join.
            self._flush = loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        self._flush = None
        self._queue = [(job, future) for job, future in self._queue if not future.done()]
        if len(self._running) >= self.depth or not self._queue or self._closed:
            return  # a running batch starts the next when it ends; aclose answers the rest
        loop = asyncio.get_running_loop()
        if 1 < len(self._queue) < self.max_size and self.max_wait_s > 0 and not self._waited:
            self._waited = True
            self._flush = loop.call_later(self.max_wait_s, self._start_batch)
            return
        self._waited = False
        batch, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
        if len(batch) > 1:
            self._busy_until = loop.time() + BUSY_WINDOW_S
        worker = self._offload is not None
        if worker and (len(batch) > 1 or self._running or loop.time() < self._busy_until):
            self._track(loop.create_task(self._run_on_worker(batch)))
        elif self._alone is not None and len(batch) == 1 and not self._running:
            self._track(loop.create_task(self._run_alone(batch[0])))
        else:
            self._settle(batch, self._compute)  # on the loop, now
            if self._queue:  # the rest next turn: the loop serves others between batches
                self._flush = loop.call_soon(self._start_batch)

    async def _run_alone(self, item: tuple[J, asyncio.Future[R]]) -> None:
        assert self._alone is not None
        job, future = item
        try:
            result = await self._alone(job)
        except Exception as error:
            self._fail([item], error)
        else:
            self._count([item])
            if not future.done():
                future.set_result(result)
        finally:
            self._next()

    async def _run_on_worker(self, batch: list[tuple[J, asyncio.Future[R]]]) -> None:
        assert self._offload is not None
        jobs = [job for job, _ in batch]
        started = time.perf_counter()
        try:
            results = await self._offload(jobs)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except WorkerGone as error:
            self.worker_losses += 1
            logger.warning("%s; its batch of %d is computed on the event loop", error, len(jobs))
            self._settle(batch, self._compute)
        except Exception as error:
            self._fail(batch, error)
        else:
            self.worker_batches += 1
            self.worker_seconds += time.perf_counter() - started
            self._settle(batch, lambda _: results)
        finally:
            self._next()

    def _next(self) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._running.discard(current)  # ending: room for the next batch
        if self._queue and self._flush is None:
            self._waited = True  # they have waited for this batch: no more
            self._start_batch()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _settle(
        self, batch: list[tuple[J, asyncio.Future[R]]], compute: Callable[[Sequence[J]], list[R]]
    ) -> None:
        """Hand each request of a batch its result (or the error)."""
        try:
            results = compute([job for job, _ in batch])
        except Exception as error:
            self._fail(batch, error)
            return
        self._count(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _count(self, batch: Sequence[object]) -> None:
        self.batches += 1
        self.rows += len(batch)

    @staticmethod
    def _fail(batch: list[tuple[J, asyncio.Future[R]]], error: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Finish the batch running and answer those queued, on the loop. Idempotent."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        while self._running:
            await asyncio.shield(next(iter(self._running)))
        queued = [(job, future) for job, future in self._queue if not future.done()]
        self._queue = []
        if queued:
            self._settle(queued, self._compute)

    def stats(self) -> dict[str, float]:
        worker, seconds = self.worker_batches, self.worker_seconds
        return {
            "batches": self.batches,
            "worker_batches": worker,
            "worker_losses": self.worker_losses,
            "mean_batch_size": round(self.rows / self.batches, 2) if self.batches else 0.0,
            "mean_worker_batch_ms": round(1000 * seconds / worker, 3) if worker else 0.0,
        }
