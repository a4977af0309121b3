"""Group commit: write accepted messages in as few transactions as a burst allows.

While one batch is being written, newly accepted messages wait; when it lands, all of
them go in the next transaction. A quiet room pays one transaction per message with no
timer delay; a burst pays one per batch. Batches land in order, one at a time, so
messages are published in the order their ids were given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from ..events import ChatMessage

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[ChatMessage]], Deferred[list[Any]]]


class GroupCommitWriter:
    """Queues messages and writes them through ``write`` one batch at a time.

    ``write`` returns a Deferred firing with one outcome per message; ``on_written`` is
    called on the reactor thread with the batch and its outcomes (or a Failure), before the
    next batch starts.
    """

    def __init__(
        self,
        reactor: Any,
        write: WriteBatch,
        on_written: Callable[[list[ChatMessage], list[Any] | Failure], None],
        max_batch: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._reactor = reactor
        self._write = write
        self._on_written = on_written
        self._max_batch = max_batch
        self._queue: list[ChatMessage] = []
        self._writing = False
        self._scheduled = False
        self._idle_waiters: list[Deferred[None]] = []
        self._clock = clock
        self._batch_started = 0.0
        self.batches = 0
        self.last_commit_seconds = 0.0

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not (self._queue or self._writing or self._scheduled)

    def submit(self, message: ChatMessage) -> None:
        self._queue.append(message)
        if not self._writing and not self._scheduled:
            # Wait for the end of this reactor turn, so that every frame read in it joins.
            self._scheduled = True
            self._reactor.callLater(0, self._start_batch)

    def drained(self) -> Deferred[None]:
        """Fires once everything submitted so far is written (or has failed)."""
        if not self._writing and not self._queue and not self._scheduled:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _start_batch(self) -> None:
        self._scheduled = False
        if self._writing:
            return
        if not self._queue:
            self._notify_idle()
            return
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        self._writing = True
        self.batches += 1
        self._batch_started = self._clock()
        d = self._write(batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, result: list[Any] | Failure, batch: list[ChatMessage]) -> None:
        self._writing = False
        self.last_commit_seconds = self._clock() - self._batch_started
        if isinstance(result, Failure):
            log.error("writing %d messages failed: %s", len(batch), result.getErrorMessage())
        try:
            self._on_written(batch, result)
        except Exception:
            log.exception("publishing a written batch failed")
        self._start_batch()

    def _notify_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
