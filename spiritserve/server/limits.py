"""Refuse oversized request bodies before they are parsed.

FastAPI parses a multipart body (spooling files to disk) before any route code runs, so a size check in
the route would come after a huge upload was already stored. This ASGI middleware answers 413 from the
Content-Length header, and stops reading a body without one once it passes the limit.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spiritserve.errors import AudioTooLongError
from spiritserve.server.error_messages import error_messages


class BodyTooLarge(Exception):
    pass


def _too_large_response(limit: int) -> tuple[Message, Message]:
    return error_messages(AudioTooLongError(f"the request body exceeds the limit of {limit} bytes"))


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
        replaced = False  # once the body overflows, whatever the app answers is replaced by our 413

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge()
            return message

        async def replacing_send(message: Message) -> None:
            nonlocal replaced
            if received <= self.max_body_bytes:
                await send(message)
            elif not replaced:
                replaced = True
                for own_message in _too_large_response(self.max_body_bytes):
                    await send(own_message)

        try:
            await self.app(scope, counting_receive, replacing_send)
        except BodyTooLarge:
            await replacing_send({"type": "http.response.start"})
