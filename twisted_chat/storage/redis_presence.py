"""Presence shared by every process through Redis: entries expire on the Redis clock.

Per room, ``chat:presence:<room id>:expiry`` is a ZSET key -> when the entry expires (ms,
Redis clock) and ``chat:presence:<room id>:values`` a HASH key -> JSON value. An entry
outlives the process that set it by at most its ttl: ``entries`` deletes the expired
ones, and both keys expire with the room's last entry. ``set`` and ``remove`` are fire and
forget (a lost one is healed by the caller's next refresh, or by the ttl); ``entries``
fails with StoreUnavailable when Redis cannot answer within ``timeout``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..redis_limits import RedisCalls
from .interfaces import StoreUnavailable

_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
"""

# KEYS: expiry ZSET, values HASH. ARGV: key, JSON value, ttl (ms).
SET_SCRIPT = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
-- The room's keys live as long as its longest-lived entry.
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""
)

# KEYS: expiry ZSET, values HASH. ARGV: key.
REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: expiry ZSET, values HASH. Returns key1, value1, key2, value2, ... of live entries.
ENTRIES_SCRIPT = (
    _NOW
    + """
local chunk = 1000
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired, chunk do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + chunk - 1, #expired)))
  end
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local result = {}
for i = 1, #live, chunk do
  local values = redis.call('HMGET', KEYS[2], unpack(live, i, math.min(i + chunk - 1, #live)))
  for j = 1, #values do
    if values[j] then
      result[#result + 1] = live[i + j - 1]
      result[#result + 1] = values[j]
    end
  end
end
return result
"""
)


class RedisPresence:
    """The ``Presence`` of storage/interfaces.py, shared by all processes."""

    def __init__(self, redis: Any, reactor: Any = None, timeout: float = 0.5, prefix: str = "chat:"):
        self._calls = RedisCalls(redis, reactor, timeout)
        self._prefix = f"{prefix}presence:"

    @property
    def failures(self) -> int:
        return self._calls.failures

    def keys(self, room_id: int) -> list[str]:
        return [f"{self._prefix}{room_id}:expiry", f"{self._prefix}{room_id}:values"]

    def set(self, room_id: int, key: str, value: Any, ttl: float) -> None:
        encoded = json.dumps(value, separators=(",", ":"))
        ttl_ms = max(1, round(ttl * 1000))
        self._calls.eval(SET_SCRIPT, self.keys(room_id), [key, encoded, ttl_ms]).addErrback(_ignore)

    def remove(self, room_id: int, key: str) -> None:
        self._calls.eval(REMOVE_SCRIPT, self.keys(room_id), [key]).addErrback(_ignore)

    def entries(self, room_id: int) -> Deferred[dict[str, Any]]:
        """The room's live entries by key; fails with StoreUnavailable."""
        d = self._calls.eval(ENTRIES_SCRIPT, self.keys(room_id), [])
        d.addCallbacks(_decode, _unavailable)
        return d


def _decode(reply: list[Any] | None) -> dict[str, Any]:
    flat = reply or []
    return {str(flat[i]): _loads(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _loads(value: Any) -> Any:
    # A connection made with convertNumbers=True would already have turned "42" into 42.
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _unavailable(failure: Failure) -> dict[str, Any]:
    raise StoreUnavailable(f"Redis presence: {failure.getErrorMessage()}")


def _ignore(failure: Failure) -> None:
    return None
