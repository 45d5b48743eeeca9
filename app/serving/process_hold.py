"""When a model may fork its model process: only while no other model is coming or going.

A model process is forked from the server (app.inference.model_process) and keeps, for as long
as it lives, a copy of everything the server held at that moment. Forked while a version is
being loaded (or an old one has not been freed yet), it would keep that version's memory for
life, though the server itself let it go. So every served model's backend is held
(Backend.hold_process) while *any* model of the server loads or retires a version, and released
once none does: one ProcessHold for the whole server, shared by every ModelManager (a manager
made alone has one of its own).
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

    def release_if_quiet(self) -> None:
        """Let every member fork again, unless one is still loading or retiring a version."""
        if any(member.busy() for member in self._members):
            return
        for member in self._members:
            if member.current is not None:
                member.current.hold_process(False)
