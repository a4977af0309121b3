"""Thread pools for blocking work, so the reactor thread never waits on a database.

Twisted's own pool is shared with DNS and deferToThread; the chat gets its own named
pools, sized to the database connection budget, started and stopped with the service.
Each pool's queue is bounded: a flood of work is refused at once (``StoreUnavailable``,
which clients see as ``unavailable``) instead of making everyone wait behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections
from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail
from twisted.python.threadpool import ThreadPool

from .storage.interfaces import StoreUnavailable

T = TypeVar("T")


def _with_fresh_connection(fn: Callable[..., T], *args: Any) -> T:
    # Django only recycles connections around WSGI requests; do the same around each job.
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


class ThreadPoolService(Service):
    """A named thread pool, started and stopped with the server; ``run`` jobs may use the ORM."""

    def __init__(self, reactor: Any, name: str, size: int, max_queue: int = 0):
        self.name = name
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)
        self.max_queue = max_queue
        self.refused = 0
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def full(self) -> bool:
        return 0 < self.max_queue <= self._waiting

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn`` in a thread, with a fresh database connection, unless the queue is full."""
        if self.full:
            self.refused += 1
            return fail(StoreUnavailable(f"the server is busy ({self.name}): try again shortly"))
        with self._lock:
            self._waiting += 1
        return threads.deferToThreadPool(
            self.reactor, self.pool, self._counted, _with_fresh_connection, fn, *args
        )

    def callInThread(self, fn: Callable[..., object], *args: Any) -> None:
        """ThreadPool's own interface, counted (twisted.web.wsgi hands its requests here)."""
        with self._lock:
            self._waiting += 1
        self.pool.callInThread(self._counted, fn, *args)

    def _counted(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self._waiting -= 1
        return fn(*args)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a thread (counted here: ThreadPool keeps its queue private)."""
        return self._waiting

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # stop() joins the workers; a WSGI worker may be waiting on the reactor, so join
        # from another thread rather than block the reactor.
        return threads.deferToThread(self.pool.stop)
