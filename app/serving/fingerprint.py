"""What a version folder holds now, in a few bytes: how a refused version is known again."""

from __future__ import annotations

import hashlib
from pathlib import Path

from app import store


def fingerprint(path: Path) -> str:
    """What a version folder holds now: its manifest's bytes and each file's size and mtime.

    A refused version is retried only when this changes (a fixed file, a completed copy), so a
    broken version is not loaded again on every poll.
    """
    digest = hashlib.sha256()
    try:
        with (path / store.MANIFEST).open("rb") as handle:
            digest.update(handle.read(1 << 20))
        for item in sorted(path.iterdir()):
            stat = item.stat()
            digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    except OSError as error:
        digest.update(f"unreadable: {error.strerror}".encode())
    return digest.hexdigest()[:16]
