"""ASGI middleware in front of every route: browser origins (websocket), API keys (HTTP and websocket) and the
per-caller rate limit.

A refused HTTP request gets the service's JSON error (401 with WWW-Authenticate, or 429 with
Retry-After); a refused websocket is closed before it is accepted with code 1008 (policy violation),
which clients see as HTTP 403. A websocket opened by a page from an origin the server does not allow
(cross-site websocket hijacking: any page can open a socket to this server from a visitor's browser) gets
HTTP 403 with the JSON error, before its key is even looked at.
"""

from urllib.parse import parse_qsl, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from spiritserve.errors import ForbiddenOriginError, SpiritServeError
from spiritserve.server.admission import ApiKeys, RateLimiter, presented_key
from spiritserve.server.error_messages import error_messages, websocket_denial_messages

POLICY_VIOLATION = 1008
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class OriginPolicy:
    """Which browser pages may open a websocket here, from the handshake's ``Origin`` (only browsers send one;
    other clients are not refused for lacking it).

    Always allowed: the server's own pages (the Origin's host and port equal the request's ``Host``). With
    ``allowed`` unset also pages served from localhost, 127.0.0.1 or [::1] on any port (local development);
    otherwise the listed origins (``scheme://host[:port]``), or any origin for ``*``. An empty string allows
    the server's own origin only.
    """

    def __init__(self, allowed: list[str] | None) -> None:
        entries = {entry.strip().rstrip("/").lower() for entry in allowed or () if entry.strip()}
        self.any_origin = "*" in entries
        self.origins = entries - {"*"}
        self.loopback = allowed is None

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any_origin:
            return True
        origin = origin.strip().rstrip("/").lower()
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:  # e.g. an unbalanced "[" in the host
            return False
        if parts.netloc and host is not None and parts.netloc == host.strip().lower():
            return True
        if origin in self.origins:
            return True
        return self.loopback and parts.scheme in ("http", "https") and hostname in LOOPBACK_HOSTS


class AccessMiddleware:
    def __init__(
        self, app: ASGIApp, api_keys: ApiKeys, rate_limiter: RateLimiter, origins: OriginPolicy | None = None
    ) -> None:
        self.app = app
        self.api_keys = api_keys
        self.rate_limiter = rate_limiter
        self.origins = origins or OriginPolicy(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not await self._origin_allowed(scope, send):
            return
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

    async def _origin_allowed(self, scope: Scope, send: Send) -> bool:
        """Refuse a websocket handshake from a page of a foreign origin with 403 (JSON body where the server can)."""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get("origin")
        if self.origins.allows(origin, headers.get("host")):
            return True
        refusal = ForbiddenOriginError(
            f"websocket connections from origin {origin!r} are not allowed; the operator can allow it with "
            "SPIRITSERVE_ALLOWED_ORIGINS"
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            for message in websocket_denial_messages(refusal):
                await send(message)
        else:
            await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": str(refusal)})
        return False
