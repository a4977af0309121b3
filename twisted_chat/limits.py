"""Abuse limits: a token bucket per user for sends, and open connections per user and address.

Both live on the reactor thread and are bounded: idle buckets are dropped as they refill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from .errors import ProtocolError


class SendRateLimiter:
    """``rate`` sends per second per key, in bursts of up to ``burst``.

    A refused key stays refused until the wait it was told is over, and that wait is at
    least one token's time: a client that honours it gets through on its next try, and one
    that retries sooner (or sends the next message meanwhile) is refused again, so a
    person's messages cannot overtake one another.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        # key: (tokens, when they were counted, refused until)
        self._buckets: dict[Hashable, tuple[float, float, float]] = {}

    def retry_after(self, key: Hashable) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until a send may pass."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, stamp, refused_until = self._buckets.get(key, (float(self.burst), now, 0.0))
        if now < refused_until:
            return refused_until - now
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now, 0.0)
            if len(self._buckets) > 10_000:
                self._forget_full(now)
            return 0.0
        wait = max((1 - tokens) / self.rate, 1 / self.rate)
        self._buckets[key] = (tokens, now, now + wait)
        return wait

    def _forget_full(self, now: float) -> None:
        full = [
            key
            for key, (tokens, stamp, until) in self._buckets.items()
            if until <= now and tokens + (now - stamp) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]


class _Counter:
    def __init__(self, limit: int):
        self.limit = limit
        self.open: dict[Hashable, int] = {}

    def full(self, key: Hashable) -> bool:
        return self.limit > 0 and self.open.get(key, 0) >= self.limit

    def add(self, key: Hashable, step: int) -> None:
        count = self.open.get(key, 0) + step
        if count > 0:
            self.open[key] = count
        else:
            self.open.pop(key, None)


class ConnectionLimits:
    """Open connections per user and per address, over every transport (0: no limit)."""

    def __init__(self, per_user: int, per_address: int):
        self._users = _Counter(per_user)
        self._addresses = _Counter(per_address)

    def admit(self, address: str, user_id: int | None) -> Lease:
        """Take a slot, or raise ProtocolError ``too_many_connections``."""
        if self._addresses.full(address):
            raise _too_many("address")
        if user_id is not None and self._users.full(user_id):
            raise _too_many("user")
        self._addresses.add(address, 1)
        if user_id is not None:
            self._users.add(user_id, 1)
        return Lease(self, address, user_id)

    def _release(self, address: str, user_id: int | None) -> None:
        self._addresses.add(address, -1)
        if user_id is not None:
            self._users.add(user_id, -1)


class Lease:
    """One connection's slot; ``release`` gives it back, once however often it is called."""

    __slots__ = ("_address", "_limits", "_user_id")

    def __init__(self, limits: ConnectionLimits, address: str, user_id: int | None):
        self._limits: ConnectionLimits | None = limits
        self._address = address
        self._user_id = user_id

    def release(self) -> None:
        if self._limits is not None:
            self._limits._release(self._address, self._user_id)
            self._limits = None


def _too_many(what: str) -> ProtocolError:
    return ProtocolError(
        "too_many_connections", f"too many open connections for this {what}", retry_after=5.0
    )
