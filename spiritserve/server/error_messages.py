"""The service's one error shape, `{"error": {"type", "message"}}`, with the headers its status implies.

Used by the exception handlers and by middleware that must answer before routing (auth, body limits).
"""

import json

from starlette.types import Message

from spiritserve.errors import SpiritServeError, UnauthorizedError


def error_body(exc: SpiritServeError) -> dict[str, dict[str, str]]:
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def error_headers(exc: SpiritServeError) -> dict[str, str]:
    """Retry-After on 429/503 (when to come back), WWW-Authenticate on 401 (how to authenticate)."""
    if exc.retry_after_s is not None:
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, UnauthorizedError):
        return {"WWW-Authenticate": "Bearer"}
    return {}


def error_messages(exc: SpiritServeError) -> tuple[Message, Message]:
    """The error as the two raw ASGI messages of an HTTP response."""
    body = json.dumps(error_body(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error_headers(exc).items()]
    return {"type": "http.response.start", "status": exc.status_code, "headers": headers}, {
        "type": "http.response.body",
        "body": body,
    }


def websocket_denial_messages(exc: SpiritServeError) -> tuple[Message, Message]:
    """The error as the HTTP answer to a refused websocket handshake (the ASGI websocket.http.response extension)."""
    start, body = error_messages(exc)
    return {**start, "type": "websocket.http.response.start"}, {**body, "type": "websocket.http.response.body"}
