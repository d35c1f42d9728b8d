"""Admission control and API keys: refuse work early and clearly instead of queueing it without bound.

- In-flight cap: at most `max_in_flight` model requests (REST generation, tokenize, synthesize) at once;
  beyond it, 503 with Retry-After. Each speech stage also refuses work when its queue is full (503).
- Per-key rate: `rate_limit_per_minute` requests per API key (per client address without keys) in any
  minute, counted by the `limits` package; beyond it, 429 with Retry-After.
- API keys: `Authorization: Bearer KEY`, or `?api_key=KEY` where a browser cannot set headers (the
  websocket); compared in constant time; a key file is re-read when it changes. Paths in `public_paths`
  (exact, or a prefix ending in `*`) need no key.
- Draining: once SIGTERM has started a drain, new work is refused with 503.
"""

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from spiritserve.errors import RETRY_AFTER_DRAINING_S, OverloadedError, RateLimitedError, UnauthorizedError

logger = logging.getLogger(__name__)


class ApiKeys:
    """The accepted keys: inline ones, plus a file's (one key per line, blank lines ignored). The file is read
    again whenever it changes (checked at most once a second), so a key is added or revoked by rewriting the
    file (e.g. updating a mounted Secret) without restarting the server; a file that cannot be read keeps the
    keys last read, with a warning."""

    def __init__(self, keys: list[str], public_paths: list[str], file: Path | None = None) -> None:
        self._inline = [key.encode() for key in keys]
        self.public_paths = public_paths
        self._file = file
        self._file_keys: list[bytes] = []
        self._file_version: tuple[int, int] | None = None
        self._checked_at = -math.inf
        if file is not None:
            self._file_keys = self._read(file)
            self._file_version = self._version(file)
            self._checked_at = time.monotonic()

    @staticmethod
    def _read(file: Path) -> list[bytes]:
        return [line.strip().encode() for line in file.read_text().splitlines() if line.strip()]

    @staticmethod
    def _version(file: Path) -> tuple[int, int]:
        stat = file.stat()  # follows the symlinks a Secret volume swaps on update
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked_at < 1:
            return
        self._checked_at = now
        try:
            version = self._version(self._file)
            if version != self._file_version:
                self._file_keys, self._file_version = self._read(self._file), version
                logger.info("API keys reloaded from %s: %d keys", self._file, len(self._file_keys))
        except OSError as exc:
            logger.warning("API key file %s unreadable (%s); keeping the keys last read", self._file, exc)

    @property
    def enabled(self) -> bool:
        return bool(self._inline) or self._file is not None

    def is_public(self, path: str) -> bool:
        return any(
            path.startswith(public[:-1]) if public.endswith("*") else path == public for public in self.public_paths
        )

    def check(self, presented: str | None) -> str:
        """The caller's key if it is one of ours (every key compared, in constant time); else 401."""
        if presented is None:
            raise UnauthorizedError("an API key is required: send 'Authorization: Bearer KEY'")
        self._refresh()
        candidate = presented.encode()
        matched = False
        for key in self._inline + self._file_keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise UnauthorizedError("the API key is not valid")
        return presented


# Browsers cannot set headers on a websocket. Besides ``?api_key=`` (which lands in access logs), a browser can
# offer the key as a subprotocol next to the realtime protocol's name (``realtime_protocol.PROTOCOL``), which
# the server then selects: ``new WebSocket(url, ["spiritserve.realtime.v1", "spiritserve.key." + KEY])``.
KEY_SUBPROTOCOL_PREFIX = "spiritserve.key."


def presented_key(headers: dict[str, str], query: dict[str, str]) -> str | None:
    """The key a caller sent: ``Authorization: Bearer``, a ``spiritserve.key.`` subprotocol, or ``?api_key=``."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    for offered in (protocol.strip() for protocol in headers.get("sec-websocket-protocol", "").split(",")):
        if offered.startswith(KEY_SUBPROTOCOL_PREFIX):
            return offered.removeprefix(KEY_SUBPROTOCOL_PREFIX)
    return query.get("api_key")


class RateLimiter:
    """At most `per_minute` requests per caller in any minute (0: no limit), with the `limits` package's sliding
    window counter in memory: two counters per caller (this minute's and the last one's, weighted by how much of it
    the sliding minute still covers). A counter expires two minutes after it started, so memory holds the callers
    of the last few minutes, never every caller seen (tests/server/test_rate_limiter.py)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.limit = RateLimitItemPerMinute(max(per_minute, 1))
        self.storage = MemoryStorage()  # its timer thread drops expired counters
        self._window = SlidingWindowCounterRateLimiter(self.storage)

    def take(self, caller: str) -> None:
        if self.per_minute <= 0 or self._window.hit(self.limit, caller):
            return
        reset_at = self._window.get_window_stats(self.limit, caller).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimitedError(f"more than {self.per_minute} requests per minute", retry_after_s=retry_after)


class Admission:
    """The in-flight counter, the realtime session and answer counts, and the draining flag shared by every
    route."""

    def __init__(self, max_in_flight: int, max_realtime_sessions: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_realtime_sessions = max_realtime_sessions
        self.in_flight = 0
        self.realtime_sessions = 0  # open websockets (with `in_flight`, the load autoscaling reads)
        self.realtime_responses = 0  # websocket answers being generated (a drain waits for them too)
        self.draining = False
        self.drain_started = asyncio.Event()  # set on the event loop once `draining` is; wakes idle sessions

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.realtime_responses > 0

    def check_open(self) -> None:
        if self.draining:
            raise OverloadedError("the server is shutting down; retry on another replica", RETRY_AFTER_DRAINING_S)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one in-flight slot for the duration of a request (503 when none is free)."""
        self.check_open()
        if self.in_flight >= self.max_in_flight:
            raise OverloadedError(f"{self.max_in_flight} requests are already in flight")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def realtime_session(self) -> Iterator[None]:
        """Count one open websocket session; OverloadedError, before it opens, while draining or when
        `max_realtime_sessions` are open."""
        self.check_open()
        if self.realtime_sessions >= self.max_realtime_sessions:
            raise OverloadedError(f"at most {self.max_realtime_sessions} sessions")
        self.realtime_sessions += 1
        try:
            yield
        finally:
            self.realtime_sessions -= 1

    @contextmanager
    def realtime_response(self) -> Iterator[None]:
        """Count one websocket answer being generated, which a drain waits for like a request in flight."""
        self.realtime_responses += 1
        try:
            yield
        finally:
            self.realtime_responses -= 1
