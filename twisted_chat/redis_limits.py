"""Abuse limits shared by every process through Redis, with the process-local ones as fallback.

A Redis that is down or slow must never hang or refuse a user's action: every call gives
up after ``timeout`` (and fails at once while the connection is known to be down), and
the limit then answers from what this process knows alone, as the classes of
``limits.py`` do. Nothing is logged per call (the Redis link logs outages);
``fallbacks`` counts.

Keys (``prefix`` defaults to ``chat:``):

- ``chat:rate:<key>``: HASH ``tokens``, ``stamp``, ``until`` (ms, Redis clock): one
  token bucket, with a PEXPIRE for when it is full again, so idle keys vanish.
- ``chat:conn:live``: ZSET process id -> when its liveness ends (ms, Redis clock),
  refreshed by each process's heartbeat.
- ``chat:conn:user:<user id>``: HASH process id -> that process's open connections of
  the user. Fields of processes no longer live are ignored and deleted by the admit
  script, so a killed process's counts go away after its liveness ends.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Hashable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from .limits import ConnectionLease, Lease, SendRateLimiter, too_many_connections


class RedisUnavailable(Exception):
    """The command connection to Redis is down."""


class RedisCalls:
    """Scripts run on one txredisapi connection that never wait longer than ``timeout``.

    txredisapi waits for a connection for ever while Redis is down, so a call fails at
    once while the connection is known to be down (the handler's pool is empty), and
    gives up after ``timeout`` otherwise (a frozen Redis, a connection still being made).
    """

    def __init__(self, redis: Any, reactor: Any = None, timeout: float = 0.5):
        if reactor is None:
            from twisted.internet import reactor
        self.redis = redis
        self.reactor = reactor
        self.timeout = timeout
        self.failures = 0

    @property
    def connected(self) -> bool:
        # The lazy handler's factory (a txredisapi internal) knows its live connections;
        # anything else passed as ``redis`` is assumed connected.
        factory = getattr(self.redis, "_factory", None)
        return factory is None or bool(factory.size)

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        """EVALSHA, or EVAL when Redis does not know the script (txredisapi's ``eval``)."""
        if not self.connected:
            self.failures += 1
            return fail(RedisUnavailable("Redis is not connected"))
        d = defer.maybeDeferred(self.redis.eval, script, list(keys), [str(arg) for arg in args])
        d.addTimeout(self.timeout, self.reactor)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        self.failures += 1
        return failure


def _ignore(failure: Failure) -> None:
    return None


# --- send rate -----------------------------------------------------------------------------

# KEYS[1]: the bucket. ARGV: rate (per second), burst. Returns the wait in ms (a string:
# Lua numbers become integers in replies), "0" when a token was taken.
RATE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp', 'until')
local tokens = tonumber(state[1]) or burst
local stamp = tonumber(state[2]) or now
local refused_until = tonumber(state[3]) or 0
if now < refused_until then
  return tostring(refused_until - now)
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate / 1000)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  refused_until = 0
else
  wait = math.max((1 - tokens) / rate, 1 / rate) * 1000
  refused_until = now + wait
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now),
           'until', tostring(refused_until))
-- A missing bucket is a full one: keep it only until it is full and not refused.
local keep = math.max(wait, (burst - tokens) * 1000 / rate)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(keep) + 1))
return tostring(wait)
"""


class SharedSendRateLimiter:
    """``limits.SendRateLimiter`` counted in Redis, so a key's rate holds over all processes.

    Same rule: ``rate`` per second per key, bursts of ``burst``, and a refused key stays
    refused until the wait it was told is over. One atomic script per call, on the Redis
    clock, so the processes' clocks do not matter.
    """

    def __init__(
        self,
        redis: Any,
        rate: float,
        burst: int,
        reactor: Any = None,
        timeout: float = 0.5,
        prefix: str = "chat:",
    ):
        self.rate = rate
        self.burst = burst
        self.local = SendRateLimiter(rate, burst)
        self._calls = RedisCalls(redis, reactor, timeout)
        self._prefix = f"{prefix}rate:"
        self.fallbacks = 0

    def key(self, key: Hashable) -> str:
        return f"{self._prefix}{key}"

    def retry_after(self, key: Hashable) -> Deferred[float]:
        """Take one token for ``key``: 0.0 when allowed, else seconds until a send may pass."""
        if self.rate <= 0:
            return succeed(0.0)
        d = self._calls.eval(RATE_SCRIPT, [self.key(key)], [repr(float(self.rate)), self.burst])
        d.addCallbacks(lambda wait_ms: float(wait_ms) / 1000, self._fallback, errbackArgs=(key,))
        return d

    def forget(self, key: Hashable) -> None:
        """Only the local bucket: the shared one expires by itself."""
        self.local.forget(key)

    def _fallback(self, failure: Failure, key: Hashable) -> float:
        self.fallbacks += 1
        return self.local.retry_after(key)


# --- open connections per user -------------------------------------------------------------

_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""

# KEYS[1]: live ZSET, KEYS[2]: the user's HASH. ARGV: process id, liveness ttl (ms), the
# limit, this process's count with the new connection. Returns 1 (admitted) or 0.
ADMIT_SCRIPT = (
    _NOW
    + """
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
local total = tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  local process = fields[i]
  if process ~= me then
    local live_until = redis.call('ZSCORE', KEYS[1], process)
    if live_until and tonumber(live_until) > now then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[2], process)
    end
  end
end
redis.call('ZADD', KEYS[1], now + ttl, me)
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
if total > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], me, ARGV[4])
redis.call('PEXPIRE', KEYS[2], 2 * ttl)
return 1
"""
)

# KEYS[1]: live ZSET, KEYS[2..n]: user HASHes. ARGV: process id, liveness ttl (ms), "1" to
# stay live or "0" to leave, then one count per user HASH. Sets this process's counts.
WRITE_SCRIPT = (
    _NOW
    + """
local me = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  local count = tonumber(ARGV[i + 2])
  if count > 0 then
    redis.call('HSET', KEYS[i], me, count)
    redis.call('PEXPIRE', KEYS[i], 2 * ttl)
  else
    redis.call('HDEL', KEYS[i], me)
  end
end
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, me)
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
else
  redis.call('ZREM', KEYS[1], me)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return 1
"""
)

_USERS_PER_WRITE = 500


class SharedLease:
    """One connection's slot; ``release`` gives it back, once however often it is called."""

    __slots__ = ("_limits", "_user_id")

    def __init__(self, limits: SharedConnectionLimits, user_id: int):
        self._limits: SharedConnectionLimits | None = limits
        self._user_id = user_id

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._released(self._user_id)


class SharedConnectionLimits:
    """``limits.ConnectionLimits`` over all processes: ``per_user`` open connections (0: no limit).

    Each process writes its own count per user into Redis and keeps it in ``_held``
    (leases open here, plus admissions in flight): every write sets the absolute count,
    so writes on the one ordered connection never drift. A heartbeat (``start``) keeps
    this process live and rewrites all its counts, which heals what failed writes and a
    Redis restart (every key lost) left wrong. A process that dies stops its heartbeat,
    and the others stop counting it ``liveness_ttl`` seconds later.

    The local count is also the fallback, what ``limits.ConnectionLimits`` would decide in
    this process alone: a user who has ``per_user`` connections (or admissions in flight)
    here is refused without asking Redis, and when Redis cannot answer, anyone else is
    admitted.
    """

    def __init__(
        self,
        redis: Any,
        per_user: int,
        reactor: Any = None,
        timeout: float = 0.5,
        liveness_ttl: float = 15.0,
        prefix: str = "chat:",
        process_id: str | None = None,
    ):
        self.per_user = per_user
        self._calls = RedisCalls(redis, reactor, timeout)
        self.liveness_ttl = liveness_ttl
        self._ttl_ms = max(1, round(liveness_ttl * 1000))
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._live_key = f"{prefix}conn:live"
        self._user_prefix = f"{prefix}conn:user:"
        self._held: dict[int, int] = {}
        # Users whose count in Redis may be wrong (a write failed): the next heartbeat
        # writes them even when this process holds none of theirs any more.
        self._stale: set[int] = set()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self._calls.reactor
        self._stopped = False
        self.fallbacks = 0

    def user_key(self, user_id: int) -> str:
        return f"{self._user_prefix}{user_id}"

    def held(self, user_id: int) -> int:
        """This process's connections of the user (with admissions in flight)."""
        return self._held.get(user_id, 0)

    def start(self) -> None:
        """Beat every third of ``liveness_ttl``, at once first."""
        self._stopped = False
        if not self._heartbeat.running:
            self._heartbeat.start(self.liveness_ttl / 3, now=True)

    def stop(self) -> Deferred[None]:
        """Stop beating and take this process's counts out of Redis (fires within the timeout)."""
        self._stopped = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        users = set(self._held) | self._stale
        d = self._write(dict.fromkeys(users, 0), live=False)
        d.addCallbacks(lambda _: None, _ignore)
        return d

    def admit(self, user_id: int | None) -> Deferred[ConnectionLease]:
        """Take a slot, or fail with ProtocolError ``too_many_connections``."""
        if user_id is None or self.per_user <= 0:
            return succeed(Lease(None, None))
        count = self._held.get(user_id, 0) + 1
        if count > self.per_user:
            return fail(too_many_connections("user"))
        self._held[user_id] = count
        if self._stopped:
            return succeed(SharedLease(self, user_id))
        d = self._calls.eval(
            ADMIT_SCRIPT,
            [self._live_key, self.user_key(user_id)],
            [self.process_id, self._ttl_ms, self.per_user, count],
        )
        d.addCallbacks(self._admitted, self._admit_locally, callbackArgs=(user_id,), errbackArgs=(user_id,))
        return d

    def _admitted(self, admitted: Any, user_id: int) -> ConnectionLease:
        if int(admitted) != 1:
            self._unhold(user_id)
            # Admissions sent after this one counted its slot: set the count right.
            self._sync(user_id)
            raise too_many_connections("user")
        return SharedLease(self, user_id)

    def _admit_locally(self, failure: Failure, user_id: int) -> ConnectionLease:
        # The local count was checked before asking Redis; the script may or may not
        # have run, so the count there is the heartbeat's to set right.
        self.fallbacks += 1
        self._stale.add(user_id)
        return SharedLease(self, user_id)

    def _released(self, user_id: int) -> None:
        self._unhold(user_id)
        if not self._stopped:
            self._sync(user_id)

    def _unhold(self, user_id: int) -> None:
        count = self._held.get(user_id, 0) - 1
        if count > 0:
            self._held[user_id] = count
        else:
            self._held.pop(user_id, None)

    def _sync(self, user_id: int) -> None:
        """Write the user's count now, fire and forget; a failure leaves it to the heartbeat."""
        d = self._write({user_id: self._held.get(user_id, 0)}, live=True)
        d.addErrback(lambda _: self._stale.add(user_id))

    def _beat(self) -> Deferred[None]:
        stale, self._stale = self._stale, set()
        counts = {user_id: 0 for user_id in stale}
        counts.update(self._held)
        d = self._write(counts, live=True)

        def failed(failure: Failure) -> None:
            self._stale |= stale

        d.addCallbacks(lambda _: None, failed)
        return d

    def _write(self, counts: dict[int, int], live: bool) -> Deferred[None]:
        """Set this process's counts (in chunks: one script call per 500 users)."""
        users = list(counts)
        chunks = [users[i : i + _USERS_PER_WRITE] for i in range(0, len(users), _USERS_PER_WRITE)]
        calls = [
            self._calls.eval(
                WRITE_SCRIPT,
                [self._live_key, *(self.user_key(user_id) for user_id in chunk)],
                [self.process_id, self._ttl_ms, "1" if live else "0", *(counts[u] for u in chunk)],
            )
            for chunk in chunks or [[]]
        ]
        return defer.gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)
