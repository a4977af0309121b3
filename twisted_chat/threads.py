"""Thread pools for blocking work, so the reactor thread never waits on a database.

Twisted's own pool is shared with DNS and deferToThread; the chat gets its own named
pools, sized to the database connection budget, started and stopped with the service.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections
from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

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

    def __init__(self, reactor: Any, name: str, size: int):
        self.name = name
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)
        self._waiting = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        with self._lock:
            self._waiting += 1
        return threads.deferToThreadPool(self.reactor, self.pool, self._job, fn, *args)

    def _job(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self._waiting -= 1
        return _with_fresh_connection(fn, *args)

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
