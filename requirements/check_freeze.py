"""Compare `pip freeze` output with the pins in requirements/constraints.txt.

    docker run --rm --entrypoint pip nextword freeze | python requirements/check_freeze.py
    python requirements/check_freeze.py freeze.txt --allow nextword

Every installed package must be pinned in the lock at the installed version. Packages named with
--allow (default: nextword, the project itself) may be installed without a pin. Locked packages
that are not installed are listed but are not an error: the lock also covers the extras.
On Python 3.11, `pip freeze` leaves out pip, setuptools and wheel; `pip freeze --all` lists them
(pip is not in the lock: add --allow pip). Exit status 0 when nothing is mismatched or
unexpected, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LOCK = Path(__file__).with_name("constraints.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[normalize(match[1])] = match[2]
    return pins


def read_freeze(text: str) -> dict[str, str]:
    """name -> version, or the whole requirement for a `name @ url` or `-e` line."""
    installed: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match:
            installed[normalize(match[1])] = match[2]
        elif " @ " in line:
            name, _, where = line.partition(" @ ")
            installed[normalize(name)] = "@ " + where.strip()
        elif line.startswith("-e ") and "#egg=" in line:
            installed[normalize(line.rpartition("#egg=")[2])] = line
        else:
            installed[line] = "?"
    return installed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("freeze", nargs="?", help="pip freeze output (default: stdin)")
    parser.add_argument("--lock", type=Path, default=LOCK, help=f"default: {LOCK}")
    parser.add_argument(
        "--allow", action="append", default=None, help="may be installed unpinned (repeatable)"
    )
    args = parser.parse_args(argv)
    allowed = {normalize(name) for name in (args.allow or ["nextword"])}

    pins = read_lock(args.lock.read_text())
    freeze_text = Path(args.freeze).read_text() if args.freeze else sys.stdin.read()
    installed = read_freeze(freeze_text)

    matched = mismatched = extra = allowed_extra = 0
    for name, version in sorted(installed.items()):
        pinned = pins.get(name)
        if pinned == version:
            matched += 1
            status = "ok"
        elif pinned is not None:
            mismatched += 1
            status = f"MISMATCH (lock: {pinned})"
        elif name in allowed:
            allowed_extra += 1
            status = "not in the lock (allowed)"
        else:
            extra += 1
            status = "EXTRA (not in the lock)"
        print(f"{name:<28} {version:<24} {status}")

    not_installed = sorted(set(pins) - set(installed))
    print(
        f"\n{len(installed)} installed: {matched} matched, {mismatched} mismatched, "
        f"{extra} extra, {allowed_extra} allowed without a pin "
        f"({', '.join(sorted(allowed))}); {len(not_installed)} of {len(pins)} locked "
        "packages not installed"
    )
    if not_installed:
        print("not installed: " + " ".join(not_installed))
    return 0 if mismatched == 0 and extra == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
