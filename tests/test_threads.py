"""A thread pool's queue is bounded: past it, work is refused at once, not queued."""

from __future__ import annotations

import threading

from twisted.internet.defer import Deferred

from twisted_chat.storage.interfaces import StoreUnavailable
from twisted_chat.threads import ThreadPoolService

from .server import wait_for


class NoReactor:
    """Results are not needed here: only whether work was taken or refused."""

    def callFromThread(self, fn, *args):
        pass


def test_a_full_queue_refuses_at_once_and_takes_work_again_once_it_drains():
    pool = ThreadPoolService(NoReactor(), "test", size=1, max_queue=2)
    pool.pool.start()
    release = threading.Event()
    try:
        pool.run(release.wait)
        wait_for(lambda: pool.queue_depth == 0, what="the only thread to take the first job")
        pool.run(release.wait)
        pool.run(release.wait)
        assert pool.full
        refused: list = []
        pool.run(print).addErrback(refused.append)
        assert refused and refused[0].check(StoreUnavailable) and pool.refused == 1
        release.set()
        wait_for(lambda: pool.queue_depth == 0, what="the queue to drain")
        assert isinstance(pool.run(len, ()), Deferred) and pool.refused == 1
    finally:
        release.set()
        pool.pool.stop()
