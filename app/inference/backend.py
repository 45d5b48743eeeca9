"""Where predictions are computed: the one place that knows of the event loop, batches and
processes. A route calls `await backend.predict(query)`; below it is plain Predictor code.
(`await backend.score(text)`, for /score, reads on the loop and computes in a worker thread.)

    predict(query): queued, and the queue is looked at the end of this loop turn
      alone, nothing running, no company for BUSY_WINDOW_S -> computed at once, on the loop
                   (but a long text that would be read from scratch: see LONG_TEXT)
      otherwise -> up to max_batch queued queries as one batch, to the model process (on the
                   other core, while the loop goes on with HTTP) or, without one, on the loop

Why "no company for a while": under load, requests reach the queue one loop turn apart as often
as not; each would find it idle and be computed on the loop, which would then do all the work
while the model process's core idles. Once requests have been seen together they go to the
model process for the next BUSY_WINDOW_S.

The model process is forked from the server when first needed (copy-on-write: it shares the
weights' memory) and computes batches with the Predictor it inherited. Python runs one thread at
a time, so a worker thread would wait for the event loop at every step of Python between NumPy
calls; a process has an interpreter of its own. It runs at a lower priority (NICENESS), so that
when the two contend for the cores the event loop, which every request waits on, goes first.
If it dies, is stuck, or cannot be forked, its batches are computed on the loop and the next
batch forks another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from app.inference.counts import ModelCounts
from app.inference.model_process import ModelProcess, ModelProcessGone
from app.inference.predictor import ModelInfo, Prediction, Predictor, Query
from app.inference.scoring import NoWordToScore, Score, score_reading

logger = logging.getLogger("nextword")

# After requests were last seen together, how long lone ones still go to the model process.
BUSY_WINDOW_S = 0.5
# A text this long (characters), alone, goes to the model process when there is one, unless
# this process keeps the text or its head (then it costs the steps of a word): read from
# scratch, its recurrent steps would hold up every other request on the loop, /health included.
LONG_TEXT = 2_000
# Batches the model process holds at once: the next is already there when it finishes one, so
# it never waits for the event loop to read an answer and send more.
PROCESS_DEPTH = 2

_Item = tuple[Query, "asyncio.Future[Prediction]"]


class Backend:
    """Answers queries with one Predictor; lives on one event loop.

    `in_flight` counts the queries being answered; `wait_idle` waits for it to reach 0, so that
    a replaced model is closed only once its last request has ended.
    """

    def __init__(
        self,
        predictor: Predictor,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        model_process: bool = False,
        counts: ModelCounts | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be 1 or more and max_wait_s 0 or more")
        self.predictor = predictor
        self.info: ModelInfo = predictor.info
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.counts = counts or ModelCounts()  # for /metrics; its manager's, shared by versions
        self._process = ModelProcess(predictor, counts=self.counts) if model_process else None
        self._process_held = False  # see hold_process
        self._queue: list[_Item] = []
        self._flush: asyncio.Handle | None = None  # a look at the queue is scheduled
        self._waited = False  # the batch being formed has waited max_wait_s already
        self._sent: set[asyncio.Task[None]] = set()  # batches in the model process
        self._busy_until = 0.0  # loop time until which a lone query goes to the process too
        self._closed = False
        self.in_flight = 0
        self._scoring = 0  # texts being scored in a worker thread (see score)
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = self.rows = self.process_batches = self.process_losses = 0

    async def predict(self, query: Query) -> Prediction:
        """The prediction for one query, computed alone or in a batch."""
        self.in_flight += 1
        self._idle.clear()
        try:
            if self._closed:  # a straggler after aclose: answered here
                return self.predictor.predict_batch([query])[0]
            future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
            self._queue.append((query, future))
            self._schedule()
            return await future
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def _schedule(self, delay: float = 0.0) -> None:
        if self._flush is None and len(self._sent) < PROCESS_DEPTH:
            loop = asyncio.get_running_loop()
            self._flush = (
                loop.call_later(delay, self._start_batch)
                if delay
                else loop.call_soon(self._start_batch)
            )

    def _start_batch(self) -> None:
        self._flush = None
        queue = [item for item in self._queue if not item[1].done()]  # (cancelled: dropped)
        self._queue = queue
        if not queue or len(self._sent) >= PROCESS_DEPTH or self._closed:
            return  # a batch ending looks again; aclose answers the rest
        if 1 < len(queue) < self.max_batch and self.max_wait_s and not self._waited:
            self._waited = True  # company, room for more: wait for them once
            self._schedule(self.max_wait_s)
            return
        self._waited = False
        batch, self._queue = queue[: self.max_batch], queue[self.max_batch :]
        loop = asyncio.get_running_loop()
        if len(batch) > 1:
            self._busy_until = loop.time() + BUSY_WINDOW_S
        if self._offloads(batch, loop.time()):
            task = loop.create_task(self._in_process(batch))
            self._sent.add(task)
            task.add_done_callback(self._sent.discard)
            if self._queue:  # a backlog: the next batch goes too, while this one computes
                self._schedule()
        else:
            self._compute_here(batch)
            if self._queue:  # the rest next turn: the loop serves others between batches
                self._schedule()

    def _offloads(self, batch: list[_Item], now: float) -> bool:
        # Not forked while a score is computing in a thread: a fork copies only the forking
        # thread, and a lock the other holds (in BLAS, in malloc) would stay held in the child.
        if self._process is None or (
            (self._process_held or self._scoring) and self._process.pid is None
        ):
            return False
        if len(batch) > 1 or self._sent or now < self._busy_until:
            return True
        text = batch[0][0].text
        return len(text) >= LONG_TEXT and not self.predictor.keeps(text)

    def _compute_here(self, batch: list[_Item]) -> None:
        kept = self.predictor.cache
        hits, misses = kept.hits, kept.misses
        try:
            predictions = self.predictor.predict_batch([query for query, _ in batch])
        except Exception as error:
            _settle(batch, error)
        else:
            self._count(batch)
            _settle(batch, predictions)
        self.counts.cache_used("server", kept.hits - hits, kept.misses - misses)

    async def _in_process(self, batch: list[_Item]) -> None:
        assert self._process is not None
        try:
            # A long text alone was sent there because this process did not keep it: the
            # reading the child kept comes back, so that typing on it is computed here.
            share = len(batch) == 1 and len(batch[0][0].text) >= LONG_TEXT
            predictions, kept = await self._process.run([query for query, _ in batch], share)
            for (query, _), reading in zip(batch, kept, strict=True):
                if reading is not None:
                    self.predictor.keep(query.text, reading)
        except ModelProcessGone as error:
            self.process_losses += 1
            logger.warning("%s; its batch of %d is computed on the event loop", error, len(batch))
            self._compute_here(batch)
        except Exception as error:
            _settle(batch, error)
        else:
            self._count(batch)
            self.process_batches += 1
            _settle(batch, predictions)
        finally:
            # Room for the next batch now, not when this task's callbacks run.
            self._sent.discard(asyncio.current_task())
            if self._queue and not self._closed:
                self._waited = True  # they have waited for this batch: no more
                self._start_batch()

    def _count(self, batch: list[_Item]) -> None:
        self.batches += 1
        self.rows += len(batch)
        self.counts.batch_sizes[len(batch)] += 1

    def hold_process(self, held: bool) -> None:
        """While held, no model process is forked (batches are computed on the loop until one
        is; one forked already goes on). The model manager holds it while another model is in
        memory: a process forked then would keep a copy of that model for life."""
        self._process_held = held

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no query is in flight; False if `timeout` seconds passed first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Finish the batches under way, answer those queued, stop the model process.
        Idempotent; a query that comes later is answered on the loop."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        while self._sent:
            await asyncio.shield(next(iter(self._sent)))
        queued = [item for item in self._queue if not item[1].done()]
        self._queue = []
        if queued:
            self._compute_here(queued)
        if self._process is not None:
            await self._process.aclose()

    def stats(self) -> dict[str, float]:
        """Batches computed (and in the model process), their mean size, forks, cache use."""
        cache = self.predictor.cache
        return {
            "batches": self.batches,
            "mean_batch_size": round(self.rows / self.batches, 2) if self.batches else 0.0,
            "process_batches": self.process_batches,
            "process_losses": self.process_losses,
            "process_forks": self._process.forks if self._process else 0,
            "cache_hits": cache.hits,  # this process's; the model process has a cache of its own
            "cache_misses": cache.misses,
        }

    # --- scoring a whole text (POST /score) -------------------------------------------------

    async def score(self, text: str, continuous_cache: bool = True) -> Score:
        """Each token's probability given the text before it, and the text's perplexity (with
        the model's continuous cache, if it has one and `continuous_cache`). Raises
        NoWordToScore when the text reads as no word.

        The text is read here, on the event loop (the predictor's cache is not thread-safe);
        the recurrent steps and the output layer run in a worker thread, where NumPy's products
        release the GIL: on the loop, a long text would hold up every other request, /health
        included. Counted in `in_flight` until the thread ends, even when its caller gives up
        (a time-out): a replaced model is closed only after its last score.
        """
        kept = self.predictor.cache
        hits, misses = kept.hits, kept.misses
        reading = self.predictor.read(text)
        self.counts.cache_used("server", kept.hits - hits, kept.misses - misses)
        if len(reading.ids) < 2:
            raise NoWordToScore("the text has no word to score")
        cache = self.info.continuous_cache if continuous_cache else None
        work = asyncio.ensure_future(
            asyncio.to_thread(score_reading, self.predictor.weights, reading, cache)
        )
        self.in_flight += 1
        self._scoring += 1
        self._idle.clear()
        work.add_done_callback(self._scored)
        return await asyncio.shield(work)

    def _scored(self, work: asyncio.Future[Score]) -> None:
        if not work.cancelled():
            work.exception()  # retrieved: a caller that gave up leaves no "never retrieved" log
        self._scoring -= 1
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()


def _settle(batch: Sequence[_Item], outcome: Sequence[Prediction] | Exception) -> None:
    """Hand each query of a batch its prediction (or the error)."""
    for index, (_, future) in enumerate(batch):
        if future.done():  # its caller gave up (a time-out)
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[index])
