"""Which worker of a multi-worker training job this process is (TensorFlow-free).

The cluster is TensorFlow's standard TF_CONFIG, or the flags that write it:

    nextword train ... --worker-index 1 --workers host0:2222,host1:2222
    TF_CONFIG={"cluster": {"worker": ["host0:2222", "host1:2222"]},
               "task": {"type": "worker", "index": 1}}

The flags win over a TF_CONFIG already in the environment. A TF_CONFIG with a "chief" task
(the Keras convention) is honoured as it is: the chief is then worker 0 and the workers follow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

# host:port, the host a name, IPv4 or [IPv6] address.
_ADDRESS = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")


class WorkerError(RuntimeError):
    """A worker that cannot go on: a peer never came, or was lost. The message is one line."""


@dataclass(frozen=True)
class Cluster:
    # host:port of every worker, in the order of their index (0, the chief, first).
    workers: tuple[str, ...]
    # This process's place in `workers`.
    index: int
    # The TF_CONFIG to run under (the environment's own, or written from the flags).
    tf_config: str

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def describe(self) -> str:
        return f"worker {self.index} of {self.size}"


def cluster_from(
    worker_index: int | None, workers: str | None, environ: Mapping[str, str] = os.environ
) -> Cluster | None:
    """The cluster given by the flags, else by TF_CONFIG; None: training in one process."""
    if (worker_index is None) != (workers is None):
        raise ValueError("--worker-index and --workers go together: give both or neither")
    if workers is not None and worker_index is not None:
        addresses = tuple(address.strip() for address in workers.split(","))
        _check_addresses(addresses, "--workers")
        if not 0 <= worker_index < len(addresses):
            raise ValueError(
                f"--worker-index must be from 0 to {len(addresses) - 1} (the --workers list "
                f"has {len(addresses)}), not {worker_index}"
            )
        config = {
            "cluster": {"worker": list(addresses)},
            "task": {"type": "worker", "index": worker_index},
        }
        return Cluster(addresses, worker_index, json.dumps(config))
    text = environ.get("TF_CONFIG", "").strip()
    return _from_tf_config(text) if text else None


def _from_tf_config(text: str) -> Cluster:
    try:
        config = json.loads(text)
        jobs, task = config["cluster"], config["task"]
        kind, index = task["type"], task["index"]
        chief, workers = list(jobs.get("chief", [])), list(jobs.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            'TF_CONFIG is not {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}'
        ) from None
    others = sorted(set(jobs) - {"chief", "worker"})
    if others or kind not in ("chief", "worker") or len(chief) > 1:
        raise ValueError(
            "TF_CONFIG: only one 'chief' and 'worker' tasks are supported (multi-worker mirrored "
            f"training), not {', '.join(others) or kind}"
        )
    addresses = tuple(chief + workers)
    _check_addresses(addresses, "TF_CONFIG")
    position = index if kind == "chief" else len(chief) + index
    if not isinstance(index, int) or not 0 <= position < len(addresses):
        raise ValueError(f"TF_CONFIG: task index {index!r} is not in the cluster")
    return Cluster(addresses, position, text)


def _check_addresses(addresses: tuple[str, ...], source: str) -> None:
    for address in addresses:
        if not _ADDRESS.fullmatch(address):
            raise ValueError(f"{source}: {address!r} is not host:port")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{source}: a host:port is listed twice")


# The watchdog's own program: arm on "seconds<TAB>message" lines, disarm on "0", stop at EOF.
_WATCH = """
import os, select, signal, sys, time
parent, deadline, message, pending = int(sys.argv[1]), None, "", b""
while True:
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    if not select.select([0], [], [], wait)[0]:
        os.write(2, ("nextword: error: " + message + "\\n").encode())
        os.kill(parent, signal.SIGKILL)
        sys.exit(0)
    data = os.read(0, 65536)
    if not data:
        sys.exit(0)
    *lines, pending = (pending + data).split(b"\\n")
    if lines:
        seconds, _, message = lines[-1].decode().partition("\\t")
        deadline = time.monotonic() + float(seconds) if float(seconds) > 0 else None
"""


class Watchdog:
    """Ends this process with a one-line error when the other workers stop answering in time.

    A collective operation waiting for a worker that never came (or that hangs) blocks inside
    TensorFlow, holding the GIL, and TensorFlow keeps SIGTERM for itself (preemption): neither a
    thread nor a signal handler of this process could act. A small child process keeps the
    time instead; each `arm` (a line on its stdin) sets a new deadline. If one passes, it prints
    the message and kills this process (exit status 137).
    """

    def __init__(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-c", _WATCH, str(os.getpid())], stdin=subprocess.PIPE
        )
        self._last = (0.0, "")

    def arm(self, seconds: float, message: str) -> None:
        """Fail unless `arm` or `disarm` is called again within `seconds`."""
        now = time.monotonic()
        if self._last[1] == message and now - self._last[0] < 1.0:
            return  # re-armed less than a second ago: no need to write at every step
        self._last = (now, message)
        self._send(f"{seconds}\t{message}")

    def disarm(self) -> None:
        self._last = (0.0, "")
        self._send("0")

    def close(self) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        self._child.wait()

    def _send(self, line: str) -> None:
        stdin = self._child.stdin
        if stdin is not None:
            stdin.write(line.replace("\n", " ").encode() + b"\n")
            stdin.flush()
