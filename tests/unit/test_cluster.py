"""The multi-worker cluster: flags and TF_CONFIG read the same way, bad ones refused in one line,
and the watchdog that ends a worker whose peers stop answering."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from app.training.cluster import cluster_from

WORKERS = "10.0.0.1:2222,10.0.0.2:2222,worker-2.train:2222"


def _tf_config(jobs: dict[str, list[str]], kind: str = "worker", index: int = 0) -> str:
    return json.dumps({"cluster": jobs, "task": {"type": kind, "index": index}})


def test_flags_write_tf_config() -> None:
    cluster = cluster_from(1, WORKERS, environ={})
    assert cluster is not None
    assert cluster.workers == ("10.0.0.1:2222", "10.0.0.2:2222", "worker-2.train:2222")
    assert (cluster.index, cluster.size, cluster.is_chief) == (1, 3, False)
    config = json.loads(cluster.tf_config)
    assert config == {
        "cluster": {"worker": list(cluster.workers)},
        "task": {"type": "worker", "index": 1},
    }


def test_flags_win_over_the_environment() -> None:
    other = _tf_config({"worker": ["a:1", "b:1"]}, "worker", 1)
    cluster = cluster_from(0, WORKERS, environ={"TF_CONFIG": other})
    assert cluster is not None and cluster.index == 0 and cluster.size == 3


def test_tf_config_is_honoured_chief_first() -> None:
    config = _tf_config({"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, "worker", 1)
    cluster = cluster_from(None, None, environ={"TF_CONFIG": config})
    assert cluster is not None
    assert cluster.workers == ("c:1", "w0:1", "w1:1")
    assert cluster.index == 2
    assert cluster.tf_config == config  # passed on as it was


def test_no_flags_and_no_tf_config_is_one_process() -> None:
    assert cluster_from(None, None, environ={}) is None


@pytest.mark.parametrize(
    ("index", "workers", "environ", "message"),
    [
        (0, None, {}, "go together"),
        (2, "a:1,b:1", {}, "from 0 to 1"),
        (0, "a:1,a:1", {}, "listed twice"),
        (0, "a,b:1", {}, "is not host:port"),
        (None, None, {"TF_CONFIG": "{not json"}, "TF_CONFIG is not"),
        (None, None, {"TF_CONFIG": _tf_config({"ps": ["p:1"], "worker": ["w:1"]})}, "only"),
        (None, None, {"TF_CONFIG": _tf_config({"worker": ["w:1"]}, index=3)}, "not in the"),
    ],
)
def test_bad_clusters_are_refused(
    index: int | None, workers: str | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_from(index, workers, environ=environ)


def _run_watched(program: str) -> subprocess.CompletedProcess[str]:
    code = (
        f"import time\nfrom app.training.cluster import Watchdog\nwatchdog = Watchdog()\n{program}"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )


def test_watchdog_ends_a_process_that_stops_making_progress() -> None:
    done = _run_watched("watchdog.arm(0.5, 'no answer from the others')\ntime.sleep(20)")
    assert done.returncode == -signal.SIGKILL
    assert done.stderr == "nextword: error: no answer from the others\n"


def test_watchdog_leaves_a_process_alone_when_disarmed_or_rearmed() -> None:
    program = (
        "watchdog.arm(1.5, 'late')\ntime.sleep(0.5)\nwatchdog.arm(2.5, 'later')\ntime.sleep(1.5)\n"
        "watchdog.disarm()\ntime.sleep(1.5)\nwatchdog.close()\nprint('finished')"
    )
    done = _run_watched(program)
    assert (done.returncode, done.stdout, done.stderr) == (0, "finished\n", "")
