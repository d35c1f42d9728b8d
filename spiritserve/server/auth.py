"""ASGI middleware in front of every route: API keys (HTTP and websocket) and the per-caller rate limit.

A refused HTTP request gets the service's JSON error (401 with WWW-Authenticate, or 429 with
Retry-After); a refused websocket is closed before it is accepted with code 1008 (policy violation),
which clients see as HTTP 403.
"""

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from spiritserve.errors import SpiritServeError
from spiritserve.server.admission import ApiKeys, RateLimiter, presented_key
from spiritserve.server.error_messages import error_messages

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
            for message in error_messages(exc):
                await send(message)
            return
        await self.app(scope, receive, send)
