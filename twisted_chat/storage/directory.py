"""The process-local room directory: the database's rooms, cached on the reactor thread.

Django tells it of every change (``django_signals``); a change drops the cached room and
tells the watchers, which read the room again. A load that was already running when the
change came is not trusted: it is run again.

"No such room" is remembered too, for ``unknown_ttl`` seconds, so that a flood of
subscribes to made-up rooms costs no queries; a room created meanwhile is known at once,
since its creation is a change.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from . import archive
from .interfaces import RoomInfo, RunInThread, UnknownRoom
from .room_loads import RoomLoads

log = logging.getLogger(__name__)


class LocalRoomDirectory:
    def __init__(
        self,
        run_query: RunInThread,
        max_rooms: int = 1000,
        unknown_ttl: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._run_query = run_query
        self._max_rooms = max_rooms
        self._unknown_ttl = unknown_ttl
        self._clock = clock
        self._rooms: OrderedDict[int, RoomInfo] = OrderedDict()
        # room id -> until when it is known not to exist
        self._unknown: OrderedDict[int, float] = OrderedDict()
        self._loads: RoomLoads[RoomInfo] = RoomLoads(self._load)
        self._changed_while_loading: set[int] = set()
        self._watchers: list[Callable[[int], None]] = []

    def get(self, room_id: int) -> Deferred[RoomInfo]:
        info = self._rooms.get(room_id)
        if info is not None:
            self._rooms.move_to_end(room_id)
            return succeed(info)
        until = self._unknown.get(room_id)
        if until is not None:
            if until > self._clock():
                return fail(UnknownRoom(room_id))
            del self._unknown[room_id]
        return self._loads.get(room_id)

    def _load(self, room_id: int) -> Deferred[RoomInfo]:
        self._changed_while_loading.discard(room_id)
        d = self._run_query(archive.load_room_info, room_id)
        return d.addCallbacks(self._loaded, self._not_found, callbackArgs=(room_id,), errbackArgs=(room_id,))

    def _not_found(self, failure: Failure, room_id: int) -> Failure | Deferred[RoomInfo]:
        if not failure.check(UnknownRoom):
            return failure
        if room_id in self._changed_while_loading:
            return self._load(room_id)
        if self._unknown_ttl > 0:
            self._unknown[room_id] = self._clock() + self._unknown_ttl
            if len(self._unknown) > 10 * self._max_rooms:
                self._unknown.popitem(last=False)
        return failure

    def _loaded(self, info: RoomInfo, room_id: int) -> RoomInfo | Deferred[RoomInfo]:
        if room_id in self._changed_while_loading:
            return self._load(room_id)
        self._rooms[room_id] = info
        if len(self._rooms) > self._max_rooms:
            self._rooms.popitem(last=False)
        return info

    def room_changed(self, room_id: int) -> None:
        self._rooms.pop(room_id, None)
        self._unknown.pop(room_id, None)
        if self._loads.running(room_id):
            self._changed_while_loading.add(room_id)
        for watcher in self._watchers:
            try:
                watcher(room_id)
            except Exception:
                log.exception("a watcher of room %s failed", room_id)

    def watch(self, watcher: Callable[[int], None]) -> None:
        self._watchers.append(watcher)
