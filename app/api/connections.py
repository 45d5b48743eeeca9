"""uvicorn's HTTP connection (httptools), with the bounds it lacks: how long and how large a
request's headers may be, how long a connection may wait before its first request, how many
connections are open.

uvicorn has no setting for any of these: measured before this class, a connection that sent
nothing, or its headers a byte at a time, was held for as long as the client liked (uvicorn's
keep-alive timer only starts after a first response, and each byte received stops it), and
100 MB of one unfinished header took 200 MB of the server's memory. The app's own limits
(app.api.middleware, app.api.deadlines) only start once the headers are complete.

A connection, with this class:

    opened              its first request's head must be complete within `header_timeout_s`
    between requests    idle for uvicorn's keep-alive time at most; once a request's first
                        byte arrives, its head must be complete within `header_timeout_s`
    reading a head      more than HEAD_BYTES of request line and headers: 431, closed
    the app runs        the app's deadlines (body, prediction) apply, not these
    after a refusal     the rest of a refused body (uvicorn reads and drops it: DRAIN_BYTES in
                        app.api.middleware) must arrive within `body_timeout_s`; then idle

Past a deadline the answer is 408 with the JSON error body, and the connection is closed; so
is a request httptools cannot parse (400, where uvicorn answers in plain text).
Past `max_connections` open, a new connection closes the one idle the longest (as nginx reuses
idle keep-alive connections when it runs short); when none is idle, it has OVERLOADED_HEAD_S to
send a request, answered 503 `overloaded`: slow clients cannot make the server run out of file
descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from http import HTTPStatus
from typing import Any, ClassVar

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.errors import error_json
from app.api.middleware import MAX_HEADER_BYTES
from app.settings import Settings

logger = logging.getLogger("nextword")

# Request line and headers as they arrive, framing included: room for the app's own limit
# (MAX_HEADER_BYTES of names and values, 431 once they are complete) and a long URL; past it the
# head is refused while it is still arriving, before it costs more memory.
HEAD_BYTES = 4 * MAX_HEADER_BYTES
# Answered even past `max_connections`, as they pass InFlightLimit (app.api.app): the probes,
# and the view of an overload.
EXEMPT = frozenset({"/health", "/ready", "/metrics"})
# How long a connection past `max_connections`, none idle, has to send its request's head.
OVERLOADED_HEAD_S = 1.0
# File descriptors the server needs besides its client connections (model files, the model
# process's pipes, the listening socket, logs).
SPARE_FILES = 64


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection (see the module's docstring). Made by `bounded_protocol`."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    # The server's idle connections, the one idle the longest first (a dict keeps the order in
    # which keys were added): the one to close is found at once, however many are open.
    idle: ClassVar[dict[BoundedHttpToolsProtocol, None]]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes: int | None = None  # of the request whose head is arriving
        self._arm(self.header_timeout_s, self._late_head)  # the first request's head
        if len(self.connections) > self.max_connections and not self._close_longest_idle():
            # Only to be told 503: its head has a second, so that connections past the limit
            # cannot pile up until the server runs out of file descriptors.
            self.app = self._overloaded
            self._arm(min(OVERLOADED_HEAD_S, self.header_timeout_s), self._late_head)
        self.idle[self] = None  # last: not the one closed to make room

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.idle.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        # A chunk that began a request counts whole: for a pipelined request that is more than
        # its own bytes, never less.
        self._head_bytes += len(data)
        if self._head_bytes > HEAD_BYTES:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request_header_fields_too_large",
                f"the request line and headers are over {HEAD_BYTES} bytes",
            )  # fmt: skip

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()  # a request is arriving: no longer idle
        self.idle.pop(self, None)
        self._head_bytes = 0
        if self._deadline is None:  # a later request (the first one's runs from connect)
            self._arm(self.header_timeout_s, self._late_head)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.cycle.response_complete and not self.transport.is_closing():
            # The rest of a refused body, read and dropped: idle again, for keep-alive time.
            self._disarm()
            self._idle()

    def on_response_complete(self) -> None:
        discarding = self.cycle.response_complete and self.cycle.more_body
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if discarding:  # each byte of it would stop uvicorn's keep-alive timer
            self._arm(self.body_timeout_s, self._late_rest_of_body)
        elif not self.pipeline:
            self._mark_idle()  # uvicorn's keep-alive timer runs

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to bytes httptools cannot parse (a malformed request line or header,
        # Content-Length and Transfer-Encoding together, two lengths: what request smuggling
        # uses) is plain text; this one is the app's error body. Closed after, as uvicorn does.
        self._refuse(
            HTTPStatus.BAD_REQUEST, "bad_request",
            "the request is not valid HTTP (its request line, a header, or how its body "
            "is framed: Content-Length, Transfer-Encoding)",
        )  # fmt: skip

    def _mark_idle(self) -> None:
        self.idle.pop(self, None)
        self.idle[self] = None  # at the end: idle the shortest

    def _idle(self) -> None:
        self._mark_idle()
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late_head(self) -> None:
        if self._head_bytes is None:  # not a byte of a request yet: nothing to answer
            logger.debug("closed a connection: no request within its header time-out")
            self.transport.close()
            return
        self._refuse(
            HTTPStatus.REQUEST_TIMEOUT, "request_timeout",
            f"the request's headers did not arrive within {self.header_timeout_s:g} s "
            "(NEXTWORD_HEADER_TIMEOUT_S)",
        )  # fmt: skip

    def _late_rest_of_body(self) -> None:
        logger.debug("closed a connection: the rest of a refused body came too slowly")
        self.transport.close()

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        """Answer with the JSON error body, below the app, and close the connection."""
        self._disarm()
        if self.transport.is_closing():
            return
        logger.debug("closed a connection: %s", message)
        body = error_json(status, code, message).body
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + bytes(body))
        self.transport.close()

    def _close_longest_idle(self) -> bool:
        """Close the connection idle the longest (not this one) to make room; False if none is
        idle. A client whose idle connection is closed opens a new one, as after keep-alive."""
        if not self.idle:
            return False
        oldest = next(iter(self.idle))
        del self.idle[oldest]  # closing: not to be chosen twice
        oldest._disarm()
        oldest.transport.close()
        return True

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send) -> None:
        # This connection's request, answered in place of the app's: every other connection is
        # busy. Closed after, so that it does not count against the limit any longer. EXEMPT
        # paths pass: the probes must keep saying the process is alive.
        if scope["type"] == "http" and scope["path"] in EXEMPT:
            await self.config.loaded_app(scope, receive, send)
            return
        response = error_json(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "overloaded",
            f"the server has {self.max_connections} connections open and busy already; "
            "retry after 1 s",
        )
        response.headers["retry-after"] = "1"
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The connection class for uvicorn's `http` option, with these settings' bounds."""
    allow_open_files(settings.max_connections + SPARE_FILES)

    class Bounded(BoundedHttpToolsProtocol):
        idle: ClassVar[dict[BoundedHttpToolsProtocol, None]] = {}  # this server's
        header_timeout_s = settings.header_timeout_s
        body_timeout_s = settings.body_timeout_s
        max_connections = settings.max_connections

    return Bounded


def allow_open_files(needed: int) -> None:
    """Raise the soft limit on open files to `needed` if it is lower and the hard limit allows
    (many systems start at 1,024): past the limit, new connections fail before any of the bounds
    above can act. Says so in the log when it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < needed:
        logger.warning(
            "open files are limited to %d (ulimit -n): set NEXTWORD_MAX_CONNECTIONS to %d or "
            "less, or raise the limit",
            wanted,
            max(1, wanted - SPARE_FILES),
        )
