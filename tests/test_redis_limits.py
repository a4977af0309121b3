"""Shared send rate and connection limits against a real redis-server.

Each limiter instance has its own txredisapi connection, as each server process does; the
global reactor is turned by ``wait_for``/``wait_until``. No test needs the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_chat.errors import ProtocolError
from twisted_chat.redis_limits import SharedConnectionLimits, SharedSendRateLimiter

from .reactor_wait import turn, wait_for, wait_until
from .redis_server import RedisServer, connect, wait_connected

Connect = Callable[[], Any]
# What a loaded machine adds to a bound on elapsed time: a bound proves that a call does
# not wait for a Redis that never answers (or for a timeout it need not wait for).
SLACK = 1.5


@pytest.fixture
def limits(connections: Connect) -> Iterator[Callable[..., SharedConnectionLimits]]:
    """SharedConnectionLimits on their own connections, started; stopped at the end."""
    made: list[SharedConnectionLimits] = []

    def make(per_user: int, redis: Any = None, **options: Any) -> SharedConnectionLimits:
        instance = SharedConnectionLimits(redis or connections(), per_user, **options)
        made.append(instance)
        instance.start()
        return instance

    yield make
    for instance in made:
        wait_for(instance.stop())


def timed(d: Deferred[Any], limit: float) -> Any:
    """The result of ``d``, which must fire within ``limit`` seconds."""
    started = time.monotonic()
    result = wait_for(d, timeout=limit + 2)
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"took {elapsed:.2f} s"
    return result


def refused(d: Deferred[Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as raised:
        wait_for(d)
    assert raised.value.code == "too_many_connections"
    return raised.value


# --- the helpers themselves ----------------------------------------------------------------


def test_wait_for_drives_txredisapi(connections: Connect) -> None:
    redis = connections()
    assert wait_for(redis.set("answer", "42")) == "OK"
    assert wait_for(redis.get("answer")) == "42", "convertNumbers=False keeps strings"
    with pytest.raises(AssertionError, match="did not fire"):
        wait_for(Deferred(), timeout=0.05)
    with pytest.raises(Exception, match="wrong number of arguments"):
        wait_for(redis.execute_command("GET"))


def test_redis_server_restarts_on_the_same_port(redis_server: RedisServer, connections: Connect) -> None:
    redis = connections()
    wait_for(redis.set("gone", "soon"))
    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port
    wait_connected(redis)
    assert wait_for(redis.get("gone")) is None, "nothing survives a restart"


# --- send rate -----------------------------------------------------------------------------


def test_rate_is_counted_across_processes(connections: Connect) -> None:
    first = SharedSendRateLimiter(connections(), rate=1, burst=3)
    second = SharedSendRateLimiter(connections(), rate=1, burst=3)
    assert wait_for(first.retry_after(7)) == 0.0
    assert wait_for(second.retry_after(7)) == 0.0
    assert wait_for(first.retry_after(7)) == 0.0
    wait = wait_for(second.retry_after(7))
    assert 0.9 < wait <= 1.0, "the burst of 3 is shared"
    assert wait_for(first.retry_after(8)) == 0.0, "another key has its own bucket"
    assert first.fallbacks == second.fallbacks == 0


def test_scripts_are_sent_again_after_a_script_flush(connections: Connect) -> None:
    limiter = SharedSendRateLimiter(connections(), rate=1, burst=2)
    assert wait_for(limiter.retry_after(1)) == 0.0  # EVAL; then EVALSHA on this connection
    wait_for(connections().execute_command("SCRIPT", "FLUSH"))
    assert wait_for(limiter.retry_after(1)) == 0.0  # NOSCRIPT, so EVAL again
    assert wait_for(limiter.retry_after(1)) > 0.9
    assert limiter.fallbacks == 0


def test_a_refused_key_stays_refused_until_its_wait_is_over(connections: Connect) -> None:
    # A token every 2 s: long enough that a loaded machine's delays stay inside one.
    first = SharedSendRateLimiter(connections(), rate=0.5, burst=1)
    second = SharedSendRateLimiter(connections(), rate=0.5, burst=1)

    def after(seconds: float) -> float:
        since = time.monotonic()
        wait_until(lambda: time.monotonic() >= since + seconds, what=f"{seconds} s passed")
        return time.monotonic()

    assert wait_for(first.retry_after("alice")) == 0.0
    after(0.5)
    # A quarter of a token has come back: the wait is still a whole token's time, not 1.5 s.
    told = wait_for(second.retry_after("alice"))
    told_at = time.monotonic()
    assert 1.99 < told <= 2.0
    # Later the bucket holds a token again, but the key stays refused, for what is left of
    # the same wait (which a retry does not make longer), in every process.
    after(0.5)
    again = wait_for(first.retry_after("alice"))
    assert 0 < again < told - 0.4
    assert after(again) - told_at >= told
    assert wait_for(second.retry_after("alice")) == 0.0, "honouring the wait gets through"
    assert wait_for(first.retry_after("alice")) > 0


def test_idle_rate_keys_expire(connections: Connect) -> None:
    redis = connections()
    limiter = SharedSendRateLimiter(redis, rate=10, burst=2)
    assert wait_for(limiter.retry_after("idle")) == 0.0
    # One token out of two: full again after 0.1 s, and then the key is not needed.
    pttl = wait_for(redis.execute_command("PTTL", "chat:rate:idle"))
    assert 0 < pttl <= 101
    wait_until(lambda: wait_for(redis.exists("chat:rate:idle")) == 0, 2, "the idle key expired")


def test_no_rate_means_no_limit_and_no_redis(redis_server: RedisServer) -> None:
    redis_server.stop()
    redis = connect(redis_server)
    try:
        limiter = SharedSendRateLimiter(redis, rate=0, burst=1)
        assert [timed(limiter.retry_after(1), SLACK) for _ in range(5)] == [0.0] * 5
    finally:
        wait_for(redis.disconnect())


def test_rate_falls_back_to_the_local_limiter_while_redis_is_down(
    redis_server: RedisServer, connections: Connect
) -> None:
    redis = connections()
    limiter = SharedSendRateLimiter(redis, rate=1, burst=1, timeout=2 * SLACK)
    assert wait_for(limiter.retry_after(1)) == 0.0
    redis_server.stop()
    # The local bucket starts full: one send passes, the next is refused; once the
    # connection is known to be down, without waiting for the timeout.
    assert timed(limiter.retry_after(1), 3 * SLACK) == 0.0
    assert timed(limiter.retry_after(1), SLACK) > 0.9
    assert limiter.fallbacks == 2
    redis_server.start()
    wait_connected(redis)
    assert wait_for(limiter.retry_after(2)) == 0.0
    assert limiter.fallbacks == 2, "answered by Redis again"
    assert wait_for(redis.exists("chat:rate:2")) == 1


def test_rate_answers_within_the_timeout_while_redis_hangs(
    redis_server: RedisServer, connections: Connect
) -> None:
    redis = connections()
    limiter = SharedSendRateLimiter(redis, rate=1, burst=1, timeout=0.3)
    redis_server.freeze()
    try:
        assert timed(limiter.retry_after(1), 0.3 + SLACK) == 0.0
        assert limiter.fallbacks == 1
    finally:
        redis_server.thaw()
    # The late reply goes to the abandoned call: the next one gets its own.
    assert wait_for(limiter.retry_after(2)) == 0.0
    assert wait_for(limiter.retry_after(2)) > 0.9
    assert limiter.fallbacks == 1
    assert wait_for(redis.exists("chat:rate:1")) == 1, "the abandoned call was counted in Redis"


# --- open connections per user -------------------------------------------------------------


def test_connections_are_counted_across_processes(limits, connections: Connect) -> None:
    redis = connections()
    first, second = limits(per_user=2), limits(per_user=2)

    def counts_in_redis(*expected: tuple[SharedConnectionLimits, int]) -> None:
        # Another connection sees a fire-and-forget release only once it has run.
        want = {process.process_id: str(count) for process, count in expected}
        wait_until(lambda: wait_for(redis.hgetall("chat:conn:user:1")) == want, what=f"counts {want}")

    lease = wait_for(first.admit(1))
    kept = wait_for(first.admit(1))
    refused(second.admit(1))
    refused(first.admit(1))
    assert wait_for(second.admit(2)), "another user has their own count"
    lease.release()
    lease.release()  # once, however often it is said
    counts_in_redis((first, 1))
    again = wait_for(second.admit(1))
    refused(first.admit(1))
    refused(second.admit(1))
    assert (first.held(1), second.held(1)) == (1, 1)
    kept.release()
    again.release()
    counts_in_redis()
    assert first.fallbacks == second.fallbacks == 0


def test_counts_stay_right_when_a_release_passes_a_refused_admission(limits, connections: Connect) -> None:
    redis = connections()
    first, second = limits(per_user=2), limits(per_user=2)
    wait_for(second.admit(1))
    lease = wait_for(first.admit(1))
    # The release is sent while the admission is in flight, so it counts that slot too.
    admission = first.admit(1)
    lease.release()
    refused(admission)
    assert first.held(1) == 0
    wait_until(
        lambda: wait_for(redis.hgetall("chat:conn:user:1")) == {second.process_id: "1"},
        what="only the second process counts a connection of user 1",
    )


def test_anonymous_and_unlimited_connections_need_no_redis(redis_server: RedisServer) -> None:
    redis_server.stop()
    redis = connect(redis_server)
    try:
        anonymous = SharedConnectionLimits(redis, per_user=1)
        for _ in range(3):
            timed(anonymous.admit(None), SLACK).release()
        unlimited = SharedConnectionLimits(redis, per_user=0)
        assert [timed(unlimited.admit(1), SLACK) for _ in range(3)]
        assert anonymous.fallbacks == unlimited.fallbacks == 0
    finally:
        wait_for(redis.disconnect())


def test_a_dead_process_stops_counting(limits, connections: Connect) -> None:
    doomed_redis = connections()
    doomed = limits(per_user=2, redis=doomed_redis, liveness_ttl=1.0)
    survivor = limits(per_user=2, liveness_ttl=1.0)
    wait_for(doomed.admit(7))
    wait_for(doomed.admit(7))
    refused(survivor.admit(7))
    # The process dies without a word: its heartbeat no longer reaches Redis.
    wait_for(doomed_redis.disconnect())
    died = time.monotonic()
    refused(survivor.admit(7))
    trying = False
    admitted: list[Any] = []

    def tried(result: Any) -> None:
        nonlocal trying
        trying = False
        if not isinstance(result, Failure):
            admitted.append(result)

    def try_admit() -> bool:
        nonlocal trying
        if not admitted and not trying:
            trying = True
            survivor.admit(7).addBoth(tried)
        return bool(admitted)

    wait_until(try_admit, 5, "the dead process's connections stop counting")
    assert time.monotonic() - died > 0.5, "not before its liveness ended"
    redis = connections()
    assert wait_for(redis.hgetall("chat:conn:user:7")) == {survivor.process_id: "1"}


def test_a_stopped_process_takes_its_counts_away(limits, connections: Connect) -> None:
    redis = connections()
    leaving, staying = limits(per_user=1), limits(per_user=1)
    wait_for(leaving.admit(3))
    refused(staying.admit(3))
    wait_for(leaving.stop())
    wait_for(staying.admit(3))
    assert wait_for(redis.zscore("chat:conn:live", leaving.process_id)) is None
    assert wait_for(redis.zscore("chat:conn:live", staying.process_id)) is not None


def test_counts_heal_after_redis_restarts(redis_server: RedisServer, limits, connections: Connect) -> None:
    first_redis, second_redis, redis = connections(), connections(), connections()
    first = limits(per_user=3, redis=first_redis, liveness_ttl=1.0)
    second = limits(per_user=3, redis=second_redis, liveness_ttl=1.0)
    wait_for(first.admit(5))
    wait_for(first.admit(5))
    wait_for(second.admit(5))
    redis_server.restart()
    for connection in (redis, first_redis, second_redis):
        wait_connected(connection)
    wait_until(
        lambda: (
            wait_for(redis.hgetall("chat:conn:user:5")) == {first.process_id: "2", second.process_id: "1"}
        ),
        5,
        "the heartbeats wrote the counts again",
    )
    refused(second.admit(5))
    assert second.held(5) == 1


def test_connections_fall_back_to_local_limits_while_redis_is_down(
    redis_server: RedisServer, limits, connections: Connect
) -> None:
    process = limits(per_user=1, liveness_ttl=1.0)
    counted = wait_for(process.admit(3))
    redis_server.stop()
    with pytest.raises(ProtocolError):
        timed(process.admit(3), 0.5 + SLACK)  # the local count knows user 3's connection
    fallback = timed(process.admit(4), 0.5 + SLACK)
    assert process.fallbacks == 1, "a user over the limit here is refused without asking Redis"
    counted.release()  # Redis is told when it can be: nothing waits for it
    lease = timed(process.admit(3), 0.5 + SLACK)
    assert process.fallbacks == 2
    lease.release()
    # Once Redis is back, the heartbeat counts there what was admitted without it.
    redis_server.start()
    redis = connections()
    wait_until(
        lambda: wait_for(redis.hgetall("chat:conn:user:4")) == {process.process_id: "1"},
        10,
        "the heartbeat wrote the fallback lease",
    )
    fallback.release()
    wait_until(lambda: wait_for(redis.exists("chat:conn:user:4")) == 0, what="the release reached Redis")


def test_admission_answers_within_the_timeout_while_redis_hangs(redis_server: RedisServer, limits) -> None:
    process = limits(per_user=1, timeout=0.3)
    redis_server.freeze()
    try:
        lease = timed(process.admit(9), 0.3 + SLACK)
        refused(process.admit(9))
        assert process.fallbacks == 1
        lease.release()
    finally:
        redis_server.thaw()
    turn(0.05)
