"""The request body, read whole within a deadline before the app (and InFlightLimit) sees it.

Pure ASGI, like app.api.middleware. BodyLimits, outside, has already refused a body that is
too large or not JSON; this reads what is left.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import _refuse


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request has a body to read (HTTP/1.1: a Content-Length above 0, or a
    Transfer-Encoding); a GET has none, and passes straight through."""
    for name, value in headers:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def json_encoding(body: bytes) -> str:
    """The encoding Python's json would read `body` in: it guesses UTF-16 and UTF-32 from the
    zero bytes of the first characters, where the API accepts UTF-8 only (RFC 8259 8.1)."""
    return json.detect_encoding(body)


class BodyDeadline:
    """Read a request's whole body within `timeout_s`, then hand it to the app in one piece.

    Past the deadline the answer is 408 `request_timeout` and the connection is closed. So a
    client that sends its headers and then its body a byte a second (or never) holds its own
    connection and the little it sent, for `timeout_s` at most, but no slot of InFlightLimit,
    which is inside this one: a request counts as in flight only once its body is complete.

    A body sent to one of `json_paths` in UTF-16 or UTF-32 is refused with 400, as a body that
    is not UTF-8 is (Python's json would otherwise guess the encoding and accept it).
    """

    def __init__(self, app: ASGIApp, timeout_s: float, json_paths: Collection[str] = ()) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.json_paths = frozenset(json_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        deadline = asyncio.timeout(self.timeout_s)
        try:
            async with deadline:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # http.disconnect: the client has gone; nobody to answer
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
            await _refuse(
                scope, receive, send, HTTPStatus.REQUEST_TIMEOUT, "request_timeout",
                f"the body did not arrive within {self.timeout_s:g} s (NEXTWORD_BODY_TIMEOUT_S)",
            )  # fmt: skip
            return
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = json_encoding(body) if body and scope["path"] in self.json_paths else "utf-8"
        if encoding not in ("utf-8", "utf-8-sig"):  # a UTF-8 byte order mark is UTF-8 still
            await _refuse(
                scope, receive, send, HTTPStatus.BAD_REQUEST, "bad_request",
                f"the body must be UTF-8 (it reads as {encoding.upper()})",
                keep_connection=True,  # the body has been read to its end
            )  # fmt: skip
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
