"""What one served model has done since the server started, for GET /metrics.

One `ModelCounts` per served model, kept by its manager (app.serving.manager) and handed to each
backend it makes, so the counts run on across versions, renewed backends and model processes:
plain integers, added to on the event loop, read when /metrics is asked (app.api.metrics).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

# Where a text was looked up in the reading cache: each process has a cache of its own.
Process = Literal["server", "model_process"]


@dataclass
class ModelCounts:
    # Batches computed (on the event loop or in the model process), by their number of queries.
    batch_sizes: Counter[int] = field(default_factory=Counter)
    # Texts whose reading, or its head, was kept (hits) or not (misses), by process.
    cache_hits: Counter[Process] = field(default_factory=Counter)
    cache_misses: Counter[Process] = field(default_factory=Counter)
    # Versions loaded, checked and served (start-up included), by version.
    loads: Counter[int] = field(default_factory=Counter)
    # Versions refused (the old one kept serving), by version; None: no version was found.
    refusals: Counter[int | None] = field(default_factory=Counter)

    def cache_used(self, process: Process, hits: int, misses: int) -> None:
        """Add the look-ups one computation made in `process`'s reading cache."""
        if hits:
            self.cache_hits[process] += hits
        if misses:
            self.cache_misses[process] += misses
