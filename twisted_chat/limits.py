"""Abuse limits: a token bucket per user for sends, and open-connection counts.

Both live on the reactor thread and are bounded: idle buckets are dropped as they refill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class SendRateLimiter:
    """``rate`` sends per second per key, in bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def retry_after(self, key: Hashable) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 10_000:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [k for k, (t, s) in self._buckets.items() if t + (now - s) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]


class ConnectionLimiter:
    """Counts open connections per key and refuses one over ``limit``."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: dict[Hashable, int] = {}

    def acquire(self, key: Hashable) -> bool:
        count = self._open.get(key, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def release(self, key: Hashable) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
