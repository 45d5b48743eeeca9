"""The numeric tests under each OpenBLAS kernel family this CPU can run.

A BLAS picks its kernels for the CPU under it, and each family sums products in an order of its
own: a result that holds on one family only is a bug. OPENBLAS_CORETYPE makes OpenBLAS use the
family named, so one machine can check several; test_engine.py checks in each run that the
family asked for is the one in use.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from support.models import REPO

# Kernel families, old to new, and the CPU flags each needs (Nehalem: x86-64's SSE only).
CORETYPES = {"Nehalem": set(), "Sandybridge": {"avx"}, "Haswell": {"avx2", "fma"}}
NUMERIC_TESTS = ["test_engine.py", "test_same_answer.py", "test_predictor.py", "test_scoring.py"]


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# Slow, and so never run by the runs it starts: they deselect the slow tests.
@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").is_file(),
    reason="OpenBLAS kernel families are chosen here for x86-64 Linux",
)
def test_the_numeric_tests_pass_with_every_openblas_kernel_family_this_cpu_runs() -> None:
    flags = cpu_flags()
    runnable = [name for name, needs in CORETYPES.items() if needs <= flags]
    assert "Nehalem" in runnable
    failures: dict[str, str] = {}
    for coretype in runnable:
        environment = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        environment.pop("OPENBLAS_L2_SIZE", None)  # the family's own cache sizes
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *(f"tests/unit/{name}" for name in NUMERIC_TESTS),
             "-q", "-p", "no:cacheprovider", "-m", "not slow"],
            capture_output=True, text=True, timeout=600, cwd=REPO, env=environment,
        )  # fmt: skip
        output = done.stdout + done.stderr
        # The check that OpenBLAS took the family asked for must have run, not been skipped.
        if done.returncode != 0 or "OPENBLAS_CORETYPE is not set" in output:
            failures[coretype] = output
    assert not failures, "\n\n".join(
        f"=== OPENBLAS_CORETYPE={coretype} ===\n{output}" for coretype, output in failures.items()
    )
