"""Refuse oversized and stalled request bodies before they are parsed.

FastAPI parses a multipart body (spooling files to disk) before any route code runs, so a size check in
the route would come after a huge upload was already stored. This ASGI middleware answers 413 from the
Content-Length header, and stops reading a body without one once it passes the limit.

The server has no read timeout of its own: a client that sends its headers and then trickles or stalls the
body would hold a connection (and a parser) forever. The whole body must arrive within `body_read_timeout_s`
of the request's start, else 408 (and the connection is closed). Reads after the body (the routes' wait
for a disconnect while they generate) have no deadline.
"""

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spiritserve.errors import AudioTooLongError, RequestTimeoutError
from spiritserve.server.error_messages import error_messages


class BodyTooLarge(Exception):
    pass


class BodyReadTimeout(Exception):
    pass


def _too_large_response(limit: int) -> tuple[Message, Message]:
    return error_messages(AudioTooLongError(f"the request body exceeds the limit of {limit} bytes"))


def _timeout_response(timeout_s: float) -> tuple[Message, Message]:
    start, body = error_messages(RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s"))
    # The rest of the body may still be on its way: close the connection rather than read on.
    return {**start, "headers": [*start["headers"], (b"connection", b"close")]}, body


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_read_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_read_timeout_s = body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            for message in _too_large_response(self.max_body_bytes):
                await send(message)
            return
        received = 0
        body_complete, timed_out = False, False
        deadline = asyncio.get_running_loop().time() + self.body_read_timeout_s
        replaced = False  # once the body overflows or times out, whatever the app answers is replaced by ours

        async def counting_receive() -> Message:
            nonlocal received, body_complete, timed_out
            if body_complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                raise BodyReadTimeout() from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if received <= self.max_body_bytes and not timed_out:
                await send(message)
            elif not replaced:
                replaced = True
                if timed_out:
                    refusal = _timeout_response(self.body_read_timeout_s)
                else:
                    refusal = _too_large_response(self.max_body_bytes)
                for own_message in refusal:
                    await send(own_message)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except (BodyTooLarge, BodyReadTimeout):
            await replacing_send({"type": "http.response.start"})
