"""The model process: a forked child that computes batches for the backend, on another core.

Forked, not spawned: the child starts in milliseconds with the parent's Predictor already in
memory, shared copy-on-write (the weights are only read, so their pages stay shared). The two
speak over a socket pair: the parent writes a frame (an 8-byte length, then a pickle) holding a
batch of queries; the child answers each, in order, with one frame, `("ok", (predictions,
readings kept, reading cache hits and misses))` or `("error", message)`. The child ends when
the parent closes its end (or dies: the kernel closes it then), so it never outlives the server.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import socket
import struct
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from app.inference.counts import ModelCounts
from app.inference.predictor import Prediction, Predictor, Query, Reading

_LENGTH = struct.Struct("!Q")
# A batch takes milliseconds: one not answered within this is taken as a stuck child.
ANSWER_WITHIN_S = 10.0
# How long `aclose` lets the child finish and exit before it is killed.
EXIT_WAIT_S = 2.0
# How much nicer than the server the child is: the event loop goes first.
NICENESS = 15


class ModelProcessGone(Exception):
    """The batch was not computed there: the child ended, was stuck or could not be forked."""


class ModelProcess:
    """Runs `predictor.predict_batch` in a forked child, for one event loop. The child is
    forked on the first `run` (and again after one is gone)."""

    def __init__(
        self,
        predictor: Predictor,
        answer_within_s: float = ANSWER_WITHIN_S,
        counts: ModelCounts | None = None,
    ) -> None:
        self._predictor = predictor
        self.answer_within_s = answer_within_s
        self.counts = counts or ModelCounts()  # the child's reading cache use is added here
        self.pid: int | None = None
        self.forks = 0
        self._socket: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None  # reads the answers as they come
        self._due: deque[asyncio.Future[tuple[str, Any]]] = deque()  # answers owed, in order
        self._sending = asyncio.Lock()  # one frame at a time on the socket

    async def run(
        self, queries: Sequence[Query], share: bool = False
    ) -> tuple[list[Prediction], list[Reading | None]]:
        """The child's predictions, and with `share` the readings (with their states) it kept
        for the queries' texts. Raises ModelProcessGone when the child ended or broke off (it
        is reaped; the next `run` forks another); RuntimeError when its computation raised."""
        loop = asyncio.get_running_loop()
        connection = self._socket or self._start()
        due: asyncio.Future[tuple[str, Any]] = loop.create_future()
        self._due.append(due)
        async with self._sending:
            try:
                await loop.sock_sendall(connection, _frame((list(queries), share)))
            except OSError as error:
                self._broken(connection, error)
            except BaseException:  # cancelled mid-frame: the stream is out of step
                self._broken(connection, RuntimeError("a batch was cancelled while sent"))
                raise
        try:
            async with asyncio.timeout(self.answer_within_s):
                status, answer = await due
        except TimeoutError:
            self._broken(connection, TimeoutError(f"no answer within {self.answer_within_s} s"))
            raise ModelProcessGone("the model process was stuck") from None
        if status != "ok":
            raise RuntimeError(f"the model process failed: {answer}")
        predictions, kept, (hits, misses) = answer
        self.counts.cache_used("model_process", hits, misses)
        return predictions, kept

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        try:
            pid = os.fork()
        except OSError as error:  # out of processes or memory: this batch goes to the loop
            ours.close()
            theirs.close()
            raise ModelProcessGone(f"the model process could not be forked ({error})") from None
        if pid == 0:  # the child: never returns
            code = 1
            try:
                ours.close()
                _become_child(keep=theirs.fileno())
                _serve(theirs, self._predictor)
                code = 0
            finally:
                os._exit(code)  # no parent's atexit handlers, buffers or finalisers
        theirs.close()
        ours.setblocking(False)
        self.pid, self._socket = pid, ours
        self._reader = asyncio.get_running_loop().create_task(self._read_answers(ours))
        self.forks += 1
        return ours

    async def _read_answers(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                (length,) = _LENGTH.unpack(await _read_exactly(loop, connection, _LENGTH.size))
                answer = pickle.loads(await _read_exactly(loop, connection, length))
                due = self._due.popleft()
                if not due.done():  # (its caller may have given up waiting)
                    due.set_result(answer)
        except (OSError, EOFError, pickle.UnpicklingError, IndexError) as error:
            self._broken(connection, error)

    def _broken(self, connection: socket.socket, error: BaseException) -> None:
        """The child ended or the stream broke: every batch owed fails, the child is reaped."""
        if connection is not self._socket:
            return  # a child already replaced: what is owed now is the new one's
        self.kill()
        gone = ModelProcessGone(f"the model process ended ({error!r})")
        while self._due:
            due = self._due.popleft()
            if not due.done():
                due.set_exception(gone)

    async def aclose(self) -> None:
        """Let the child finish and exit (it reads the end of the stream); killed after
        EXIT_WAIT_S. The caller has had every answer it waits for. Idempotent."""
        connection, pid = self._socket, self._pid_and_forget()
        if connection is None or pid is None:
            return
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            # Ended, not just told to end: a pending reader holds this object (and through it
            # the model) past its owner's last collection of the garbage.
            reader.cancel()
            await asyncio.wait([reader])
        connection.close()
        for _ in range(int(EXIT_WAIT_S / 0.005)):
            if _reaped(pid):
                return
            await asyncio.sleep(0.005)
        _kill(pid)

    def kill(self) -> None:
        """End the child now (a broken stream)."""
        connection, pid = self._socket, self._pid_and_forget()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        if connection is not None:
            connection.close()
        if pid is not None:
            _kill(pid)

    def _pid_and_forget(self) -> int | None:
        pid, self.pid, self._socket = self.pid, None, None
        return pid


def _frame(value: object) -> bytes:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def _read_exactly(
    loop: asyncio.AbstractEventLoop, connection: socket.socket, n: int
) -> bytes:
    buffer = bytearray(n)
    view, done = memoryview(buffer), 0
    while done < n:
        got = await loop.sock_recv_into(connection, view[done:])
        if not got:
            raise EOFError("the model process closed the connection")
        done += got
    return bytes(buffer)


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # already reaped
        return True
    return done == pid


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# --- in the child ------------------------------------------------------------------------------


def _become_child(keep: int) -> None:
    # Ctrl+C reaches the whole process group; the parent decides when the child stops (by
    # closing the socket), after answering the requests it has.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)  # the parent's event loop's, about to be closed here
    os.nice(NICENESS)
    # Every descriptor of the parent but ours and stdio: a listening socket kept open here
    # would keep accepting connections after the server has closed it.
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        if fd > 2 and fd != keep:
            with suppress(OSError):  # the directory's own descriptor, closed already
                os.close(fd)
    # The parent's objects are never collected here: the collector would otherwise write to
    # every page it visits, copying the parent's memory page by page.
    gc.freeze()


def _serve(connection: socket.socket, predictor: Predictor) -> None:
    connection.setblocking(True)
    while True:
        header = _receive(connection, _LENGTH.size)
        body = _receive(connection, _LENGTH.unpack(header)[0]) if header else None
        if body is None:
            return  # the parent closed its end
        try:
            queries, share = pickle.loads(body)
            hits, misses = predictor.cache.hits, predictor.cache.misses
            predictions = predictor.predict_batch(queries)
            kept = [predictor.kept(query.text) if share else None for query in queries]
            # Counted here, reported to the server with the answer (GET /metrics shows them).
            used = (predictor.cache.hits - hits, predictor.cache.misses - misses)
            reply: tuple[str, Any] = ("ok", (predictions, kept, used))
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}")
        connection.sendall(_frame(reply))


def _receive(connection: socket.socket, n: int) -> bytes | None:
    buffer = bytearray(n)
    view, done = memoryview(buffer), 0
    while done < n:
        got = connection.recv_into(view[done:])
        if not got:
            return None
        done += got
    return bytes(buffer)
