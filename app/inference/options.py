"""How a Predictor serves: its caches and its micro-batching (NEXTWORD_CACHE_SIZE, ...)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

# The model process is forked: on by default on Linux only, as macOS's system libraries are not
# safe to use in a forked child (and Windows has no fork).
MODEL_PROCESS_BY_DEFAULT = sys.platform.startswith("linux")

if TYPE_CHECKING:
    from app.settings import Settings


@dataclass(frozen=True)
class InferenceOptions:
    # Hidden states kept by token prefix, and tokenised texts kept by text (each ~1-2 KiB):
    # type-ahead then costs one recurrent step a request. 0 turns both caches off.
    cache_size: int = 4096
    # Most requests computed together in one batch. Small batches keep the event loop and the
    # model process both busy (c=32, three runs each: 8 gave 2,200-2,630 req/s; 4, 1,770-1,880;
    # 16, 1,830-1,920; 32, 1,490-1,820 over six), and the output layer's product costs about
    # as much a row at 8 rows as at 32 (~48 us).
    batch_max_size: int = 8
    # How long a batch with company waits for more requests before it starts; a request alone
    # never waits. 0 measured best (see benchmarks/README.md).
    batch_max_wait_ms: float = 0.0
    # Concurrent requests computed as one batch in a forked model process, on another core,
    # while the event loop goes on with HTTP (a request alone is computed on the loop). Off:
    # batches are computed on the loop.
    model_process: bool = MODEL_PROCESS_BY_DEFAULT
    # BLAS threads for the whole process, set when a model is loaded (None: left as they are).
    # Concurrency comes from the requests; a second BLAS thread on a small product only
    # contends with the event loop and the batch worker for the cores (4-8x slower on 2 cores).
    blas_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.blas_threads is not None and self.blas_threads < 1:
            raise ValueError(f"blas_threads must be 1 or more, or None: {self}")
        if self.cache_size < 0 or self.batch_max_size < 1 or self.batch_max_wait_ms < 0:
            raise ValueError(
                "cache_size must be 0 or more, batch_max_size 1 or more, batch_max_wait_ms "
                f"0 or more: {self}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> InferenceOptions:
        return cls(
            cache_size=settings.cache_size,
            batch_max_size=settings.batch_max_size,
            batch_max_wait_ms=settings.batch_max_wait_ms,
            model_process=settings.model_process,
        )

    def in_model_process(self) -> InferenceOptions:
        """These options for the Predictor inside the model process (which forks no other)."""
        return replace(self, model_process=False)

    def apply_blas_threads(self) -> None:
        if self.blas_threads is not None:
            from threadpoolctl import threadpool_limits  # ~10 ms; only where a model loads

            threadpool_limits(self.blas_threads, user_api="blas")
