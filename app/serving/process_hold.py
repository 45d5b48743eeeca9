"""When a model may fork its model process: only while no other model is coming or going.

A model process is forked from the server (app.inference.model_process) and keeps, for as long
as it lives, a copy of everything the server held at that moment. Forked while a version is
being loaded (or an old one has not been freed yet), it would keep that version's memory for
life, though the server itself let it go. So every served model's backend is held
(Backend.hold_process) while *any* model of the server loads or retires a version, and released
once none does: one ProcessHold for the whole server, shared by every ModelManager (a manager
made alone has one of its own).

A process forked earlier holds the models of its moment too: once a replaced version is freed,
the processes of the other models, forked while it was in memory, still hold a copy of it. Each
of those models then moves to a fresh backend (ModelManager.renew_process), whose process is
forked, without the old version, once no model is coming or going.
"""

from __future__ import annotations

from typing import Protocol

from app.inference.backend import Backend


class Member(Protocol):
    """What the hold asks of a model manager."""

    @property
    def current(self) -> Backend | None:
        """The backend serving now (None before start and after close)."""

    def busy(self) -> bool:
        """Whether it is loading or retiring a version, the calling task aside."""

    def renew_process(self) -> None:
        """Serve on with a model process forked afresh (when it has forked one)."""


class ProcessHold:
    """Holds the model processes of every member while any member is busy."""

    def __init__(self) -> None:
        self._members: list[Member] = []

    def join(self, member: Member) -> None:
        self._members.append(member)

    def hold(self) -> None:
        """No member forks from now on (a version is about to be loaded beside them)."""
        for member in self._members:
            if member.current is not None:
                member.current.hold_process(True)

    def version_freed(self, by: Member) -> None:
        """`by` has freed a replaced version: the others' processes still hold a copy of it."""
        for member in self._members:
            if member is not by:
                member.renew_process()

    def release_if_quiet(self) -> None:
        """Let every member fork again, unless one is still loading or retiring a version."""
        if any(member.busy() for member in self._members):
            return
        for member in self._members:
            if member.current is not None:
                member.current.hold_process(False)
