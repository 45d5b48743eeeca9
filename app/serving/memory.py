"""Give the memory of a replaced model back to the operating system.

glibc's malloc raises its mmap threshold each time a large mmapped block is freed, so after the
first model swap the next model's arrays come from the heap arenas of whichever worker thread
loaded them, and are kept there when freed: resident memory then grows by about a model's
weights at every swap. A fixed threshold keeps arrays of that size mmapped, and `free` unmaps
them; `malloc_trim` then returns the free pages the old model's smaller objects leave (its
cache, its vocabulary). benchmarks/soak.py measures memory across swaps. Per-request work is
unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import traceback

from anyio import to_thread

logger = logging.getLogger("nextword")

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
THRESHOLD_BYTES = 4 << 20


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    # musl and macOS have neither function, and no such growth either.
    return libc if libc is not None and hasattr(libc, "mallopt") else None


def release_large_frees_to_the_os(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) on other C libraries."""
    libc = _glibc()
    done = bool(libc and libc.mallopt(M_MMAP_THRESHOLD, threshold))
    logger.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done


def share_one_arena() -> bool:
    """Have every thread allocate from malloc's main arena; False on other C libraries.

    glibc gives each new thread that allocates an arena of its own (up to 8 a core), which then
    keeps its free pages: here uvloop's resolver threads, the worker thread that loaded the
    model. Nearly every allocation of the server is its event loop's, and the model process has
    one thread, so there is no contention to spread. Set before those threads first allocate."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, 1))


def trim_free_memory() -> None:
    """Return the free pages of every malloc arena (the old model's small arrays, its caches)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


async def collect_garbage() -> None:
    """Free a retired or refused model's objects, cycles included, then give the pages back.
    The objects of start-up are frozen out of the collector's sight (app.api.app); a model
    loaded then is among them, so they are unfrozen for this one collection and frozen again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    await to_thread.run_sync(trim_free_memory)


def forget_frames(error: BaseException) -> str:
    """The message of a refused version's error, once its tracebacks let go of what the load
    made: their frames (the loader's, the probe's, anyio's worker) hold the half-loaded model,
    in a cycle with the error that only a full collection would break."""
    reason = str(error)
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        traceback.clear_frames(found.__traceback__)
        found.__traceback__ = None
        found = found.__cause__ or found.__context__
    return reason
