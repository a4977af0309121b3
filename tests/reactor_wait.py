"""Drive the global Twisted reactor from a test, without ``reactor.run()``.

Tests that talk to a real redis-server over real txredisapi connections need the reactor
to turn, while pytest (and pytest-django's database) stay on the test thread: these
helpers iterate the reactor until a condition holds or a deadline passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

reactor: Any = _reactor
_STEP = 0.01


def _start_thread_pool() -> None:
    # HostnameEndpoint (so txredisapi) resolves names in the reactor's thread pool, which
    # starts only once the reactor runs, and it never does here. Started by hand, its
    # threads would keep the interpreter from exiting (the reactor never shuts down), so
    # they are made daemon threads. Work queued before the start runs then.
    pool = reactor.getThreadPool()
    if not pool.started:
        pool.threadFactory = partial(threading.Thread, daemon=True)
        pool.start()


def wait_for(d: Deferred[T], timeout: float = 5.0) -> T:
    """Turn the reactor until ``d`` fires; return its result or raise its exception."""
    _start_thread_pool()
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    deadline = time.monotonic() + timeout
    while not outcome:
        if time.monotonic() >= deadline:
            raise AssertionError(f"the Deferred did not fire within {timeout} s: {d!r}")
        reactor.iterate(_STEP)
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Turn the reactor until ``predicate()`` is true."""
    _start_thread_pool()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {what or predicate!r}")
        reactor.iterate(_STEP)


def turn(seconds: float) -> None:
    """Let the reactor run for ``seconds`` (for checking that something does *not* happen)."""
    _start_thread_pool()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reactor.iterate(min(_STEP, max(0.0, deadline - time.monotonic())))
