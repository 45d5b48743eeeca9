"""The model process (app.inference.model_process): batches computed in a forked child, and
what the backend does when that child dies, is stuck or cannot be forked."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from support.backends import check, children, forks, queries, run, until
from support.models import REPO

from app.inference import backend as backend_module
from app.inference.backend import Backend
from app.inference.model_process import NICENESS, ModelProcess, ModelProcessGone
from app.inference.predictor import Prediction, Predictor, Query

pytestmark = forks


def gone(pid: int) -> bool:
    """Whether a process has exited (or is a zombie nobody reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def stall_first_batch_in_a_child(
    predictor: Predictor, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch a model process computes writes `marker` (its pid) and then sleeps, so
    that a test knows the process is mid-run; later processes, and the loop, compute as usual."""
    parent, compute = os.getpid(), predictor.predict_batch

    def predict_batch(asked: Sequence[Query]) -> list[Prediction]:
        if os.getpid() != parent and not marker.exists():
            written = marker.with_suffix(".tmp")
            written.write_text(str(os.getpid()))
            written.replace(marker)  # whole: the test reads the pid as soon as it is there
            time.sleep(60)
        return compute(asked)

    monkeypatch.setattr(predictor, "predict_batch", predict_batch)


# --- when the model process fails ---------------------------------------------------------------


def test_a_batch_whose_model_process_was_killed_mid_run_is_computed_on_the_loop(
    predictor: Predictor,
    reference: Predictor,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "computing"
    stall_first_batch_in_a_child(predictor, marker, monkeypatch)
    asked = queries(8)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        first = asyncio.gather(*(backend.predict(query) for query in asked[:4]))
        await until(marker.exists)
        killed = int(marker.read_text())
        os.kill(killed, signal.SIGKILL)
        answers = await first
        assert gone(killed) and backend.stats()["process_forks"] == 1
        # The next batch forks another model process, which answers it.
        answers += await asyncio.gather(*(backend.predict(query) for query in asked[4:]))
        return answers, backend.stats()

    with caplog.at_level(logging.WARNING, logger="nextword"):
        answers, stats = run(main, Backend(predictor, max_batch=4, model_process=True))
    check(answers, asked, reference)
    assert stats["process_losses"] == 1 and stats["process_forks"] == 2
    assert stats["process_batches"] == 1 and stats["batches"] == 2
    assert "its batch of 4 is computed on the event loop" in caplog.text


def test_a_stuck_model_process_is_killed_and_its_batch_answered(
    predictor: Predictor, reference: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    impatient = functools.partial(ModelProcess, answer_within_s=0.5)
    monkeypatch.setattr(backend_module, "ModelProcess", impatient)
    asked = queries(6)
    before = children()

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        answers = list(await asyncio.gather(*(backend.predict(q) for q in asked[:2])))
        (stuck,) = children() - before
        os.kill(stuck, signal.SIGSTOP)
        answers += await asyncio.gather(*(backend.predict(q) for q in asked[2:4]))
        assert gone(stuck)
        answers += await asyncio.gather(*(backend.predict(q) for q in asked[4:]))
        return answers, backend.stats()

    answers, stats = run(main, Backend(predictor, model_process=True))
    check(answers, asked, reference)
    assert stats["process_losses"] == 1 and stats["process_forks"] == 2
    assert stats["process_batches"] == 2 and stats["batches"] == 3


def test_a_model_process_that_cannot_be_forked_leaves_the_batch_to_the_loop(
    predictor: Predictor, reference: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    asked = queries(6)

    async def main(backend: Backend) -> tuple[list[Prediction], dict[str, float]]:
        answers = await asyncio.gather(*(backend.predict(query) for query in asked))
        return list(answers), backend.stats()

    answers, stats = run(main, Backend(predictor, max_batch=3, model_process=True))
    check(answers, asked, reference)
    assert stats["process_forks"] == 0 and stats["process_batches"] == 0
    assert stats["process_losses"] == stats["batches"] == 2


# --- the model process itself -------------------------------------------------------------------


def test_a_model_process_computes_batches_in_order_in_a_nicer_child(
    predictor: Predictor, reference: Predictor
) -> None:
    asked = queries(10)

    async def main() -> tuple[list[list[Prediction]], int]:
        process = ModelProcess(predictor)
        # Sent before the first is answered: answered in order all the same.
        answers = [
            predictions
            for predictions, _ in await asyncio.gather(
                *(process.run(asked[i : i + 2]) for i in range(0, 10, 2))
            )
        ]
        child = process.pid
        assert child is not None and child != os.getpid() and process.forks == 1
        # Nicer than the server: the event loop goes first when they contend for the cores.
        niceness = os.getpriority(os.PRIO_PROCESS, child) - os.getpriority(os.PRIO_PROCESS, 0)
        assert niceness == min(NICENESS, 19 - os.getpriority(os.PRIO_PROCESS, 0))
        await process.aclose()
        assert gone(child) and process.pid is None
        await process.aclose()  # idempotent
        return list(answers), child

    answers, _ = asyncio.run(main())
    check([answer for pair in answers for answer in pair], asked, reference)


def test_an_error_in_the_model_process_reaches_the_caller_and_the_process_goes_on(
    predictor: Predictor, reference: Predictor
) -> None:
    async def main() -> list[Prediction]:
        process = ModelProcess(predictor)
        with pytest.raises(
            RuntimeError, match=r"ValueError: top_k and phrase_words must be 1 or more: .*top_k=0"
        ):
            await process.run([Query("w2 "), Query("w3 ", top_k=0)])
        answers, _ = await process.run([Query("w4 ")])
        assert process.forks == 1
        await process.aclose()
        return answers

    check(asyncio.run(main()), [Query("w4 ")], reference)


def test_every_batch_owed_by_a_model_process_that_died_fails_and_the_next_run_forks_another(
    predictor: Predictor, reference: Predictor
) -> None:
    async def main() -> list[Prediction]:
        process = ModelProcess(predictor)
        await process.run([Query("w2 ")])
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        owed = await asyncio.gather(
            process.run([Query("w3 ")]), process.run([Query("w4 ")]), return_exceptions=True
        )
        assert all(isinstance(error, ModelProcessGone) for error in owed), owed
        assert gone(first) and process.pid is None
        answers, _ = await process.run([Query("w5 ")])
        assert process.pid not in (first, None) and process.forks == 2
        await process.aclose()
        return answers

    check(asyncio.run(main()), [Query("w5 ")], reference)


def test_a_stuck_model_process_is_killed_and_replaced(
    predictor: Predictor, reference: Predictor
) -> None:
    async def main() -> list[Prediction]:
        process = ModelProcess(predictor, answer_within_s=0.5)
        await process.run([Query("w2 ")])
        stuck = process.pid
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)
        owed = await asyncio.gather(
            process.run([Query("w3 ")]), process.run([Query("w4 ")]), return_exceptions=True
        )
        assert all(isinstance(error, ModelProcessGone) for error in owed), owed
        assert "stuck" in str(owed[0]) and gone(stuck)
        answers, _ = await process.run([Query("w5 ")])
        assert process.forks == 2
        await process.aclose()
        return answers

    check(asyncio.run(main()), [Query("w5 ")], reference)


def test_a_fork_that_fails_is_reported_as_the_process_gone(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)

    async def main() -> None:
        process = ModelProcess(predictor)
        with pytest.raises(ModelProcessGone, match="could not be forked"):
            await process.run([Query("w2 ")])
        assert process.pid is None and process.forks == 0

    asyncio.run(main())


def test_the_model_process_keeps_none_of_the_parents_sockets(predictor: Predictor) -> None:
    # A listening socket the child kept open would go on accepting connections after the
    # server closed it at shutdown.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main() -> None:
        process = ModelProcess(predictor)
        await process.run([Query("w2 ")])
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        await process.aclose()

    asyncio.run(main())


def test_the_model_process_ends_when_its_parent_dies_without_closing_it() -> None:
    script = (
        "import asyncio, os\n"
        "from support.models import random_predictor\n"
        "from app.inference.model_process import ModelProcess\n"
        "from app.inference.predictor import Query\n"
        "async def main() -> None:\n"
        "    process = ModelProcess(random_predictor())\n"
        "    await process.run([Query('w2')])\n"
        "    print(process.pid, flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    child = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)
