"""ASGI middleware in front of every route: API keys (HTTP and websocket) and the per-caller rate limit.

A refused HTTP request gets the service's JSON error (401 with WWW-Authenticate, or 429 with
Retry-After); a refused websocket is closed before it is accepted with code 1008 (policy violation),
which clients see as HTTP 403.
"""

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from spiritserve.errors import OverloadedError, SpiritServeError
from spiritserve.server.admission import ApiKeys, RateLimiter, presented_key

POLICY_VIOLATION = 1008


class AccessMiddleware:
    def __init__(self, app: ASGIApp, api_keys: ApiKeys, rate_limiter: RateLimiter) -> None:
        self.app = app
        self.api_keys = api_keys
        self.rate_limiter = rate_limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.api_keys.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            caller = self.api_keys.check(presented_key(headers, query)) if self.api_keys.enabled else None
            if scope["type"] == "http":
                self.rate_limiter.take(caller or (scope.get("client") or ("unknown",))[0])
        except SpiritServeError as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": str(exc)})
                return
            await _send_error(send, exc)
            return
        await self.app(scope, receive, send)


async def _send_error(send: Send, exc: SpiritServeError) -> None:
    body = json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(exc, OverloadedError):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    if exc.status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
