"""The process-local room directory: the database's rooms, cached on the reactor thread.

Django tells it of every change (``django_signals``); a change drops the cached room and
tells the watchers, which read the room again. A load that was already running when the
change came is not trusted: it is run again.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from . import archive
from .interfaces import RoomInfo, RunInThread, StoreUnavailable, UnknownRoom

log = logging.getLogger(__name__)


class LocalRoomDirectory:
    def __init__(self, run_query: RunInThread, max_rooms: int = 1000):
        self._run_query = run_query
        self._max_rooms = max_rooms
        self._rooms: OrderedDict[int, RoomInfo] = OrderedDict()
        self._loading: dict[int, list[Deferred[RoomInfo]]] = {}
        self._changed_while_loading: set[int] = set()
        self._watchers: list[Callable[[int], None]] = []

    def get(self, room_id: int) -> Deferred[RoomInfo]:
        info = self._rooms.get(room_id)
        if info is not None:
            self._rooms.move_to_end(room_id)
            return succeed(info)
        waiter: Deferred[RoomInfo] = Deferred()
        waiters = self._loading.get(room_id)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._loading[room_id] = [waiter]
            self._load(room_id)
        return waiter

    def _load(self, room_id: int) -> None:
        self._run_query(archive.load_room_info, room_id).addBoth(self._loaded, room_id)

    def _loaded(self, result: RoomInfo | Failure, room_id: int) -> None:
        if room_id in self._changed_while_loading:
            self._changed_while_loading.discard(room_id)
            self._load(room_id)
            return
        waiters = self._loading.pop(room_id)
        if isinstance(result, Failure):
            if not result.check(UnknownRoom):
                log.error("loading room %s failed: %s", room_id, result.getErrorMessage())
                result = Failure(StoreUnavailable("the database did not answer"))
            for waiter in waiters:
                waiter.errback(result)
            return
        self._rooms[room_id] = result
        if len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
        for waiter in waiters:
            waiter.callback(result)

    def room_changed(self, room_id: int) -> None:
        self._rooms.pop(room_id, None)
        if room_id in self._loading:
            self._changed_while_loading.add(room_id)
        for watcher in self._watchers:
            try:
                watcher(room_id)
            except Exception:
                log.exception("a watcher of room %s failed", room_id)

    def watch(self, watcher: Callable[[int], None]) -> None:
        self._watchers.append(watcher)
