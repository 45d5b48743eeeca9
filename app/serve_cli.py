"""`nextword serve` and `nextword predict` (filled in with the serving package)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_commands(commands: Any) -> None:
    return None
