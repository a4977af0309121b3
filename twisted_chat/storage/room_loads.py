"""One load per room at a time, whoever asks for it meanwhile.

The directory and the message log both read a room from the database on first use; a burst
of clients joining a cold room must cost one query, not one each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .interfaces import StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)

T = TypeVar("T")


class RoomLoads(Generic[T]):
    """Runs ``load(room_id)`` once for all who ask while it runs.

    A failure other than UnknownRoom or StoreUnavailable (a full queue) is logged, and
    reaches the callers as StoreUnavailable.
    """

    def __init__(self, load: Callable[[int], Deferred[T]]):
        self._load = load
        self._waiting: dict[int, list[Deferred[T]]] = {}

    def get(self, room_id: int) -> Deferred[T]:
        waiter: Deferred[T] = Deferred()
        waiters = self._waiting.get(room_id)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._waiting[room_id] = [waiter]
            self._load(room_id).addBoth(self._loaded, room_id)
        return waiter

    def running(self, room_id: int) -> bool:
        return room_id in self._waiting

    @property
    def count(self) -> int:
        return len(self._waiting)

    def _loaded(self, result: T | Failure, room_id: int) -> None:
        waiters = self._waiting.pop(room_id)
        if isinstance(result, Failure):
            if not result.check(UnknownRoom, StoreUnavailable):
                log.error("loading room %s failed: %s", room_id, result.getErrorMessage())
                result = Failure(StoreUnavailable("the database did not answer"))
            for waiter in waiters:
                waiter.errback(result)
        else:
            for waiter in waiters:
                waiter.callback(result)
