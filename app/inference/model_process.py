"""A forked helper process that computes batches beside the event loop: the model's own core.

Python runs one thread at a time (the GIL). A batch computed on a worker thread leaves the GIL
only inside NumPy; every time the thread comes back for the next step of Python it waits for
the event loop to let go, up to the interpreter's switch interval (5 ms), and the loop, parsing
HTTP under load, rarely lets go sooner. Measured in process, 32 concurrent requests on a worker
thread: batches of 28 took ~6 ms for ~4 ms of arithmetic, and batches of 4 took ~3 ms for
~0.6 ms. A process has its own interpreter: it reads, steps and scores a batch while the event
loop goes on with HTTP, on the other core, and nothing waits for a lock.

Forked, not spawned: the child starts in milliseconds with the parent's model already in
memory, shared copy-on-write. The weights are only ever read, so their pages stay shared (the
child's resident memory counts them again; its proportional share, PSS, does not).

The parent and the child speak over a socket pair: the parent writes a frame (an 8-byte
length, then a pickle) holding a batch of jobs; the child answers each batch, in order, with one
frame, `("ok", answer)` or `("error", message)`. The child ends when the parent closes its end (or
dies: the kernel closes it then), so it never outlives the server.
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
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Generic, TypeVar

from app.inference.batcher import WorkerGone

J = TypeVar("J")
A = TypeVar("A")

_LENGTH = struct.Struct("!Q")
# How long `aclose` lets a child finish its batch and exit before it is killed.
EXIT_WAIT_S = 2.0
# A batch not answered within this is taken as a stuck child, which is killed.
ANSWER_WITHIN_S = 10.0
# How much nicer than the server the child is. When the two (and the load) contend for the
# cores, the event loop, which every request waits on, goes first and the child takes what is
# left. At c=32, three runs each: 1,370-1,580 req/s at 0, 1,480-1,660 at 5, 1,590-1,730 at 10
# (an earlier engine); 2,510-2,760 at 5, 2,640-3,090 at 15, 2,770-3,010 at 19 (this one), the
# event loop preempted 0.4-0.8 times a request at 15 against 0.6-1.3 at 5.
NICENESS = 15


class ModelProcessGone(WorkerGone):
    """The batch was not computed there: the child ended, was stuck, could not be forked, or
    its answer did not arrive whole."""


class ModelProcessError(RuntimeError):
    """The child's computation raised; the message is the child's error."""


class ModelProcess(Generic[J, A]):
    """Runs `compute(jobs)` in a forked child, for one event loop.

    Batches are answered in the order they were sent, and more than one may be sent before the
    first is answered: the child then starts the next as soon as it has answered one, without
    waiting for the event loop to read that answer.

    The child is forked on the first `run` (and again after it is gone), so a process that
    never has concurrent requests never forks. There it calls `make_compute()` once, to build
    `compute` from the objects it inherited; neither may rely on the parent's threads, locks
    held at the fork, or open files.
    """

    def __init__(
        self,
        make_compute: Callable[[], Callable[[Sequence[J]], A]],
        answer_within_s: float = ANSWER_WITHIN_S,
    ) -> None:
        self._make_compute = make_compute
        self.answer_within_s = answer_within_s
        self._pid: int | None = None
        self._socket: socket.socket | None = None
        self._reader: asyncio.Task[None] | None = None  # reads the answers as they come
        self._due: deque[asyncio.Future[tuple[str, Any]]] = deque()  # answers owed, in order
        self._sending = asyncio.Lock()  # one frame at a time on the socket
        self.forks = 0

    @property
    def pid(self) -> int | None:
        return self._pid

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
                _serve(theirs, self._make_compute())
                code = 0
            finally:
                os._exit(code)  # no parent's atexit handlers, buffers or finalisers
        theirs.close()
        ours.setblocking(False)
        self._pid, self._socket = pid, ours
        self._reader = asyncio.get_running_loop().create_task(self._read_answers(ours))
        self.forks += 1
        return ours

    async def run(self, jobs: Sequence[J]) -> A:
        """`compute(jobs)` as computed by the child. Raises ModelProcessGone when the child
        ended or broke off (it is reaped; the next `run` forks another), ModelProcessError when
        `compute` raised there."""
        connection = self._socket or self._start()
        due: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._due.append(due)
        frame = _frame(jobs)
        async with self._sending:
            try:
                await asyncio.get_running_loop().sock_sendall(connection, frame)
            except OSError as error:
                self._broken(connection, error)
            except BaseException:  # cancelled mid-frame: the stream is out of step
                self._broken(connection, RuntimeError("a batch was cancelled while sent"))
                raise
        try:
            async with asyncio.timeout(self.answer_within_s):
                status, answer = await due
        except TimeoutError:
            # Stuck (a batch takes milliseconds): end it, so that this batch and those queued
            # behind it are computed on the loop, and the next batch forks a fresh process.
            stuck = TimeoutError(f"no answer within {self.answer_within_s:g} s")
            self._broken(connection, stuck)
            raise ModelProcessGone(f"the model process was stuck ({stuck})") from None
        if status != "ok":
            raise ModelProcessError(f"the model process failed: {answer}")
        return answer

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
        """Let the child finish and exit (it reads the end of the stream), killed after
        EXIT_WAIT_S. The caller has had every answer it waits for. Idempotent."""
        connection, pid = self._socket, self._pid
        if connection is None or pid is None:
            return
        reader = self._stop_reading()
        if reader is not None:
            # Ended, not just told to end: a pending reader holds this object (and through it
            # the model) past its owner's last collection of the garbage.
            await asyncio.wait([reader])
        self._socket = self._pid = None
        connection.close()
        for _ in range(int(EXIT_WAIT_S / 0.005)):
            if _reaped(pid):
                return
            await asyncio.sleep(0.005)
        _kill(pid)

    def kill(self) -> None:
        """End the child now (a broken stream, or the process shutting down)."""
        connection, pid = self._socket, self._pid
        self._socket = self._pid = None
        self._stop_reading()
        if connection is not None:
            connection.close()
        if pid is not None:
            _kill(pid)

    def _stop_reading(self) -> asyncio.Task[None] | None:
        """Cancel the reader (unless it is the caller); return it, to be awaited."""
        reader, self._reader = self._reader, None
        if reader is None or reader is asyncio.current_task():
            return None
        reader.cancel()
        return reader


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
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


# --- in the child ---------------------------------------------------------------------------


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


def _serve(connection: socket.socket, compute: Callable[[Any], Any]) -> None:
    connection.setblocking(True)
    while True:
        header = _receive(connection, _LENGTH.size)
        if header is None:
            return  # the parent closed its end
        (length,) = _LENGTH.unpack(header)
        body = _receive(connection, length)
        if body is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", compute(pickle.loads(body)))
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
