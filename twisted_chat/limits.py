"""Abuse limits: token buckets (sends, commands), open connections per user, per address and in all.

All live on the reactor thread and are bounded: idle buckets are dropped as they refill.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Hashable
from typing import Protocol

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

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

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
    """Open WebSockets and polls per user, over every transport (0: no limit).

    Addresses are counted earlier, per TCP connection, by the ``ConnectionGate``.
    """

    def __init__(self, per_user: int):
        self._users = _Counter(per_user)

    def admit(self, user_id: int | None) -> Lease:
        """Take a slot, or raise ProtocolError ``too_many_connections``."""
        if user_id is None:
            return Lease(None, None)
        if self._users.full(user_id):
            raise too_many_connections("user")
        self._users.add(user_id, 1)
        return Lease(self, user_id)

    def _release(self, user_id: int) -> None:
        self._users.add(user_id, -1)


class ConnectionLease(Protocol):
    def release(self) -> None: ...


class Lease:
    """One connection's slot; ``release`` gives it back, once however often it is called."""

    __slots__ = ("_limits", "_user_id")

    def __init__(self, limits: ConnectionLimits | None, user_id: int | None):
        self._limits = limits
        self._user_id = user_id

    def release(self) -> None:
        if self._limits is not None and self._user_id is not None:
            self._limits._release(self._user_id)
            self._limits = None


class ConnectionGate:
    """Every TCP connection of the public port, per address and in all (0: no limit).

    One count covers every kind of connection (WebSockets, parked polls, plain HTTP), so
    one address cannot take the descriptors everyone else needs. ``total`` stays below the
    process's descriptor limit by a reserve, so the database can still open files and a
    refused client still gets an answer. Connections are keyed by their transport, which
    stays the same when an HTTP connection is upgraded to a WebSocket.
    """

    def __init__(self, per_address: int, total: int):
        self._addresses = _Counter(per_address)
        self.total = total
        self._open: dict[object, str] = {}
        self.refused = 0

    def admit(self, transport: object, address: str) -> ProtocolError | None:
        """Count a new connection, or say why it is refused."""
        if self.total > 0 and len(self._open) >= self.total:
            self.refused += 1
            return ProtocolError("unavailable", "the server is busy: try again shortly", retry_after=5.0)
        if self._addresses.full(address):
            self.refused += 1
            return too_many_connections("address")
        self._open[transport] = address
        self._addresses.add(address, 1)
        return None

    def release(self, transport: object) -> None:
        """The connection is gone (however often that is said)."""
        address = self._open.pop(transport, None)
        if address is not None:
            self._addresses.add(address, -1)

    @property
    def open_count(self) -> int:
        return len(self._open)


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def too_many_connections(what: str) -> ProtocolError:
    return ProtocolError(
        "too_many_connections", f"too many open connections for this {what}", retry_after=5.0
    )
