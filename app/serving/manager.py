"""Which model version is served, and how a new one replaces it without a dropped request.

    poll (NEXTWORD_RELOAD_INTERVAL_S) or POST /admin/reload
      │  find the target version (NEXTWORD_MODEL_VERSION: a number or 'latest') and fingerprint
      │  its folder; nothing to do if that is what is served, or (on a poll) what was refused
      ▼
    load it aside, in a worker thread: manifest, sha256 of every file, shapes, then one probe
    prediction whose probabilities must be finite
      │  any failure: refused with one log line and remembered; the old model keeps serving
      ▼
    swap one reference (`current`): requests that already hold the old backend finish on it
      ▼
    retire the old one: wait until its requests in flight reach 0, then `aclose()` it; the
    server's other models then renew their model processes (app.serving.process_hold)

Old weights are freed when their last request ends, never before (stuck ones: a capped wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from anyio import to_thread
from threadpoolctl import threadpool_limits

from app import store
from app.inference.backend import Backend
from app.inference.blocklist import BlocklistError, load_blocklist
from app.inference.counts import ModelCounts
from app.inference.loading import load_predictor, probe
from app.inference.predictor import Predictor
from app.serving.fingerprint import fingerprint
from app.serving.memory import collect_garbage, forget_frames, release_large_frees_to_the_os
from app.serving.process_hold import ProcessHold
from app.settings import Settings
from app.store import ModelStoreError

logger = logging.getLogger("nextword")

# Refusals remembered (and shown by GET /models): the most recent ones, so memory stays bounded.
MAX_REFUSALS = 20
# How long past the request time-out an old model waits for its last requests before closing.
RETIRE_MARGIN_S = 5.0

Loader = Callable[[Settings, int], Predictor]
# Why a backend is closed: replaced, the server stopping, or served on by a fresh backend.
Retirement = Literal["replaced", "closed", "renewed"]


def load_version(settings: Settings, version: int) -> Predictor:
    """The default Loader: one version of the model, from the store (blocking); the blocklist
    is read again with each version, so an edited list takes effect with it."""
    return load_predictor(
        settings.model_store,
        settings.model_name,
        version,
        cache_size=settings.cache_size,
        blocklist=load_blocklist(settings.blocklist),
    )


@dataclass(frozen=True)
class Refusal:
    version: int | None  # None: 'latest' found no version (e.g. the store is empty)
    fingerprint: str
    reason: str
    at: float  # Unix time


@dataclass(frozen=True)
class ReloadOutcome:
    status: Literal["loaded", "unchanged", "refused"]
    version: int | None
    reason: str = ""


class ModelManager:
    """Holds the served model's backend; loads, checks and swaps in new versions; retires old.

    All methods run on the event loop (one thread); blocking file and model work goes to
    worker threads. `current` is a plain attribute, read on every request. `settings` name the
    one model it serves (model_name, model_version); `hold` is shared by the managers of one
    server (see app.serving.process_hold).
    """

    def __init__(
        self, settings: Settings, load: Loader = load_version, hold: ProcessHold | None = None
    ) -> None:
        self.settings = settings
        self.current: Backend | None = None
        self._fingerprint = ""  # of the folder `current` was loaded from
        self._load = load
        self._refused: OrderedDict[int | None, Refusal] = OrderedDict()
        self._reloading = asyncio.Lock()  # a poll and an admin request never load at once
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._unrecognised: set[str] = set()  # names in the model's folder already reported
        self._hold = hold or ProcessHold()
        self._hold.join(self)
        self.counts = ModelCounts()  # loads, refusals and its backends' work (GET /metrics)

    def refusals(self) -> list[Refusal]:  # most recent first
        return list(reversed(self._refused.values()))

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the configured version; any problem raises ModelStoreError (start-up fails)."""
        release_large_frees_to_the_os()  # or every swap would keep the old weights' memory
        threadpool_limits(1, user_api="blas")  # a 2nd BLAS thread only contends for the cores
        try:
            async with self._reloading:  # busy: the other models of the server do not fork
                self._hold.hold()
                number, path = await to_thread.run_sync(self._resolve, None)
                self._fingerprint = await to_thread.run_sync(fingerprint, path)
                self.current = await self._load_checked(number)
        finally:
            self._hold.release_if_quiet()
        info = self.current.info
        logger.info(
            "serving model %s v%d from %s (vocabulary %d)",
            info.name, info.version, info.path, info.vocabulary_size,
        )  # fmt: skip
        if self.settings.reload_interval_s > 0:
            self._poller = asyncio.create_task(self._poll(self.settings.reload_interval_s))

    async def aclose(self) -> None:
        """Stop polling, then close every model once its last request has ended."""
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
        served, self.current = self.current, None
        if served is not None:
            await self._retire(served, "closed")
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload(force=False)
            except Exception:  # a bug here must not stop future polls, nor the server
                logger.exception("checking the model store for a new version failed")

    # --- reloading ---------------------------------------------------------------------------

    async def reload(self, version: int | None = None, *, force: bool = True) -> ReloadOutcome:
        """Serve `version` (default: NEXTWORD_MODEL_VERSION) if it is new and passes the checks.

        `force=False` (polls) skips a version refused before whose folder has not changed since;
        an admin request (`force=True`) always tries again.
        """
        try:
            async with self._reloading:
                return await self._reload(version, force)
        finally:
            self._hold.release_if_quiet()

    async def _reload(self, version: int | None, force: bool) -> ReloadOutcome:
        self._hold.hold()  # another version may soon be in memory beside the models served
        try:
            number, path = await to_thread.run_sync(self._resolve, version)
        except ModelStoreError as error:  # no such version, or a path out of the store
            return self._refuse(version, "", str(error))
        print_ = await to_thread.run_sync(fingerprint, path)
        old = self.current
        if old and (old.info.version, self._fingerprint) == (number, print_):
            return ReloadOutcome("unchanged", number)
        known = self._refused.get(number)
        if not force and known is not None and known.fingerprint == print_:
            return ReloadOutcome("refused", number, known.reason)
        fresh: Backend | None = None
        try:
            fresh = await self._load_checked(number)
        except (ModelStoreError, BlocklistError) as error:  # (the list may be edited later)
            reason = forget_frames(error)
        except Exception as error:  # a bug or MemoryError: refused too, with its traceback
            logger.exception("loading model %s v%d failed", self.settings.model_name, number)
            reason = f"{type(error).__name__}: {forget_frames(error)}"
        if fresh is None:  # refused: what the version loaded goes back before the answer
            await collect_garbage()
            return self._refuse(number, print_, reason)
        old, self.current = self.current, fresh  # the swap: one reference, atomic
        self._fingerprint = print_
        self._refused.pop(number, None)
        logger.info(
            "now serving model %s v%d (was v%s)",
            self.settings.model_name, number, old.info.version if old else "-",
        )  # fmt: skip
        if old is not None:
            self._retire_soon(old, "replaced")
        return ReloadOutcome("loaded", number)

    def _resolve(self, version: int | None) -> tuple[int, Path]:
        self._report_unrecognised()
        wanted: int | str = self.settings.model_version if version is None else version
        path = store.version_dir(self.settings.model_store, self.settings.model_name, wanted)
        if not path.is_dir():
            raise ModelStoreError(
                f"model folder {path} does not exist: train it with `nextword train --name "
                f"{self.settings.model_name}` or choose another (NEXTWORD_MODEL_STORE / _NAME / "
                "_VERSION)"
            )
        return int(path.name), path

    def _report_unrecognised(self) -> None:
        """One warning when entries that are not versions (`01`, `²`, a file) appear in the
        model's folder, not one per poll; an entry removed and put back is reported again."""
        folder = self.settings.model_store / self.settings.model_name
        found = set(store.unrecognised(self.settings.model_store, self.settings.model_name))
        new, self._unrecognised = found - self._unrecognised, found
        if new:
            logger.warning("%s", store.describe_unrecognised(folder, new))

    async def _load_checked(self, number: int) -> Backend:
        predictor = await to_thread.run_sync(self._load, self.settings, number)
        try:
            await to_thread.run_sync(probe, predictor)
        except BaseException:
            del predictor  # this frame stays in the error's traceback; the model need not
            raise
        self.counts.loads[number] += 1
        return self._backend(predictor)

    def _backend(self, predictor: Predictor) -> Backend:
        settings = self.settings
        backend = Backend(
            predictor,
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            model_process=settings.model_process,
            counts=self.counts,
        )
        backend.hold_process(True)  # until no other version is coming or going (ProcessHold)
        return backend

    def _refuse(self, number: int | None, print_: str, reason: str) -> ReloadOutcome:
        known = self._refused.pop(number, None)
        self.counts.refusals[number] += 1
        if known is None or (known.fingerprint, known.reason) != (print_, reason):
            logger.error(
                "refused model %s v%s, still serving %s: %s",
                self.settings.model_name, "?" if number is None else number,
                f"v{self.current.info.version}" if self.current else "nothing", reason,
            )  # fmt: skip
        self._refused[number] = Refusal(number, print_, reason, time.time())
        while len(self._refused) > MAX_REFUSALS:
            self._refused.popitem(last=False)
        return ReloadOutcome("refused", number, reason)

    def renew_process(self) -> None:
        """Serve from a fresh backend over the same model, its model process not forked yet,
        and retire the old backend (its requests end on it, then its process). ProcessHold asks
        this once another model's replaced version is freed: a process forked while that
        version was in memory would keep a copy of it for life."""
        old = self.current
        if old is None or not old.stats()["process_forks"]:
            return  # never forked: it holds no copy of anything
        self.current = self._backend(old.predictor)
        self._retire_soon(old, "renewed")

    def _retire_soon(self, old: Backend, why: Retirement) -> None:
        task = asyncio.create_task(self._retire(old, why))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Backend, why: Retirement) -> None:
        grace = self.settings.predict_timeout_s + RETIRE_MARGIN_S
        if not await old.wait_idle(grace):
            logger.warning(
                "closing model v%d with %d requests still in flight after %.0f s",
                old.info.version, old.in_flight, grace,
            )  # fmt: skip
        try:
            await old.aclose()
        except Exception:
            logger.exception("closing model v%d failed", old.info.version)
        del old
        if why != "renewed":  # (a renewed backend's model lives on in its successor)
            await collect_garbage()
        if why == "replaced":
            self._hold.version_freed(self)
        self._hold.release_if_quiet()

    def busy(self) -> bool:
        """Whether a version is being loaded or retired (the calling task's own retirement,
        which is ending, aside): no model of the server may fork its model process meanwhile."""
        me = asyncio.current_task()
        return self._reloading.locked() or any(
            not task.done() and task is not me for task in self._retiring
        )
