"""The models one server serves side by side (NEXTWORD_MODELS), by name.

    ModelRegistry
      ├─ "ptb"        ModelManager ─> current Backend (its own model process, cache, poller)
      ├─ "wikitext2"  ModelManager ─> current Backend
      └─ ProcessHold  shared: no model forks its process while any model loads or retires one

Each model is a server of one model as before: its own manager (hot reload, refusals, POST
/admin/reload), with NEXTWORD_MODEL_VERSION for the default model and `latest` for the others
(Settings.for_model). A request names its model or gets the default (NEXTWORD_MODEL_NAME).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from app.inference.backend import Backend
from app.serving.manager import Loader, ModelManager, Refusal, load_version
from app.serving.process_hold import ProcessHold
from app.settings import Settings

logger = logging.getLogger("nextword")


class UnknownModel(LookupError):
    """A request named a model this server does not serve."""

    def __init__(self, name: str, served: Sequence[str]) -> None:
        self.name = name
        self.served = list(served)
        super().__init__(f"{name!r} is not served here; the models served are {', '.join(served)}")


class ModelRegistry:
    """One ModelManager per served model, started and closed together.

    `backend(name)` is read on every request: a dictionary look-up and an attribute.
    """

    def __init__(self, settings: Settings, load: Loader = load_version) -> None:
        self.default = settings.model_name
        self._hold = ProcessHold()
        self.managers: dict[str, ModelManager] = {
            name: ModelManager(settings.for_model(name), load, self._hold)
            for name in settings.models
        }

    @property
    def names(self) -> list[str]:
        """The models served, in the order NEXTWORD_MODELS gives (or the store's, sorted)."""
        return list(self.managers)

    def manager(self, name: str | None = None) -> ModelManager:
        """The manager of model `name` (None: the default model); UnknownModel if not served."""
        found = self.managers.get(self.default if name is None else name)
        if found is None:
            raise UnknownModel(str(name), self.names)
        return found

    def backend(self, name: str | None = None) -> Backend | None:
        """The backend serving model `name` now (None: the default model); None while it is
        not loaded (before start-up, after shut-down); UnknownModel if it is not served."""
        return self.manager(name).current

    def backends(self) -> dict[str, Backend] | None:
        """Every model's backend, by name; None unless every one is loaded."""
        found = {name: manager.current for name, manager in self.managers.items()}
        served = {name: backend for name, backend in found.items() if backend is not None}
        return served if len(served) == len(found) else None

    def refusals(self) -> list[tuple[str, Refusal]]:
        """The versions refused, with their model's name, most recent first."""
        refused = [
            (name, refusal)
            for name, manager in self.managers.items()
            for refusal in manager.refusals()
        ]
        return sorted(refused, key=lambda item: item[1].at, reverse=True)

    async def start(self) -> None:
        """Load every model, one after the other (each load's peak memory is a model's files
        read: one at a time keeps the peak to the largest). Any model that cannot be served
        raises ModelStoreError, and the models loaded before it are closed."""
        started: list[ModelManager] = []
        try:
            for manager in self.managers.values():
                await manager.start()
                started.append(manager)
        except BaseException:
            for manager in reversed(started):
                await manager.aclose()
            raise
        if len(started) > 1:
            logger.info("serving %d models, %s by default", len(started), self.default)

    async def aclose(self) -> None:
        """Stop every model's polls; close each model once its last request has ended."""
        for manager in self.managers.values():
            await manager.aclose()
