"""checkov's Kubernetes checks on deploy/kubernetes/: none may fail. A check a manifest cannot meet
is skipped in that manifest with a `checkov.io/skip<n>` annotation and a comment saying why.

checkov is not a dependency of the project (its own pins would move the project's): .ci/run
installs it from requirements/checkov.txt into /opt/checkov-venv. NEXTWORD_CHECKOV names another
checkov executable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.kubernetes import DEPLOY, manifests
from support.models import REPO

CHECKOV = Path(os.environ.get("NEXTWORD_CHECKOV", "/opt/checkov-venv/bin/checkov"))

pytestmark = pytest.mark.skipif(
    not CHECKOV.is_file(),
    reason=f"checkov not installed at {CHECKOV} (.ci/run installs it from "
    "requirements/checkov.txt; NEXTWORD_CHECKOV names another)",
)


def _scan() -> dict[str, Any]:
    completed = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(DEPLOY.relative_to(REPO)),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--compact",
            # Offline: no guideline links or severities fetched from the vendor's service.
            "--skip-download",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    # 0: every check passed; 1: some failed (listed in the report). Anything else: no report.
    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    # One framework asked for: one report (a list when checkov runs several).
    (result,) = report if isinstance(report, list) else [report]
    return dict(result)


def test_checkov_finds_no_failed_check() -> None:
    result = _scan()
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['file_path']} {check['resource']}"
        for check in result["results"]["failed_checks"]
    ]
    assert failed == []
    summary = result["summary"]
    assert summary["parsing_errors"] == 0
    # Every object was read (a file checkov could not parse would pass by being left out); it
    # also counts the pod of each Deployment and Job as one more.
    assert summary["resource_count"] >= len(manifests())
    assert summary["passed"] > 100
    # Each skip is one of the annotated ones, and says why.
    for check in result["results"]["skipped_checks"]:
        assert check["check_result"]["suppress_comment"], check["check_id"]
