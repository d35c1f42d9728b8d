"""The per-caller rate limit (`limits`' sliding window counter in memory): refusals carry Retry-After, callers are
counted apart, and a caller's counters are forgotten once its window has passed, so many distinct callers do not
make memory grow without bound."""

import time
from types import SimpleNamespace

import limits.storage.memory
import pytest

from spiritserve.errors import RateLimitedError
from spiritserve.server.admission import RateLimiter


def test_a_caller_beyond_its_rate_is_refused_with_retry_after():
    limiter = RateLimiter(per_minute=3)
    for _ in range(3):
        limiter.take("sk-one")
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("sk-one")
    assert refused.value.status_code == 429 and 1 <= refused.value.retry_after_s <= 60
    limiter.take("sk-two")  # another caller has its own count


def test_zero_is_no_limit():
    limiter = RateLimiter(per_minute=0)
    for _ in range(1000):
        limiter.take("sk-one")


def test_memory_follows_recent_callers_not_every_caller_seen(monkeypatch: pytest.MonkeyPatch):
    now = [1_000_000.0]
    monkeypatch.setattr(limits.storage.memory, "time", SimpleNamespace(time=lambda: now[0]))
    limiter = RateLimiter(per_minute=5)
    counters = limiter.storage.storage

    def forgotten_after_window() -> int:
        now[0] += 180  # past the two windows a counter lives
        deadline = time.monotonic() + 10
        while len(counters) > 1 and time.monotonic() < deadline:
            limiter.take("probe")  # each hit schedules the storage's expiry timer
            time.sleep(0.02)
        return len(counters)

    for wave in range(2):
        for caller in range(2_000):
            limiter.take(f"10.{wave}.{caller // 256}.{caller % 256}")
        assert len(counters) >= 2_000
        assert forgotten_after_window() <= 1  # only the probe's current counter is left
