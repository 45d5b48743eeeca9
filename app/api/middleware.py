"""Pure ASGI middleware: no request objects, nothing buffered, so they cost next to nothing."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_json
from app.store import ModelStoreError


class _BodyTooLarge(Exception):
    pass


# A refused body with a declared length up to this is read and thrown away by the server after
# the 413 (uvicorn discards the body of a request it has answered) and the connection is kept.
# Closing instead, with the body still unread in the socket, makes the kernel send a reset that
# can destroy the 413 before the client reads it: the "lingering close" problem servers such as
# nginx and Apache solve the same way. A larger or unknown length still closes the connection.
DRAIN_BYTES = 1 << 20
# Headers a request may have, and their total bytes (names and values). The HTTP layer below
# (uvicorn with httptools) sets no limit of its own; nginx's default is 4 x 8 KiB.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


def is_json(content_type: str) -> bool:
    """application/json, or any application/...+json, parameters (charset) allowed."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class BodyLimits:
    """Answer 431 to more than MAX_HEADERS headers or MAX_HEADER_BYTES of them, 413 to a
    request body over `max_bytes`, and 415 to a POST to one of `json_paths` whose body is not
    declared as JSON (FastAPI alone would only say the body is invalid).

    Both are decided here, before the app runs, in the order a client should fix them. A
    declared Content-Length over the limit is refused at once; a body without one (chunked) is
    counted as it streams in, and refused as soon as it passes the limit, so no more than
    `max_bytes` of it is ever read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, json_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = declared = None
        header_bytes = 0
        headers = scope["headers"]
        for name, value in headers:  # the raw list (names lower-case): no Headers object
            header_bytes += len(name) + len(value)
            if name == b"content-length":
                declared = value
            elif name == b"content-type":
                content_type = value.decode("latin-1")
        if len(headers) > MAX_HEADERS or header_bytes > MAX_HEADER_BYTES:
            await _refuse(
                scope, receive, send, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_header_fields_too_large",
                f"at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them "
                f"(got {len(headers)}, {header_bytes} bytes)",
            )  # fmt: skip
            return
        length = int(declared) if declared is not None and declared.isdigit() else None
        # Whether a refusal can leave the rest of the body to the server to discard (DRAIN_BYTES).
        drainable = length is not None and length <= DRAIN_BYTES
        if (
            scope["method"] == "POST"
            and scope["path"] in self.json_paths
            and not (content_type and is_json(content_type))
        ):
            shown = repr(content_type) if content_type else "none"
            await _refuse(
                scope, receive, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                f"send the body as JSON with Content-Type: application/json (got {shown})",
                keep_connection=drainable,
            )  # fmt: skip
            return
        if declared is not None:
            if length is None:
                await _refuse(
                    scope, receive, send, HTTPStatus.BAD_REQUEST, "bad_request",
                    "the Content-Length header is not a number",
                )  # fmt: skip
                return
            if length > self.max_bytes:
                await self._too_large(scope, receive, send, keep_connection=drainable)
                return
            # The server frames the body by its Content-Length: it cannot be any longer, so
            # there is nothing to count (the common case, and the fast one).
            await self.app(scope, receive, send)
            return

        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # whatever the app answers to the failed read, the client gets the 413
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        # Raised by our receive and passed up unhandled (FastAPI turns it into a 400 that
        # guarded_send drops): answered below.
        with suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if too_large and not response_started:
            await self._too_large(scope, receive, send, keep_connection=False)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, keep_connection: bool
    ) -> None:
        message = f"the body is over {self.max_bytes} bytes"
        await _refuse(
            scope, receive, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
            message, keep_connection=keep_connection,
        )  # fmt: skip


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: HTTPStatus, code: str, message: str,
    keep_connection: bool = False,
) -> None:  # fmt: skip
    """Answer with the error body, before the app has read the request's body. Unless
    `keep_connection`, the server is told to close the connection: the rest of the body is not
    going to be read (see DRAIN_BYTES)."""
    response = error_json(status, code, message)
    if not keep_connection:
        response.headers["connection"] = "close"
    await response(scope, receive, send)


@dataclass
class Load:
    """Requests being answered now, probes not counted; counted by InFlightLimit and shown by
    /health (one event loop updates it, so it needs no lock)."""

    in_flight: int = 0


class InFlightLimit:
    """Answer 503 with Retry-After at once when `limit` requests are already being answered.

    It sits inside BodyDeadline (app.api.deadlines): a request is counted once its body has
    arrived, so clients slow to send one cannot fill the slots.

    Queueing without a bound only moves the wait into memory and past the clients' own
    time-outs; a quick 503 lets a client or load balancer retry later or elsewhere. The probes
    (`exempt`, e.g. /health) always pass: they must keep saying whether the process is alive.
    """

    def __init__(self, app: ASGIApp, limit: int, load: Load, exempt: Collection[str] = ()) -> None:
        self.app = app
        self.limit = limit
        self.load = load
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        load = self.load
        if load.in_flight >= self.limit:
            response = error_json(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "overloaded",
                f"the server is answering {self.limit} requests already; retry after 1 s",
            )
            response.headers["retry-after"] = "1"
            await response(scope, receive, send)
            return
        load.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            load.in_flight -= 1


class OneLineStartupError:
    """Report a model that cannot be loaded as one line, not a traceback.

    Starlette answers a failed lifespan start-up with the whole traceback as the message, which
    the server prints. For a ModelStoreError the message alone says what is wrong and how to fix
    it, so this replaces the traceback with it; any other error keeps its traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            # Starlette sends "startup.failed" first and raises after: hold it until we know why.
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except ModelStoreError as error:
            if held:
                held[:] = [{"type": "lifespan.startup.failed", "message": f"cannot serve: {error}"}]
            raise
        finally:
            for message in held:
                await send(message)
