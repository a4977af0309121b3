"""RedisPresence against a real redis-server: entries shared by processes, expiring on time.

Each instance has its own txredisapi connection, as each server process does; the global
reactor is turned by ``wait_for``/``wait_until``. No test needs the database.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from twisted_chat.storage.interfaces import StoreUnavailable
from twisted_chat.storage.redis_presence import RedisPresence

from .reactor_wait import wait_for, wait_until
from .redis_server import RedisServer, wait_connected

ROOM = 12
# Replies get this long where the test is not about timeouts: on a loaded machine the
# default 0.5 s has dropped a write.
PATIENT = 5.0
# What a loaded machine adds to a bound on elapsed time: a bound proves that a call does
# not wait for a Redis that never answers, not how fast the machine is.
SLACK = 1.5


def entries(presence: RedisPresence, room_id: int = ROOM) -> dict[str, Any]:
    return wait_for(presence.entries(room_id))


def test_entries_are_shared_by_processes(connections) -> None:
    # Each connection keeps its own commands in order, not those of two: a process's
    # writes are read back on its own connection before another process reads.
    redis = connections()
    first, second = RedisPresence(redis, timeout=PATIENT), RedisPresence(connections(), timeout=PATIENT)
    first.set(ROOM, "c1", {"user": "alice", "typing": False}, ttl=10)
    entries(first)
    second.set(ROOM, "c2", {"user": "bób"}, ttl=10)
    second.set(ROOM + 1, "c3", ["carol", 3], ttl=10)
    everyone = {"c1": {"user": "alice", "typing": False}, "c2": {"user": "bób"}}
    assert entries(second) == entries(first) == everyone
    assert entries(first, ROOM + 1) == {"c3": ["carol", 3]}
    first.set(ROOM, "c1", {"user": "alice", "typing": True}, ttl=10)
    entries(first)
    assert entries(second)["c1"] == {"user": "alice", "typing": True}
    second.remove(ROOM, "c1")
    assert entries(second) == entries(first) == {"c2": {"user": "bób"}}
    first.remove(ROOM, "c2")
    first.remove(ROOM, "never set")
    assert entries(first) == entries(second) == {}
    assert wait_for(redis.execute_command("EXISTS", *first.keys(ROOM))) == 0, "nothing is left"
    assert entries(second, 999) == {}
    assert first.failures == second.failures == 0


def test_entries_expire_unless_set_again(connections) -> None:
    redis = connections()
    first, second = RedisPresence(redis, timeout=PATIENT), RedisPresence(connections(), timeout=PATIENT)
    first.set(ROOM, "short", 1, ttl=0.3)
    first.set(ROOM, "refreshed", 2, ttl=0.3)
    set_at = time.monotonic()
    assert entries(first) == {"short": 1, "refreshed": 2}
    second.set(ROOM, "long", 3, ttl=10)
    second.set(ROOM, "refreshed", 2, ttl=10)
    assert entries(second) == {"short": 1, "refreshed": 2, "long": 3}
    wait_until(lambda: entries(second) == {"refreshed": 2, "long": 3}, 3, "the short entry expired")
    assert time.monotonic() - set_at > 0.2, "not before its ttl"
    expiry_key, values_key = first.keys(ROOM)
    assert sorted(wait_for(redis.zrange(expiry_key, 0, -1))) == ["long", "refreshed"]
    assert sorted(wait_for(redis.hkeys(values_key))) == ["long", "refreshed"]


def test_entries_outlive_their_setter_by_their_ttl_only(connections) -> None:
    setter_redis, redis = connections(), connections()
    setter, reader = RedisPresence(setter_redis, timeout=PATIENT), RedisPresence(redis, timeout=PATIENT)
    setter.set(ROOM, "c1", {"user": "alice"}, ttl=0.5)
    setter.set(ROOM, "c2", {"user": "alice"}, ttl=0.4)
    assert entries(setter) == {"c1": {"user": "alice"}, "c2": {"user": "alice"}}
    wait_for(setter_redis.disconnect())  # the process died
    assert entries(reader) == {"c1": {"user": "alice"}, "c2": {"user": "alice"}}
    # The room's keys expire with its last entry, even if nobody reads them again.
    pttl = wait_for(redis.execute_command("PTTL", reader.keys(ROOM)[0]))
    assert 0 < pttl <= 500
    wait_until(
        lambda: wait_for(redis.execute_command("EXISTS", *reader.keys(ROOM))) == 0,
        3,
        "the room's keys expired",
    )
    assert entries(reader) == {}


def test_entries_fail_with_store_unavailable_while_redis_is_down(
    redis_server: RedisServer, connections
) -> None:
    redis = connections()
    presence = RedisPresence(redis, timeout=0.3)
    presence.set(ROOM, "c1", "here", ttl=10)
    assert entries(presence) == {"c1": "here"}
    redis_server.stop()
    presence.set(ROOM, "c2", "lost", ttl=10)  # neither raises nor waits
    presence.remove(ROOM, "c1")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        wait_for(presence.entries(ROOM))
    assert time.monotonic() - started < 0.3 + SLACK
    redis_server.start()
    wait_connected(redis)
    assert entries(presence) == {}, "a restarted Redis has lost everything"
    presence.set(ROOM, "c1", "back", ttl=10)
    assert entries(presence) == {"c1": "back"}


def test_entries_fail_within_the_timeout_while_redis_hangs(redis_server: RedisServer, connections) -> None:
    presence = RedisPresence(connections(), timeout=0.3)
    redis_server.freeze()
    try:
        started = time.monotonic()
        presence.set(ROOM, "c1", "here", ttl=10)
        with pytest.raises(StoreUnavailable):
            wait_for(presence.entries(ROOM))
        assert time.monotonic() - started < 0.3 + SLACK
        wait_until(lambda: presence.failures == 2, 0.3 + SLACK, "the set timed out too")
    finally:
        redis_server.thaw()
